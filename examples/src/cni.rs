//! The CNI plugins (spec 1.1): `weave-net` puts a container on the
//! overlay, `weave-ipam` only hands out addresses. Both are the `weave`
//! binary, chosen by the name it is run under (or `weave cni [ipam]`).
//!
//! A runtime runs the plugin with `CNI_COMMAND` and friends in the
//! environment and the network configuration on stdin; the plugin asks the
//! router (over its control socket) to do the work, and prints the result,
//! or an error object, as JSON on stdout.
//!
//! Configuration keys: `cniVersion`, `name`, `type` (required); `ipam`
//! (absent, or `{"type": "weave-ipam", "subnet": "CIDR"}`); `hairpinMode`
//! (default true); `stateDir` (default `$WEAVE_STATE_DIR`, then
//! `/var/lib/weave`). See `examples/cni/10-weave.conflist`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::control::{self, pb};

/// Which plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `weave-net`: interface, addresses, gateway, DNS.
    Net,
    /// `weave-ipam`: addresses only.
    Ipam,
}

/// The versions this plugin speaks.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI error: the spec's code, message and details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// 1 incompatible version, 2 unsupported field, 3 unknown container,
    /// 4 bad environment, 5 I/O, 6 undecodable, 7 invalid configuration,
    /// 11 try again later, 50 not available; 100+ this plugin's own.
    pub code: u32,
    /// One line.
    pub msg: String,
    /// More, if any.
    pub details: String,
}

fn fail(code: u32, msg: impl Into<String>) -> CniError {
    CniError { code, msg: msg.into(), details: String::new() }
}

/// A mismatch CHECK found.
pub const CODE_CHECK_FAILED: u32 = 100;

fn from_rpc(s: tonic::Status) -> CniError {
    let code = match s.code() {
        tonic::Code::NotFound => 3,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => 7,
        tonic::Code::Unavailable => 11,
        tonic::Code::Aborted => CODE_CHECK_FAILED,
        _ => 5,
    };
    fail(code, s.message())
}

/// Run one invocation: `env` reads the environment, `stdin` is the
/// configuration. Returns what to print on stdout and the exit status.
pub async fn run(kind: Kind, env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> (String, u8) {
    let version = asked_version(stdin).filter(|v| SUPPORTED.contains(&v.as_str())).unwrap_or_else(|| "1.1.0".into());
    match invoke(kind, &env, stdin).await {
        Ok(Some(v)) => (format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()), 0),
        Ok(None) => (String::new(), 0),
        Err(e) => {
            let mut v = json!({ "cniVersion": version, "code": e.code, "msg": e.msg });
            if !e.details.is_empty() {
                v["details"] = json!(e.details);
            }
            (format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()), 1)
        }
    }
}

/// Check a network configuration as `ADD` would read it, without a router
/// (for fuzzing and `CHECK`-style validation): the error says what is wrong.
pub fn check_config(kind: Kind, stdin: &[u8]) -> Result<(), String> {
    parse_config(kind, &|_: &str| None, stdin).map(drop).map_err(|e| format!("{}: {}", e.msg, e.details))
}

/// The `cniVersion` of whatever came on stdin, if it says one.
fn asked_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin).ok()?.get("cniVersion")?.as_str().map(str::to_owned)
}

impl Kind {
    /// The plugin a program name or `weave cni` argument selects.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "weave-net" | "net" => Some(Self::Net),
            "weave-ipam" | "ipam" => Some(Self::Ipam),
            _ => None,
        }
    }
}

fn required(env: &impl Fn(&str) -> Option<String>, key: &str) -> Result<String, CniError> {
    env(key).filter(|v| !v.is_empty()).ok_or_else(|| fail(4, format!("{key} is not set")))
}

/// The parts of the configuration the plugin reads.
struct Config {
    version: String,
    name: String,
    raw: Value,
    subnet: String,
    hairpin: bool,
    state_dir: PathBuf,
}

