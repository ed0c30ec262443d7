//! The DNS answer core: a query's bytes in, a reply (or "forward this") out.
//! Sans-IO; messages are parsed and built with hickory-proto.
//!
//! * A queries for names in the domain: case-insensitive, answers shuffled,
//!   authoritative, TTL as configured; single-label names get the domain.
//!   A name that exists but has no record of the asked type: NOERROR with
//!   an empty answer. An unknown name in the domain: NXDOMAIN.
//! * PTR queries for addresses with entries are answered; others forwarded.
//! * Everything else is to be forwarded upstream.
//! * Over UDP a reply larger than 512 bytes (or the client's EDNS size) keeps
//!   the answers that fit and sets TC; over TCP everything is returned.

use std::net::Ipv4Addr;
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use rand::RngCore;

use crate::store::Store;

/// Largest UDP reply without EDNS.
const UDP_DEFAULT: usize = 512;
/// The EDNS size we advertise, and the most we send over UDP whatever the
/// client asks (a small spoofed query must not buy a large reflected reply;
/// 1232 avoids fragmentation, as DNS Flag Day 2020 recommends).
const OUR_EDNS: u16 = 1232;

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: forward the query upstream.
    Forward,
    /// Not even a DNS header: ignore.
    Drop,
}

/// What to do with a parsed query.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send this reply (already within the size limit).
    Reply(Message),
    /// Not ours: forward the query upstream.
    Forward,
    /// Do not answer.
    Drop,
}

/// Answers for one domain from a store.
#[derive(Debug, Clone)]
pub struct Responder {
    domain: String,
    /// `.` and the domain: what names in it end with.
    dot_domain: String,
    ttl: u32,
}

impl Responder {
    /// Answer for `domain` (lower-case, trailing dot) with `ttl` seconds.
    pub fn new(domain: &str, ttl: u32) -> Self {
        let mut domain = domain.trim_start_matches('.').to_ascii_lowercase();
        if !domain.ends_with('.') {
            domain.push('.');
        }
        Self { dot_domain: format!(".{domain}"), domain, ttl }
    }

    /// Answer `query` (received over TCP if `tcp`) from `store`: parsed
    /// once, encoded once (the UDP fast path).
    pub fn answer(&self, store: &Store, query: &[u8], tcp: bool, rng: &mut impl RngCore) -> Answer {
        let Ok(req) = Message::from_vec(query) else { return format_error(query) };
        match self.respond(store, &req, tcp, rng) {
            Outcome::Reply(_, Some(bytes)) => Answer::Reply(bytes),
            Outcome::Reply(m, None) => m.to_vec().map_or(Answer::Drop, Answer::Reply),
            Outcome::Forward => Answer::Forward,
            Outcome::Drop => Answer::Drop,
        }
    }

    /// Decide on a parsed query (the server's handler seam uses this).
    pub fn decide(&self, store: &Store, req: &Message, tcp: bool, rng: &mut impl RngCore) -> Decision {
        match self.respond(store, req, tcp, rng) {
            Outcome::Reply(m, _) => Decision::Reply(m),
            Outcome::Forward => Decision::Forward,
            Outcome::Drop => Decision::Drop,
        }
    }

