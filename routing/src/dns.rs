//! The `.umbra` DNS responder's answers, sans-IO (`docs/architecture.md`,
//! "Names"): a query in, a reply out, or nothing for what is not a query.
//! Messages are read and written by `hickory-proto`, never by hand.
//!
//! - `AAAA <label>.umbra` answers the address of the key the label names
//!   ([`crate::name`]), or of a petname's key; a label that is neither is
//!   `NXDOMAIN`. Any node's name resolves, known to the graph or not: the
//!   name is the key.
//! - `SRV <service>.<label>.umbra`, for a service the operator enabled
//!   (`[dns] srv`), points at `<label>.umbra` itself on the service's port,
//!   with the AAAA record in the additional section.
//! - `TXT <owner>.<label>.umbra`, for an owner the operator listed
//!   (`[dns] txt`), answers the operator's text, one record per string (for
//!   example XEP-0156's `_xmppconnect`).
//! - Other types for a name that exists get no records (`NOERROR`), and so
//!   does a name with only services or owners below it (`_tcp.<label>.umbra`).
//! - Anything outside `.umbra` is `REFUSED`: never an open resolver.
//! - Bytes that are not a DNS query are dropped, and the caller counts them.
//! - A reply too large for the client's UDP buffer (512 bytes, or what its
//!   EDNS record offers up to [`EDNS_UDP_PAYLOAD`]) goes out truncated, with
//!   the `TC` flag and no records, so the client asks again over TCP
//!   (RFC 7766), where the caller frames the same answers.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{AAAA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::address::address_for_key;
use crate::crypto::KEY_LEN;
use crate::name::{TLD, key_for_label, name_for_key};

/// Time to live of every answer: a name's address never changes.
pub const TTL_SECS: u32 = 3600;

/// The UDP payload this responder offers in its own EDNS record and the most
/// it sends over UDP however much a client offers: 1232 bytes, what fits an
/// IPv6 packet on any link without fragments (the value of DNS Flag Day 2020).
pub const EDNS_UDP_PAYLOAD: u16 = 1232;

/// A UDP reply without EDNS is at most this long (RFC 1035).
const PLAIN_UDP_PAYLOAD: usize = 512;

/// How a query arrived, which bounds its reply's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: a reply over the client's limit is sent truncated.
    Udp,
    /// A TCP stream (RFC 7766): a reply may take the 65,535 bytes of its
    /// length prefix.
    Tcp,
}

/// What the responder knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    /// The address prefix (config `address_prefix`).
    pub prefix: u8,
    /// The operator's petnames: label → key.
    pub petnames: BTreeMap<String, [u8; KEY_LEN]>,
    /// Services answered for every name: `_service._proto` → port.
    pub srv: BTreeMap<String, u16>,
    /// TXT records answered for every name: owner labels (`_xmppconnect`,
    /// lowercase) → one record per string, each at most 255 bytes (longer
    /// cannot be written, and the reply is dropped).
    pub txt: BTreeMap<String, Vec<String>>,
}

/// How a query was answered, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Records (or none, for a type the name has not).
    Answered,
    /// The name is under `.umbra` but names no key.
    NxDomain,
    /// Outside `.umbra`.
    Refused,
    /// Not a standard query, or not one question: an error reply.
    Malformed,
}