fn parse_config(kind: Kind, env: &impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Config, CniError> {
    let raw: Value =
        serde_json::from_slice(stdin).map_err(|e| CniError { code: 6, msg: "cannot decode the network configuration".into(), details: e.to_string() })?;
    if !raw.is_object() {
        return Err(fail(6, "the network configuration is not a JSON object"));
    }
    let version = raw.get("cniVersion").and_then(Value::as_str).ok_or_else(|| fail(7, "cniVersion is missing"))?.to_owned();
    if !SUPPORTED.contains(&version.as_str()) {
        return Err(CniError { code: 1, msg: format!("CNI version {version} is not supported"), details: format!("supported: {}", SUPPORTED.join(", ")) });
    }
    for key in ["name", "type"] {
        if raw.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(fail(7, format!("{key} is missing")));
        }
    }
    let name = raw["name"].as_str().unwrap_or_default().to_owned();
    if name.contains('/') {
        return Err(fail(7, format!("network name {name:?} contains '/'")));
    }
    let ipam = match kind {
        Kind::Net => raw.get("ipam").cloned().unwrap_or(Value::Null),
        Kind::Ipam => raw.get("ipam").cloned().unwrap_or_else(|| json!({})),
    };
    if kind == Kind::Net {
        if let Some(t) = ipam.get("type").and_then(Value::as_str) {
            if t != "weave-ipam" {
                return Err(fail(7, format!("ipam type {t:?}: weave-net allocates with weave-ipam only (leave ipam out, or give weave-ipam)")));
            }
        }
    }
    let subnet = match ipam.get("subnet") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.parse::<ipnet::Ipv4Net>().map_err(|_| fail(7, format!("ipam subnet {s:?} is not an IPv4 CIDR")))?.trunc().to_string(),
        Some(other) => return Err(fail(7, format!("ipam subnet {other} is not a string"))),
    };
    let hairpin = match raw.get("hairpinMode") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(fail(7, format!("hairpinMode {other} is not a boolean"))),
    };
    let state_dir = raw
        .get("stateDir")
        .and_then(Value::as_str)
        .map(PathBuf::from)
        .or_else(|| env("WEAVE_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/weave"));
    Ok(Config { version, name, raw, subnet, hairpin, state_dir })
}

async fn client(cfg: &Config, code: u32) -> Result<control::ControlClient<tonic::transport::Channel>, CniError> {
    let sock = control::socket_path(&cfg.state_dir);
    control::connect(&sock).await.map_err(|_| CniError {
        code,
        msg: "the weave router is not running".into(),
        details: format!("{} does not answer; start it with 'weave launch'", sock.display()),
    })
}

/// `K8S_POD_NAME` from `CNI_ARGS` (`K=V;K=V`), for a DNS name.
fn pod_name(env: &impl Fn(&str) -> Option<String>) -> String {
    env("CNI_ARGS")
        .unwrap_or_default()
        .split(';')
        .find_map(|kv| kv.strip_prefix("K8S_POD_NAME="))
        .filter(|n| !n.is_empty() && !n.contains('.'))
        .unwrap_or_default()
        .to_owned()
}

fn result(kind: Kind, cfg: &Config, netns: &str, ifname: &str, r: &pb::CniReply) -> Value {
    let old = cfg.version.starts_with("0.");
    let mut ips = Vec::new();
    for c in &r.cidrs {
        let mut ip = json!({ "address": c });
        if !r.gateway.is_empty() {
            ip["gateway"] = json!(r.gateway);
        }
        if kind == Kind::Net {
            ip["interface"] = json!(1);
        }
        if old {
            ip["version"] = json!("4");
        }
        ips.push(ip);
    }
    let mut out = json!({ "cniVersion": cfg.version, "ips": ips });
    if kind == Kind::Net {
        out["interfaces"] = json!([
            { "name": r.host_ifname, "mac": r.host_mac },
            { "name": ifname, "mac": r.mac, "sandbox": netns },
        ]);
        if !r.gateway.is_empty() {
            out["routes"] = json!([{ "dst": "0.0.0.0/0", "gw": r.gateway }]);
        }
    }
    if !r.nameserver.is_empty() {
        out["dns"] = json!({ "nameservers": [r.nameserver], "domain": r.domain, "search": [r.domain] });
    }
    out
}