    /// The decision, with the reply's bytes when fitting it took encoding.
    fn respond(&self, store: &Store, req: &Message, tcp: bool, rng: &mut impl RngCore) -> Outcome {
        if req.message_type() != MessageType::Query {
            return Outcome::Drop;
        }
        let mut resp = Message::new();
        resp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(req.op_code())
            .set_recursion_desired(req.recursion_desired())
            .set_recursion_available(true);
        if req.op_code() != OpCode::Query || req.queries().len() != 1 {
            resp.set_response_code(if req.op_code() == OpCode::Query { ResponseCode::FormErr } else { ResponseCode::NotImp });
            return Outcome::Reply(resp, None);
        }
        let q = req.queries()[0].clone();
        resp.add_query(q.clone());
        if req.extensions().is_some() {
            let mut ours = Edns::new();
            ours.set_max_payload(OUR_EDNS);
            resp.set_edns(ours);
        }
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            req.extensions().as_ref().map_or(UDP_DEFAULT, |e| usize::from(e.max_payload()).clamp(UDP_DEFAULT, usize::from(OUR_EDNS)))
        };
        let mut name = q.name().to_ascii();
        name.make_ascii_lowercase();
        let in_domain = self.in_domain(&name, store, q.query_type());
        let records = match q.query_type() {
            // A PTR for a name of ours: it exists, but has no PTR.
            RecordType::PTR if in_domain.is_some() && reverse_addr(&name).is_none() => {
                resp.set_authoritative(true);
                return Outcome::Reply(resp, None);
            }
            RecordType::PTR => match reverse_addr(&name) {
                Some(addr) => {
                    let hosts = store.reverse(addr);
                    if hosts.is_empty() {
                        return Outcome::Forward;
                    }
                    hosts
                        .iter()
                        .filter_map(|h| Name::from_str(h).ok())
                        .map(|h| Record::from_rdata(q.name().clone(), self.ttl, RData::PTR(PTR(h))))
                        .collect::<Vec<_>>()
                }
                None => return Outcome::Forward,
            },
            qtype => {
                let Some(fqdn) = in_domain else { return Outcome::Forward };
                let mut addrs = store.lookup(&fqdn);
                if addrs.is_empty() {
                    resp.set_authoritative(true).set_response_code(ResponseCode::NXDomain);
                    return Outcome::Reply(resp, None);
                }
                if qtype != RecordType::A && qtype != RecordType::ANY {
                    // The name exists; it has no record of this type.
                    resp.set_authoritative(true);
                    return Outcome::Reply(resp, None);
                }
                addrs.shuffle(&mut RngAdapter(rng));
                addrs.into_iter().map(|a| Record::from_rdata(q.name().clone(), self.ttl, RData::A(A(a)))).collect()
            }
        };
        resp.set_authoritative(true);
        // Keep the answers that fit; say so if not all did.
        let total = records.len();
        let mut fit = total;
        loop {
            let mut r = resp.clone();
            r.add_answers(records[..fit].iter().cloned());
            r.set_truncated(fit < total);
            // Only UDP needs measuring; TCP replies are bounded by 64 KiB
            // frames, which hundreds of A records do not reach.
            if tcp && fit == total && total < 2000 {
                return Outcome::Reply(r, None);
            }
            match encode(&r, limit) {
                Some(bytes) => return Outcome::Reply(r, Some(bytes)),
                None if fit == 0 => return Outcome::Drop,
                None => fit = fit.saturating_sub((fit / 8).max(1)),
            }
        }
    }

    /// The fully qualified name if it belongs to our domain. Single-label
    /// names are completed with it only for address queries, and only if
    /// that name exists (`localhost.`, `com.` go upstream).
    fn in_domain(&self, name: &str, store: &Store, qtype: RecordType) -> Option<String> {
        let trimmed = name.trim_end_matches('.');
        if !trimmed.is_empty() && !trimmed.contains('.') {
            let fqdn = format!("{trimmed}.{}", self.domain);
            let address_query = matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY);
            return (address_query && store.has_name(&fqdn)).then_some(fqdn);
        }
        name.ends_with(&self.dot_domain).then(|| name.to_owned())
    }
}

/// `d.c.b.a.in-addr.arpa.` to `a.b.c.d`.
fn reverse_addr(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa.")?;
    let mut octets: Vec<u8> = rest.split('.').map(|o| o.parse().ok()).collect::<Option<_>>()?;
    if octets.len() != 4 {
        return None;
    }
    octets.reverse();
    Some(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
}

/// `m` encoded, if within `limit` bytes.
fn encode(m: &Message, limit: usize) -> Option<Vec<u8>> {
    m.to_vec().ok().filter(|b| b.len() <= limit)
}

/// A decision with, when already made, the reply's bytes.
enum Outcome {
    Reply(Message, Option<Vec<u8>>),
    Forward,
    Drop,
}

/// A FORMERR reply if at least the header's id is readable.
fn format_error(query: &[u8]) -> Answer {
    // Never answer what claims to be a response (QR set): no reflection.
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return Answer::Drop;
    }
    let mut resp = Message::new();
    resp.set_id(u16::from_be_bytes([query[0], query[1]])).set_message_type(MessageType::Response).set_response_code(ResponseCode::FormErr);
    resp.to_vec().map_or(Answer::Drop, Answer::Reply)
}

/// Lets an injected `RngCore` drive `shuffle`.
struct RngAdapter<'a, R: RngCore>(&'a mut R);

impl<R: RngCore> RngCore for RngAdapter<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst);
    }
}

