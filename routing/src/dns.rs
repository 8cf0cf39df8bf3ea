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
//! - Other types for a name that exists get no records (`NOERROR`).
//! - Anything outside `.umbra` is `REFUSED`: never an open resolver.
//! - Bytes that are not a DNS query are dropped, and the caller counts them.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::address::address_for_key;
use crate::crypto::KEY_LEN;
use crate::name::{TLD, key_for_label, name_for_key};

/// Time to live of every answer: a name's address never changes.
pub const TTL_SECS: u32 = 3600;

/// What the responder knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    /// The address prefix (config `address_prefix`).
    pub prefix: u8,
    /// The operator's petnames: label → key.
    pub petnames: BTreeMap<String, [u8; KEY_LEN]>,
    /// Services answered for every name: `_service._proto` → port.
    pub srv: BTreeMap<String, u16>,
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
    /// The reply to `query` and how it went, or `None` when the bytes are
    /// not a DNS query at all (dropped without a reply).
    pub fn answer(&self, query: &[u8]) -> Option<(Vec<u8>, Outcome)> {
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
        Some((resp.to_vec().ok()?, outcome))
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
        let Some(&port) = self.srv.get(&service.join(".")) else {
            return Outcome::NxDomain;
        };
        if matches!(qtype, RecordType::SRV | RecordType::ANY) {
            let srv = SRV::new(0, 0, port, target);
            resp.add_answer(Record::from_rdata(name.clone(), TTL_SECS, RData::SRV(srv)));
            resp.add_additional(aaaa);
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
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let label = host.strip_suffix(TLD)?.strip_suffix('.')?;
        let key = self.key_of(label)?;
        Some(address_for_key(&key, self.prefix))
    }
}

/// Whether `host` lies under `.umbra` (any case, with or without the final
/// dot).
pub fn is_umbra_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.len() > TLD.len()
        && host
            .get(host.len() - TLD.len() - 1..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".umbra"))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::str::FromStr;

    use hickory_proto::op::Query;
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
        }
    }

    fn ask(name: &str, qtype: RecordType) -> (Message, Outcome) {
        let mut m = Message::new();
        m.set_id(77).set_recursion_desired(true);
        m.add_query(Query::query(
            Name::from_str(name).unwrap_or_default(),
            qtype,
        ));
        let bytes = m.to_vec().unwrap_or_default();
        let (reply, outcome) = zone()
            .answer(&bytes)
            .unwrap_or((Vec::new(), Outcome::Malformed));
        (Message::from_vec(&reply).unwrap_or_default(), outcome)
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
        assert!(zone().answer(b"").is_none());
        assert!(zone().answer(b"\x00\x01garbage").is_none());
        // A response is not answered either (no loops between responders).
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        assert!(zone().answer(&m.to_vec().unwrap_or_default()).is_none());
    }

    proptest! {
        #[test]
        fn any_bytes_are_answered_or_dropped(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = zone().answer(&bytes);
        }
    }
}