impl Zone {
    /// The reply to `query` arriving over `transport` and how it went, or
    /// `None` when the bytes are not a DNS query at all (dropped without a
    /// reply), or its reply cannot be written.
    pub fn answer(&self, query: &[u8], transport: Transport) -> Option<(Vec<u8>, Outcome)> {
        let req = Message::from_vec(query).ok()?;
        if req.message_type() != MessageType::Query {
            return None;
        }
        let mut resp = Message::new();
        resp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_op_code(req.op_code())
            .set_recursion_desired(req.recursion_desired())
            .set_authoritative(true);
        let [q] = req.queries() else {
            resp.set_response_code(ResponseCode::FormErr);
            return Some((resp.to_vec().ok()?, Outcome::Malformed));
        };
        resp.add_query(q.clone());
        if req.op_code() != OpCode::Query {
            resp.set_response_code(ResponseCode::NotImp);
            return Some((resp.to_vec().ok()?, Outcome::Malformed));
        }
        let outcome = self.fill(&mut resp, q.name(), q.query_type());
        let code = match outcome {
            Outcome::Answered => ResponseCode::NoError,
            Outcome::NxDomain => ResponseCode::NXDomain,
            Outcome::Refused => ResponseCode::Refused,
            Outcome::Malformed => ResponseCode::FormErr,
        };
        if code == ResponseCode::Refused {
            resp.set_authoritative(false);
        }
        resp.set_response_code(code);
        if req.extensions().is_some() {
            // The client speaks EDNS: say so, with our own payload size.
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_UDP_PAYLOAD);
            resp.set_edns(edns);
        }
        let bytes = resp.to_vec().ok()?;
        let limit = match transport {
            Transport::Udp if req.extensions().is_some() => {
                usize::from(req.max_payload().min(EDNS_UDP_PAYLOAD))
            }
            Transport::Udp => PLAIN_UDP_PAYLOAD,
            Transport::Tcp => usize::from(u16::MAX),
        };
        if bytes.len() <= limit {
            return Some((bytes, outcome));
        }
        if transport == Transport::Tcp {
            // Longer than a length prefix can say; the config's limits on
            // TXT keep every answer far below this.
            return None;
        }
        Some((resp.truncate().to_vec().ok()?, outcome))
    }

    /// Puts the records for `name` and `qtype` into `resp`.
    fn fill(&self, resp: &mut Message, name: &Name, qtype: RecordType) -> Outcome {
        let labels: Vec<String> = name
            .to_lowercase()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let Some((tld, rest)) = labels.split_last() else {
            return Outcome::Refused;
        };
        if tld != TLD {
            return Outcome::Refused;
        }
        let Some((host, service)) = rest.split_last() else {
            // `umbra.` itself exists, with no records of these types.
            return Outcome::Answered;
        };
        let Some(key) = self.key_of(host) else {
            return Outcome::NxDomain;
        };
        let target = match Name::from_ascii(format!("{}.", name_for_key(&key))) {
            Ok(n) => n,
            Err(_) => return Outcome::Malformed,
        };
        let aaaa = Record::from_rdata(
            target.clone(),
            TTL_SECS,
            RData::AAAA(AAAA(address_for_key(&key, self.prefix))),
        );
        if service.is_empty() {
            if matches!(qtype, RecordType::AAAA | RecordType::ANY) {
                resp.add_answer(Record::from_rdata(
                    name.clone(),
                    TTL_SECS,
                    aaaa.data().clone(),
                ));
            }
            return Outcome::Answered;
        }
        let owner = service.join(".");
        let port = self.srv.get(&owner).copied();
        let texts = self.txt.get(&owner);
        if port.is_none() && texts.is_none() {
            // A name with owners below it exists, with no records (RFC 8020:
            // NXDOMAIN would deny everything below it too).
            let below = format!(".{owner}");
            let parent = |o: &String| o.ends_with(&below);
            return if self.srv.keys().any(parent) || self.txt.keys().any(parent) {
                Outcome::Answered
            } else {
                Outcome::NxDomain
            };
        }
        if let Some(port) = port
            && matches!(qtype, RecordType::SRV | RecordType::ANY)
        {
            let srv = SRV::new(0, 0, port, target);
            resp.add_answer(Record::from_rdata(name.clone(), TTL_SECS, RData::SRV(srv)));
            resp.add_additional(aaaa);
        }
        if let Some(texts) = texts
            && matches!(qtype, RecordType::TXT | RecordType::ANY)
        {
            for text in texts {
                let txt = TXT::new(vec![text.clone()]);
                resp.add_answer(Record::from_rdata(name.clone(), TTL_SECS, RData::TXT(txt)));
            }
        }
        Outcome::Answered
    }

    /// The key a host label stands for: a key label, or a petname.
    fn key_of(&self, label: &str) -> Option<[u8; KEY_LEN]> {
        key_for_label(label)
            .ok()
            .or_else(|| self.petnames.get(label).copied())
    }

    /// The overlay address of `host`, a name this responder would answer
    /// `AAAA` for (`<label>.umbra`, any case, with or without the final
    /// dot): what the SOCKS proxy resolves inside umbra. `None` when the
    /// label names no key; [`is_umbra_name`] tells that from a host
    /// outside `.umbra`.
    pub fn address_of(&self, host: &str) -> Option<Ipv6Addr> {
        let key = self.key_of(&umbra_label(host)?)?;
        Some(address_for_key(&key, self.prefix))
    }
}