/// Build a query (for tests and tools).
pub fn query(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_message_type(MessageType::Query).set_op_code(OpCode::Query).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_str(name).expect("valid test name"), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().expect("a query encodes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_core::rng::seeded;
    use weave_core::PeerName;

    fn store(n: usize) -> Store {
        let mut s = Store::new(weave_gossip::Identity::from_secret([1; 32]), PeerName::from_u64(1).unwrap());
        for i in 0..n {
            s.add("web.weave.local.", Ipv4Addr::new(10, 32, (i / 250) as u8, (i % 250 + 1) as u8), &format!("c{i}"));
        }
        s.add("db.weave.local.", Ipv4Addr::new(10, 40, 0, 9), "db");
        s
    }

    fn reply(a: Answer) -> Message {
        match a {
            Answer::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn ips(m: &Message) -> Vec<Ipv4Addr> {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_queries_are_case_insensitive_authoritative_and_single_labels_get_the_domain() {
        let r = Responder::new("weave.local.", 1);
        let s = store(1);
        for name in ["DB.Weave.LOCAL.", "db.", "Db"] {
            let m = reply(r.answer(&s, &query(7, name, RecordType::A, None), false, &mut seeded(1)));
            assert_eq!(m.id(), 7);
            assert!(m.authoritative());
            assert_eq!(ips(&m), vec![Ipv4Addr::new(10, 40, 0, 9)], "{name}");
            assert_eq!(m.answers()[0].ttl(), 1);
        }
    }

    #[test]
    fn answers_are_shuffled() {
        let r = Responder::new("weave.local.", 1);
        let s = store(5);
        let orders: std::collections::BTreeSet<Vec<Ipv4Addr>> =
            (0..20).map(|i| ips(&reply(r.answer(&s, &query(1, "web.weave.local.", RecordType::A, None), false, &mut seeded(i))))).collect();
        assert!(orders.len() > 1, "always the same order");
        assert!(orders.iter().all(|o| o.len() == 5));
    }

    #[test]
    fn unknown_names_are_nxdomain_and_other_types_of_known_names_are_empty_noerror() {
        let r = Responder::new("weave.local.", 1);
        let s = store(1);
        let m = reply(r.answer(&s, &query(1, "nope.weave.local.", RecordType::A, None), false, &mut seeded(1)));
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        let m = reply(r.answer(&s, &query(1, "db.weave.local.", RecordType::AAAA, None), false, &mut seeded(1)));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn ptr_for_overlay_addresses_and_forwarding_for_the_rest() {
        let r = Responder::new("weave.local.", 1);
        let s = store(1);
        let m = reply(r.answer(&s, &query(1, "9.0.40.10.in-addr.arpa.", RecordType::PTR, None), false, &mut seeded(1)));
        assert!(matches!(m.answers()[0].data(), RData::PTR(p) if p.0.to_ascii() == "db.weave.local."));
        assert_eq!(r.answer(&s, &query(1, "1.2.3.4.in-addr.arpa.", RecordType::PTR, None), false, &mut seeded(1)), Answer::Forward);
        assert_eq!(r.answer(&s, &query(1, "example.com.", RecordType::A, None), false, &mut seeded(1)), Answer::Forward);
    }

    #[test]
    fn fifty_records_truncate_over_udp_fit_edns_700_and_all_come_over_tcp() {
        let r = Responder::new("weave.local.", 1);
        let s = store(50);
        let q = |edns| query(1, "web.weave.local.", RecordType::A, edns);
        let Answer::Reply(udp) = r.answer(&s, &q(None), false, &mut seeded(1)) else { panic!() };
        let m = Message::from_vec(&udp).unwrap();
        assert!(udp.len() <= 512 && m.truncated() && !m.answers().is_empty() && m.answers().len() < 50);
        let Answer::Reply(e700) = r.answer(&s, &q(Some(700)), false, &mut seeded(1)) else { panic!() };
        let m7 = Message::from_vec(&e700).unwrap();
        assert!(e700.len() <= 700 && m7.truncated() && m7.answers().len() > m.answers().len());
        let m = reply(r.answer(&s, &q(None), true, &mut seeded(1)));
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 50);
    }

    #[test]
    fn single_labels_only_complete_to_existing_names_and_udp_replies_are_capped() {
        let r = Responder::new("weave.local.", 1);
        let s = store(50);
        for q in ["localhost.", "com."] {
            assert_eq!(r.answer(&s, &query(1, q, RecordType::A, None), false, &mut seeded(1)), Answer::Forward, "{q}");
        }
        assert_eq!(r.answer(&s, &query(1, "db.", RecordType::NS, None), false, &mut seeded(1)), Answer::Forward);
        let m = reply(r.answer(&s, &query(1, "db.weave.local.", RecordType::PTR, None), false, &mut seeded(1)));
        assert!(m.answers().is_empty() && m.response_code() == ResponseCode::NoError, "a name of ours, no PTR");
        // A client asking for 65535 bytes over UDP still gets at most 1232.
        let Answer::Reply(big) = r.answer(&s, &query(1, "web.weave.local.", RecordType::A, Some(65535)), false, &mut seeded(1)) else { panic!() };
        assert!(big.len() <= 1232);
    }

    #[test]
    fn packets_claiming_to_be_responses_are_never_answered() {
        let r = Responder::new("weave.local.", 1);
        let mut q = query(1, "db.weave.local.", RecordType::A, None);
        q[2] |= 0x80;
        assert_eq!(r.answer(&store(1), &q, false, &mut seeded(1)), Answer::Drop);
        assert_eq!(r.answer(&store(1), &[0, 1, 0x80, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0xff], false, &mut seeded(1)), Answer::Drop);
    }

    #[test]
    fn malformed_queries_get_formerr_or_are_dropped() {
        let r = Responder::new("weave.local.", 1);
        let s = store(1);
        assert_eq!(r.answer(&s, b"\x01\x02", false, &mut seeded(1)), Answer::Drop);
        let m = reply(r.answer(&s, &[0x12, 0x34, 1, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0xff], false, &mut seeded(1)));
        assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::FormErr));
    }
}
