//! The DNS server queried by a real resolver client (hickory-resolver, the
//! library behind many Rust programs' lookups), with its cache off so every
//! lookup reaches the server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::Resolver;
use weave_core::PeerName;
use weave_dns::channel::Names;
use weave_dns::server::{serve, Server, ServerConfig, Upstreams};
use weave_dns::{Dns, WallClock};

async fn server() -> Server {
    let now = Instant::now();
    let mut d = Dns::new(weave_gossip::Identity::from_secret([1; 32]), PeerName::from_u64(1).unwrap(), "weave.local.", WallClock::system(), now);
    for i in 0..50u8 {
        d.add(now, "web", Ipv4Addr::new(10, 32, 0, i + 1), &format!("c{i}")).unwrap();
    }
    for i in 0..5u8 {
        d.add(now, "api", Ipv4Addr::new(10, 33, 0, i + 1), &format!("a{i}")).unwrap();
    }
    d.add(now, "db", Ipv4Addr::new(10, 40, 0, 9), "db").unwrap();
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), Upstreams::Fixed(vec![]));
    cfg.upstream_timeout = Duration::from_millis(200);
    serve(cfg, Names::new(&d)).await.unwrap()
}

fn resolver(addr: SocketAddr) -> Resolver<TokioConnectionProvider> {
    let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
    let config = ResolverConfig::from_parts(None, vec![], group);
    let mut b = Resolver::builder_with_config(config, TokioConnectionProvider::default());
    let o = b.options_mut();
    o.cache_size = 0;
    o.attempts = 1;
    o.timeout = Duration::from_secs(2);
    b.build()
}

#[tokio::test]
async fn a_real_resolver_gets_case_insensitive_shuffled_answers() {
    let s = server().await;
    let r = resolver(s.local_addr());
    let ips: Vec<IpAddr> = r.lookup_ip("DB.Weave.LOCAL.").await.unwrap().iter().collect();
    assert_eq!(ips, vec![IpAddr::from([10, 40, 0, 9])]);
    let mut orders = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let o: Vec<IpAddr> = r.lookup_ip("api.weave.local.").await.unwrap().iter().collect();
        assert_eq!(o.len(), 5);
        orders.insert(o);
    }
    assert!(orders.len() > 1, "answers come in one fixed order");
}

#[tokio::test]
async fn a_real_resolver_sees_nxdomain_empty_noerror_and_ptr() {
    let s = server().await;
    let r = resolver(s.local_addr());
    let e = r.lookup_ip("nope.weave.local.").await.unwrap_err();
    assert!(e.is_nx_domain(), "{e}");
    let e = r.lookup("db.weave.local.", RecordType::AAAA).await.unwrap_err();
    assert!(e.is_no_records_found() && !e.is_nx_domain(), "NOERROR with no AAAA: {e}");
    let names = r.reverse_lookup(IpAddr::from([10, 40, 0, 9])).await.unwrap();
    assert_eq!(names.iter().map(|n| n.to_string()).collect::<Vec<_>>(), vec!["db.weave.local.".to_string()]);
}

#[tokio::test]
async fn a_real_resolver_gets_all_fifty_records_after_truncation() {
    let s = server().await;
    let r = resolver(s.local_addr());
    // Over UDP the answer is truncated; the resolver retries over TCP.
    let ips: Vec<IpAddr> = r.lookup_ip("web.weave.local.").await.unwrap().iter().collect();
    assert_eq!(ips.len(), 50);
}