/// Whether `host` lies under `.umbra` (any case, with or without the final
/// dot).
pub fn is_umbra_name(host: &str) -> bool {
    umbra_label(host).is_some()
}

/// What `host` has before `.umbra` (any case, with or without the final
/// dot), lowercased; `None` for a host outside `.umbra`.
fn umbra_label(host: &str) -> Option<String> {
    let mut host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label_len = host.strip_suffix(TLD)?.strip_suffix('.')?.len();
    host.truncate(label_len);
    Some(host)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::str::FromStr;

    use hickory_proto::op::{Edns, Query};
    use proptest::prelude::*;

    use super::*;
    use crate::address::DEFAULT_PREFIX;
    use crate::name::label_for_key;

    const KEY: [u8; 32] = [5; 32];
    const PET: [u8; 32] = [6; 32];

    fn zone() -> Zone {
        Zone {
            prefix: DEFAULT_PREFIX,
            petnames: [("chat".to_string(), PET)].into(),
            srv: [("_xmpp-server._tcp".to_string(), 5269)].into(),
            txt: [(
                "_xmppconnect".to_string(),
                vec![
                    "_xmpp-client-websocket=wss://example.umbra/ws".to_string(),
                    "_xmpp-client-xbosh=https://example.umbra/bosh".to_string(),
                ],
            )]
            .into(),
        }
    }

    /// A query for `name` and `qtype`, with an EDNS record offering
    /// `edns` bytes if set.
    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(77).set_recursion_desired(true);
        m.add_query(Query::query(
            Name::from_str(name).unwrap_or_default(),
            qtype,
        ));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap_or_default()
    }

    fn ask_zone(
        zone: &Zone,
        name: &str,
        qtype: RecordType,
        edns: Option<u16>,
        transport: Transport,
    ) -> (Message, Outcome, usize) {
        let (reply, outcome) = zone
            .answer(&query(name, qtype, edns), transport)
            .unwrap_or((Vec::new(), Outcome::Malformed));
        let len = reply.len();
        (Message::from_vec(&reply).unwrap_or_default(), outcome, len)
    }

    fn ask(name: &str, qtype: RecordType) -> (Message, Outcome) {
        let (m, o, _) = ask_zone(&zone(), name, qtype, None, Transport::Udp);
        (m, o)
    }

    fn texts(m: &Message) -> Vec<String> {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::TXT(t) => Some(
                    t.txt_data()
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect()
    }

    fn addresses(m: &Message) -> Vec<Ipv6Addr> {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_key_name_and_a_petname_answer_their_address() {
        let name = format!("{}.umbra.", label_for_key(&KEY));
        let (m, o) = ask(&name, RecordType::AAAA);
        assert_eq!(o, Outcome::Answered);
        assert_eq!(m.id(), 77);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative());
        assert_eq!(addresses(&m), vec![address_for_key(&KEY, DEFAULT_PREFIX)]);
        let (m, _) = ask(&name.to_ascii_uppercase(), RecordType::AAAA);
        assert_eq!(addresses(&m), vec![address_for_key(&KEY, DEFAULT_PREFIX)]);
        let (m, _) = ask("chat.umbra.", RecordType::AAAA);
        assert_eq!(addresses(&m), vec![address_for_key(&PET, DEFAULT_PREFIX)]);
        // A name that exists has no A record.
        let (m, o) = ask(&name, RecordType::A);
        assert_eq!(
            (o, m.response_code()),
            (Outcome::Answered, ResponseCode::NoError)
        );
        assert!(m.answers().is_empty());
    }

    #[test]
    fn srv_points_at_the_name_itself_for_enabled_services() {
        let host = format!("{}.umbra.", label_for_key(&KEY));
        let (m, o) = ask(&format!("_xmpp-server._tcp.{host}"), RecordType::SRV);
        assert_eq!(o, Outcome::Answered);
        let srv: Vec<(u16, String)> = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::SRV(s) => Some((s.port(), s.target().to_ascii())),
                _ => None,
            })
            .collect();
        assert_eq!(srv, vec![(5269, host.clone())]);
        assert_eq!(m.additionals().len(), 1);
        let (m, o) = ask(&format!("_matrix._tcp.{host}"), RecordType::SRV);
        assert_eq!(
            (o, m.response_code()),
            (Outcome::NxDomain, ResponseCode::NXDomain)
        );
    }

    #[test]
    fn txt_answers_the_operator_text_for_every_name() {
        let want = vec![
            "_xmpp-client-websocket=wss://example.umbra/ws".to_string(),
            "_xmpp-client-xbosh=https://example.umbra/bosh".to_string(),
        ];
        for host in [
            format!("{}.umbra.", label_for_key(&KEY)),
            "chat.umbra.".to_string(),
        ] {
            let owner = format!("_xmppconnect.{host}");
            let (m, o) = ask(&owner, RecordType::TXT);
            assert_eq!(
                (o, m.response_code()),
                (Outcome::Answered, ResponseCode::NoError)
            );
            assert_eq!(texts(&m), want, "{owner}");
            assert!(m.answers().iter().all(|r| r.name().to_ascii() == owner));
            // Upper case asks for the same owner.
            let (m, _) = ask(&owner.to_ascii_uppercase(), RecordType::TXT);
            assert_eq!(texts(&m), want);
            // The owner exists with no SRV record, and the service with no TXT.
            let (m, o) = ask(&owner, RecordType::SRV);
            assert_eq!((o, m.answers().len()), (Outcome::Answered, 0));
            let (m, o) = ask(&format!("_xmpp-server._tcp.{host}"), RecordType::TXT);
            assert_eq!((o, m.answers().len()), (Outcome::Answered, 0));
        }
        let host = format!("{}.umbra.", label_for_key(&KEY));
        let (m, o) = ask(&format!("_other.{host}"), RecordType::TXT);
        assert_eq!(
            (o, m.response_code()),
            (Outcome::NxDomain, ResponseCode::NXDomain)
        );
        // The name itself has no TXT record, and a bad name no owners.
        let (m, o) = ask(&host, RecordType::TXT);
        assert_eq!((o, m.answers().len()), (Outcome::Answered, 0));
        let (m, o) = ask("_xmppconnect.nobody.umbra.", RecordType::TXT);
        assert_eq!(
            (o, m.response_code()),
            (Outcome::NxDomain, ResponseCode::NXDomain)
        );
    }

    #[test]
    fn a_name_with_services_below_it_exists() {
        let host = format!("{}.umbra.", label_for_key(&KEY));
        let (m, o) = ask(&format!("_tcp.{host}"), RecordType::SRV);
        assert_eq!(
            (o, m.response_code(), m.answers().len()),
            (Outcome::Answered, ResponseCode::NoError, 0)
        );
        let (_, o) = ask(&format!("_udp.{host}"), RecordType::SRV);
        assert_eq!(o, Outcome::NxDomain);
    }

    #[test]
    fn a_reply_too_large_for_udp_is_truncated_and_whole_over_tcp() {
        let mut big = zone();
        let texts_in = vec!["x".repeat(255); 6];
        big.txt.insert("_big".to_string(), texts_in.clone());
        let owner = format!("_big.{}.umbra.", label_for_key(&KEY));
        // No EDNS: 512 bytes at most, so truncated, with no records.
        let (m, o, len) = ask_zone(&big, &owner, RecordType::TXT, None, Transport::Udp);
        assert_eq!(o, Outcome::Answered);
        assert!(
            m.truncated() && m.answers().is_empty() && len <= 512,
            "{m:?}"
        );
        assert_eq!(m.id(), 77);
        assert_eq!(m.queries().len(), 1);
        // EDNS offering 4096: we send at most 1232, still too little.
        let (m, _, len) = ask_zone(&big, &owner, RecordType::TXT, Some(4096), Transport::Udp);
        assert!(m.truncated() && m.answers().is_empty(), "{m:?}");
        assert!(len <= usize::from(EDNS_UDP_PAYLOAD));
        assert_eq!(
            m.extensions().as_ref().map(Edns::max_payload),
            Some(EDNS_UDP_PAYLOAD)
        );
        // Over TCP the whole answer.
        let (m, _, len) = ask_zone(&big, &owner, RecordType::TXT, None, Transport::Tcp);
        assert!(!m.truncated() && len > 1232, "{len}");
        assert_eq!(texts(&m), texts_in);
        // Small answers fit UDP untruncated, with our EDNS record when asked with one.
        let host = format!("{}.umbra.", label_for_key(&KEY));
        let (m, _, _) = ask_zone(&big, &host, RecordType::AAAA, Some(1232), Transport::Udp);
        assert!(!m.truncated());
        assert_eq!(addresses(&m), vec![address_for_key(&KEY, DEFAULT_PREFIX)]);
        assert!(m.extensions().is_some());
        let (m, _, _) = ask_zone(&big, &host, RecordType::AAAA, None, Transport::Udp);
        assert!(m.extensions().is_none());
    }

    #[test]
    fn bad_names_are_nxdomain_and_others_refused() {
        let mut typo = label_for_key(&KEY);
        typo.replace_range(0..1, if typo.starts_with('a') { "b" } else { "a" });
        for name in [format!("{typo}.umbra."), "nobody.umbra.".to_string()] {
            let (m, o) = ask(&name, RecordType::AAAA);
            assert_eq!(
                (o, m.response_code()),
                (Outcome::NxDomain, ResponseCode::NXDomain)
            );
        }
        let (m, o) = ask("example.com.", RecordType::AAAA);
        assert_eq!(
            (o, m.response_code()),
            (Outcome::Refused, ResponseCode::Refused)
        );
        assert!(m.answers().is_empty());
    }

    #[test]
    fn hosts_resolve_as_the_responder_answers() {
        let z = zone();
        let key_name = format!("{}.umbra", label_for_key(&KEY));
        let want = Some(address_for_key(&KEY, DEFAULT_PREFIX));
        assert_eq!(z.address_of(&key_name), want);
        assert_eq!(
            z.address_of(&format!("{}.", key_name.to_ascii_uppercase())),
            want
        );
        assert_eq!(
            z.address_of("Chat.umbra"),
            Some(address_for_key(&PET, DEFAULT_PREFIX))
        );
        for host in [
            "nobody.umbra",
            "umbra",
            ".umbra",
            "chat.umbra.com",
            "chat.example",
        ] {
            assert_eq!(z.address_of(host), None, "{host}");
        }
        assert!(is_umbra_name("nobody.UMBRA."));
        assert!(
            !is_umbra_name("umbra") && !is_umbra_name("example.com") && !is_umbra_name("xumbra")
        );
    }

    #[test]
    fn what_is_not_a_query_is_dropped() {
        for t in [Transport::Udp, Transport::Tcp] {
            assert!(zone().answer(b"", t).is_none());
            assert!(zone().answer(b"\x00\x01garbage", t).is_none());
        }
        // A response is not answered either (no loops between responders).
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        assert!(
            zone()
                .answer(&m.to_vec().unwrap_or_default(), Transport::Udp)
                .is_none()
        );
    }

    proptest! {
        #[test]
        fn any_bytes_are_answered_or_dropped(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for t in [Transport::Udp, Transport::Tcp] {
                if let Some((reply, _)) = zone().answer(&bytes, t) {
                    prop_assert!(t == Transport::Tcp || reply.len() <= usize::from(EDNS_UDP_PAYLOAD));
                }
            }
        }
    }
}