async fn invoke(kind: Kind, env: &impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let command = required(env, "CNI_COMMAND")?;
    if command == "VERSION" {
        let version = asked_version(stdin).unwrap_or_else(|| "1.1.0".into());
        return Ok(Some(json!({ "cniVersion": version, "supportedVersions": SUPPORTED })));
    }
    let cfg = parse_config(kind, env, stdin)?;
    let ipam_only = kind == Kind::Ipam;
    let request = |netns: String| -> Result<pb::CniRequest, CniError> {
        Ok(pb::CniRequest {
            container_id: required(env, "CNI_CONTAINERID")?,
            ifname: required(env, "CNI_IFNAME")?,
            netns,
            subnet: cfg.subnet.clone(),
            hairpin: cfg.hairpin,
            ipam_only,
            hostname: pod_name(env),
            network: cfg.name.clone(),
        })
    };
    match command.as_str() {
        "ADD" => {
            let netns = required(env, "CNI_NETNS")?;
            let req = request(netns.clone())?;
            let ifname = req.ifname.clone();
            let r = client(&cfg, 11).await?.cni_add(req).await.map_err(from_rpc)?.into_inner();
            Ok(Some(result(kind, &cfg, &netns, &ifname, &r)))
        }
        "DEL" => {
            let req = request(env("CNI_NETNS").unwrap_or_default())?;
            client(&cfg, 11).await?.cni_del(req).await.map_err(from_rpc)?;
            Ok(None)
        }
        "CHECK" => {
            if cfg.version.starts_with("0.3") {
                return Err(fail(1, format!("CHECK is not defined for CNI {}", cfg.version)));
            }
            let prev = cfg.raw.get("prevResult").filter(|p| p.is_object()).ok_or_else(|| fail(7, "CHECK needs prevResult"))?;
            let netns = if ipam_only { String::new() } else { required(env, "CNI_NETNS")? };
            let req = request(netns)?;
            let have = client(&cfg, 11).await?.cni_check(req).await.map_err(from_rpc)?.into_inner();
            let want: Vec<&str> = prev
                .get("ips")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|i| i.get("address").and_then(Value::as_str)).collect())
                .unwrap_or_default();
            if want.is_empty() {
                return Err(fail(7, "prevResult has no ips"));
            }
            for w in &want {
                if !have.cidrs.iter().any(|c| c == w) {
                    return Err(CniError {
                        code: CODE_CHECK_FAILED,
                        msg: format!("{w} from prevResult is not held for this container"),
                        details: format!("held: {}", have.cidrs.join(" ")),
                    });
                }
            }
            if let Some(ifaces) = prev.get("interfaces").and_then(Value::as_array) {
                let mac = ifaces.iter().find(|i| i.get("sandbox").is_some()).and_then(|i| i.get("mac")).and_then(Value::as_str);
                if mac.is_some_and(|m| !have.mac.is_empty() && !m.eq_ignore_ascii_case(&have.mac)) {
                    return Err(fail(CODE_CHECK_FAILED, format!("the interface's MAC is {}, not {}", have.mac, mac.unwrap_or_default())));
                }
            }
            Ok(None)
        }
        "GC" => {
            let mut valid = BTreeSet::new();
            // Absent, it would mean "nothing is valid": refuse rather than
            // free every attachment of the network.
            let listed = cfg.raw.get("cni.dev/valid-attachments").and_then(Value::as_array).ok_or_else(|| fail(7, "GC needs cni.dev/valid-attachments"))?;
            for a in listed {
                let (Some(c), Some(i)) = (a.get("containerID").and_then(Value::as_str), a.get("ifname").and_then(Value::as_str)) else {
                    return Err(fail(7, format!("invalid entry in cni.dev/valid-attachments: {a}")));
                };
                valid.insert(format!("{c}/{i}"));
            }
            client(&cfg, 11).await?.cni_gc(pb::CniGcRequest { valid: valid.into_iter().collect(), network: cfg.name.clone() }).await.map_err(from_rpc)?;
            Ok(None)
        }
        "STATUS" => {
            let mut c = client(&cfg, 50).await?;
            let report = c.report(pb::Empty {}).await.map_err(|s| fail(50, s.message()))?.into_inner();
            let v: Value = serde_json::from_str(&report.json).unwrap_or_default();
            match v.pointer("/IPAM/Status").and_then(Value::as_str) {
                None => Err(fail(50, "IPAM is disabled in the weave router (--ipalloc-range=)")),
                Some("ready" | "idle") => Ok(None),
                Some(other) => Err(fail(50, format!("weave IPAM is not ready: {other}"))),
            }
        }
        other => Err(fail(4, format!("unknown CNI_COMMAND {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| (*v).to_owned())
    }

    fn run_now(kind: Kind, pairs: &[(&str, &str)], stdin: &str) -> (Value, u8) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (out, code) = rt.block_on(run(kind, env(pairs), stdin.as_bytes()));
        (serde_json::from_str(&out).unwrap_or(Value::Null), code)
    }

    #[test]
    fn version_lists_what_is_supported() {
        let (v, code) = run_now(Kind::Net, &[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(code, 0);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["supportedVersions"].as_array().unwrap().iter().any(|s| s == "1.1.0"));
    }

    #[test]
    fn bad_input_gets_the_spec_error_codes() {
        let add =
            [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/run/netns/x"), ("CNI_IFNAME", "eth0"), ("WEAVE_STATE_DIR", "/nonexistent")];
        for (stdin, code) in [
            ("{not json", 6),
            ("[1,2]", 6),
            (r#"{"cniVersion":"9.9.9","name":"n","type":"weave-net"}"#, 1),
            (r#"{"cniVersion":"1.1.0","type":"weave-net"}"#, 7),
            (r#"{"cniVersion":"1.1.0","name":"n","type":"weave-net","ipam":{"type":"host-local"}}"#, 7),
            (r#"{"cniVersion":"1.1.0","name":"n","type":"weave-net","ipam":{"subnet":"nonsense"}}"#, 7),
            (r#"{"cniVersion":"1.1.0","name":"n","type":"weave-net","hairpinMode":"yes"}"#, 7),
            // Well formed, but no router: try again later.
            (r#"{"cniVersion":"1.1.0","name":"n","type":"weave-net"}"#, 11),
        ] {
            let (v, exit) = run_now(Kind::Net, &add, stdin);
            assert_eq!((v["code"].as_u64(), exit), (Some(code), 1), "{stdin}: {v}");
            assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let (v, _) = run_now(Kind::Net, &[("CNI_COMMAND", "ADD")], r#"{"cniVersion":"1.1.0","name":"n","type":"weave-net"}"#);
        assert_eq!(v["code"], 4, "missing CNI_CONTAINERID: {v}");
        let (v, _) = run_now(Kind::Net, &[("CNI_COMMAND", "FROB")], r#"{"cniVersion":"1.1.0","name":"n","type":"weave-net"}"#);
        assert_eq!(v["code"], 4);
        let (v, _) =
            run_now(Kind::Net, &[("CNI_COMMAND", "STATUS"), ("WEAVE_STATE_DIR", "/nonexistent")], r#"{"cniVersion":"1.1.0","name":"n","type":"weave-net"}"#);
        assert_eq!(v["code"], 50, "no router: not available: {v}");
    }

    #[test]
    fn results_follow_the_requested_version() {
        let cfg = |v: &str| Config { version: v.into(), name: "weave".into(), raw: json!({}), subnet: String::new(), hairpin: true, state_dir: PathBuf::new() };
        let r = pb::CniReply {
            cidrs: vec!["10.32.0.2/12".into()],
            gateway: "10.32.0.1".into(),
            host_ifname: "vethwe01234567".into(),
            host_mac: "aa:bb:cc:dd:ee:ff".into(),
            mac: "02:00:00:00:00:01".into(),
            nameserver: "169.254.1.1".into(),
            domain: "weave.local".into(),
        };
        let v = result(Kind::Net, &cfg("1.1.0"), "/run/netns/x", "eth0", &r);
        assert_eq!(v["ips"][0], json!({ "address": "10.32.0.2/12", "gateway": "10.32.0.1", "interface": 1 }));
        assert_eq!(v["interfaces"][1], json!({ "name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x" }));
        assert_eq!(v["routes"][0]["gw"], "10.32.0.1");
        assert_eq!(v["dns"]["nameservers"][0], "169.254.1.1");
        let v = result(Kind::Net, &cfg("0.4.0"), "/run/netns/x", "eth0", &r);
        assert_eq!(v["ips"][0]["version"], "4");
        let v = result(Kind::Ipam, &cfg("1.0.0"), "", "eth0", &pb::CniReply { cidrs: vec!["10.32.0.2/12".into()], ..Default::default() });
        assert!(v.get("interfaces").is_none() && v["ips"][0].get("interface").is_none(), "{v}");
    }
}
