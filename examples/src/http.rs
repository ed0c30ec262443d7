//! Read-only HTTP in the router's namespace (default 127.0.0.1:6784):
//! `/status` (text, as `weave status`), `/report` (JSON, as `weave
//! report`) and `/metrics` (Prometheus, Weave's metric names plus
//! per-connection traffic, drops and fast-path fallbacks with reasons).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::control;
use crate::router::Router;

type Labels = Vec<(String, String)>;

fn gauge(reg: &mut Registry, name: &str, help: &str, values: Vec<(Labels, i64)>) {
    if let [(labels, v)] = values.as_slice() {
        if labels.is_empty() {
            // No labels: a plain metric (a family would print `{}`).
            let g = Gauge::<i64>::default();
            g.set(*v);
            reg.register(name, help, g);
            return;
        }
    }
    let fam = Family::<Labels, Gauge>::default();
    for (l, v) in values {
        fam.get_or_create(&l).set(v);
    }
    reg.register(name, help, fam);
}

fn counter(reg: &mut Registry, name: &str, help: &str, values: Vec<(Labels, u64)>) {
    if let [(labels, v)] = values.as_slice() {
        if labels.is_empty() {
            let c = Counter::<u64>::default();
            c.inc_by(*v);
            reg.register(name, help, c);
            return;
        }
    }
    let fam = Family::<Labels, Counter>::default();
    for (l, v) in values {
        fam.get_or_create(&l).inc_by(v);
    }
    reg.register(name, help, fam);
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The metrics, read at scrape time.
pub async fn metrics(router: &Router) -> Result<String, tonic::Status> {
    // Counts only: a scrape costs the same whatever the peers' links.
    let ms = control::mesh_status_brief(router).await?;
    let st = control::status_of(router, &ms);
    let mut reg = Registry::default();
    // weave_connections{encryption,state,type}, labels in Weave's order,
    // `encryption` empty for plain connections; as Weave's exposition,
    // each (state, type) that has a connection appears with both
    // encryption values (one of them maybe zero), and no other.
    let mut conns: std::collections::BTreeMap<(String, String, String), i64> = Default::default();
    for c in &st.connections {
        for enc in ["", "yes"] {
            conns.entry((enc.to_owned(), c.state.clone(), c.path.clone())).or_default();
        }
        let enc = if c.encrypted { "yes" } else { "" };
        *conns.entry((enc.to_owned(), c.state.clone(), c.path.clone())).or_default() += 1;
    }
    gauge(
        &mut reg,
        "weave_connections",
        "Connections by encryption, state and data path",
        conns.into_iter().map(|((e, s, t), n)| (l(&[("encryption", &e), ("state", &s), ("type", &t)]), n)).collect(),
    );
    counter(&mut reg, "weave_connection_terminations", "Connections that ended", vec![(vec![], router.terminations())]);
    let dp = router.dataplane();
    let paths = dp.paths();
    counter(
        &mut reg,
        "weave_data_frames_tx",
        "Frames sent over the data plane, per peer",
        paths.iter().map(|p| (l(&[("peer", &p.peer.to_string())]), p.counters.tx_frames)).collect(),
    );
    counter(
        &mut reg,
        "weave_data_bytes_tx",
        "Bytes sent over the data plane, per peer",
        paths.iter().map(|p| (l(&[("peer", &p.peer.to_string())]), p.counters.tx_bytes)).collect(),
    );
    counter(
        &mut reg,
        "weave_data_frames_rx",
        "Frames received over the data plane, per peer",
        paths.iter().map(|p| (l(&[("peer", &p.peer.to_string())]), p.counters.rx_frames)).collect(),
    );
    counter(
        &mut reg,
        "weave_data_bytes_rx",
        "Bytes received over the data plane, per peer",
        paths.iter().map(|p| (l(&[("peer", &p.peer.to_string())]), p.counters.rx_bytes)).collect(),
    );
    counter(
        &mut reg,
        "weave_dropped_frames",
        "Frames and datagrams dropped, by reason",
        dp.drops().into_iter().map(|(r, n)| (l(&[("reason", r.as_str())]), n)).collect(),
    );
    counter(
        &mut reg,
        "weave_fastdp_fallbacks",
        "Fast-path fallbacks to the sleeve, by reason",
        dp.fallbacks().into_iter().map(|(r, n)| (l(&[("reason", r.as_str())]), n)).collect(),
    );
    if let Some(ipam) = router.ipam() {
        let s = ipam.with(|i, _| i.status()).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        gauge(&mut reg, "weave_ips", "Addresses by state", vec![(l(&[("state", "local-used")]), s.active_ips as i64)]);
        gauge(&mut reg, "weave_max_ips", "Size of the allocation range", vec![(vec![], s.range_num_ips as i64)]);
        let reachable = |p: weave_core::PeerName| p == ms.name || ms.next_hops.contains_key(&p);
        let (mut unreachable, mut unreachable_ips) = (std::collections::BTreeSet::new(), 0u64);
        for (e, size) in control::sized_entries(&s) {
            if !reachable(e.peer) {
                unreachable.insert(e.peer);
                unreachable_ips += size;
            }
        }
        gauge(&mut reg, "weave_ipam_unreachable_count", "Peers owning address space that are unreachable", vec![(vec![], unreachable.len() as i64)]);
        let pct = (unreachable_ips * 100).checked_div(s.range_num_ips).unwrap_or(0) as i64;
        gauge(&mut reg, "weave_ipam_unreachable_percentage", "Share of the range owned by unreachable peers", vec![(vec![], pct)]);
        gauge(&mut reg, "weave_ipam_pending_allocates", "Allocations waiting", vec![(vec![], s.pending_allocates as i64)]);
        gauge(&mut reg, "weave_ipam_pending_claims", "Claims waiting", vec![(vec![], s.pending_claims as i64)]);
    }
    if let Some(dns) = router.dns() {
        // As Weave: this peer's own entries.
        let n = dns.current().store().own_live().len();
        gauge(&mut reg, "weave_dns_entries", "This peer's live weaveDNS entries", vec![(vec![], n as i64)]);
    }
    let mut out = String::new();
    encode(&mut out, &reg).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(out)
}

async fn handle(router: Arc<Router>, only_metrics: bool, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        Response::builder().status(code).header("content-type", ctype).body(Full::new(Bytes::from(body))).expect("valid response")
    };
    if req.method() != hyper::Method::GET {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "read-only\n".into()));
    }
    let path = req.uri().path().to_owned();
    let r = match path.as_str() {
        // The metrics address serves Prometheus only (Weave's
        // `--metrics-addr`): no report with its addresses and names.
        "/metrics" if only_metrics => metrics(&router).await.map(|m| ("text/plain; version=0.0.4", m)),
        _ if only_metrics => return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "not found: /metrics\n".into())),
        "/status" => control::status_and_report(&router).await.map(|(s, rep)| ("text/plain; charset=utf-8", control::render_status(&s, &rep))),
        "/report" => control::report(&router).await.map(|v| ("application/json", serde_json::to_string_pretty(&v).unwrap_or_default())),
        "/metrics" => metrics(&router).await.map(|m| ("text/plain; version=0.0.4", m)),
        // Weave's /status/<view>: what `weave status <view>` prints.
        p if p.starts_with("/status/") => match control::render_section(&router, &p["/status/".len()..]).await {
            Some(r) => r.map(|text| ("text/plain; charset=utf-8", text)),
            None => return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "not found: /status/{connections,targets,peers,dns,ipam}\n".into())),
        },
        _ => return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "not found: /status, /status/VIEW, /report, /metrics\n".into())),
    };
    // As Weave: the status pages say 503 until every part has started,
    // with their text all the same.
    let status_page = path == "/status" || path.starts_with("/status/");
    Ok(match r {
        Ok((ctype, body)) if status_page && !router.is_ready() => reply(StatusCode::SERVICE_UNAVAILABLE, ctype, body),
        Ok((ctype, body)) => reply(StatusCode::OK, ctype, body),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{}\n", e.message())),
    })
}

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve until the task is dropped; with `only_metrics`, just `/metrics`.
/// A failed accept (out of file descriptors, say) is logged and waited
/// out, never the end of the server; a client that sends no request is
/// dropped after 5 s.
pub async fn serve(router: Arc<Router>, addr: SocketAddr, only_metrics: bool) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(router.clone(), only_metrics, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
