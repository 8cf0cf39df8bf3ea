//! NAT traversal between two partners (docs/protocol.md, "NAT traversal";
//! docs/architecture.md, "NAT"): the messages they exchange about how to
//! reach each other, the sealed envelope that carries one through a
//! partner both share, and the decision of which way to link.
//!
//! A traversal message only ever goes to a partner: inside the end-to-end
//! session over a circuit (a routing-core message whose first byte is
//! [`APP_TRAVERSAL`]), inside a relayed link between the two (a `nat-msg`
//! link control message), or sealed to the recipient and passed on by a
//! partner both have a live link to ([`seal`], [`open`]). The last is a link
//! handshake message 1 under its own prologue: only the recipient can read
//! it, it proves the sender, carries a timestamp, and a replay is refused.
//!
//! Messages are `version u8 | kind u8 | fields`; every count is bounded and
//! every length checked, and only the canonical bytes of a message decode.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use umbra_routing::crypto::Identity;

use super::addr::{ADDR_LEN, decode_addr, encode_addr};
use super::codec::Reader;
use super::handshake::{HandshakeError, LinkInitiator, LinkResponder, MSG1_APP_PAYLOAD_MAX_LEN};
use super::nat::Mapping;

/// The traversal message version this code speaks.
pub const TRAVERSAL_VERSION: u8 = 1;

/// The first byte of an end-to-end routing-core message that carries a
/// traversal message (the rest of the message is one).
pub const APP_TRAVERSAL: u8 = 0x01;

/// The most endpoints one message lists.
pub const ENDPOINTS_MAX: usize = 8;

/// The most relays one message lists.
pub const RELAYS_MAX: usize = 8;

/// Length of an invite's one-time secret, in bytes.
pub const INVITE_SECRET_LEN: usize = 16;

/// What a sealed envelope's handshake is bound to instead of a TLS exporter
/// value, so an envelope can never pass for a link's message 1 (whose
/// binding is a fresh secret of one TLS connection), nor the reverse.
pub const ENVELOPE_BINDING: &[u8] = b"umbra nat envelope v1";

/// The longest traversal message that fits in an envelope, in bytes.
pub const ENVELOPE_MESSAGE_MAX_LEN: usize = MSG1_APP_PAYLOAD_MAX_LEN;

/// How the sender can be reached at an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointKind {
    /// A listener with no NAT in front of it: dial it.
    Listen,
    /// A port mapping at the sender's NAT gateway that forwards to its
    /// listener: dial it.
    Mapped,
    /// Where the sender's dial port appears outside its NAT: dialing it gets
    /// nowhere, but both sides connecting at once may (hole punching).
    Observed,
}

impl EndpointKind {
    fn to_u8(self) -> u8 {
        match self {
            EndpointKind::Listen => 1,
            EndpointKind::Mapped => 2,
            EndpointKind::Observed => 3,
        }
    }

    fn from_u8(b: u8) -> Option<EndpointKind> {
        Some(match b {
            1 => EndpointKind::Listen,
            2 => EndpointKind::Mapped,
            3 => EndpointKind::Observed,
            _ => return None,
        })
    }

    /// Whether a connection to such an endpoint reaches the sender by itself.
    pub fn is_dialable(self) -> bool {
        matches!(self, EndpointKind::Listen | EndpointKind::Mapped)
    }

    /// `listen`, `mapped` or `observed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Listen => "listen",
            EndpointKind::Mapped => "mapped",
            EndpointKind::Observed => "observed",
        }
    }
}

/// One way to reach the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// What it is.
    pub kind: EndpointKind,
    /// The address.
    pub addr: SocketAddr,
}

/// One traversal message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Traversal {
    /// How to reach the sender now, and which partners of its could relay.
    Endpoints {
        /// Grows with every change of the sender's endpoints; a receiver
        /// keeps the newest.
        seq: u32,
        /// The sender's NAT, as it classified it.
        mapping: Mapping,
        /// "Send me yours": the receiver answers with its own endpoints.
        reply: bool,
        /// At most [`ENDPOINTS_MAX`].
        endpoints: Vec<Endpoint>,
        /// Partners of the sender with a live link that relay, at most
        /// [`RELAYS_MAX`]: the receiver may open a relayed link through any
        /// one it also has a live link to.
        relays: Vec<[u8; 32]>,
    },
    /// Hole punching, first step: "answer at once", so the sender measures
    /// the round trip of the route messages take.
    PunchConnect {
        /// Names this punch.
        nonce: u64,
    },
    /// The answer to [`Traversal::PunchConnect`].
    PunchConnectReply {
        /// Its nonce.
        nonce: u64,
    },
    /// Hole punching, second step: "connect now". The sender connects half
    /// a round trip later, as this arrives.
    PunchSync {
        /// Its nonce.
        nonce: u64,
    },
    /// An invite made without endpoints was accepted: the acceptor proves it
    /// holds the token and says where the inviter can dial it.
    InviteAccepted {
        /// The invite's one-time secret.
        secret: [u8; INVITE_SECRET_LEN],
        /// The acceptor's endpoints, at most [`ENDPOINTS_MAX`].
        endpoints: Vec<Endpoint>,
    },
}

/// Why bytes are not a traversal message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraversalError {
    /// Too short for its fields, or bytes left over.
    #[error("traversal message is malformed")]
    Malformed,
    /// A version this code does not speak.
    #[error("traversal message version {0} is not supported")]
    WrongVersion(u8),
    /// A kind this version does not know.
    #[error("unknown traversal message kind {0}")]
    UnknownKind(u8),
    /// An unknown NAT mapping or endpoint kind byte.
    #[error("traversal message has an unknown {0} byte")]
    BadField(&'static str),
    /// More endpoints or relays than allowed.
    #[error("traversal message lists more {0} than allowed")]
    TooMany(&'static str),
}

const KIND_ENDPOINTS: u8 = 1;
const KIND_PUNCH_CONNECT: u8 = 2;
const KIND_PUNCH_CONNECT_REPLY: u8 = 3;
const KIND_PUNCH_SYNC: u8 = 4;
const KIND_INVITE_ACCEPTED: u8 = 5;

fn mapping_to_u8(m: Mapping) -> u8 {
    match m {
        Mapping::Unknown => 0,
        Mapping::Public => 1,
        Mapping::EndpointIndependent => 2,
        Mapping::EndpointDependent => 3,
    }
}

fn mapping_from_u8(b: u8) -> Option<Mapping> {
    Some(match b {
        0 => Mapping::Unknown,
        1 => Mapping::Public,
        2 => Mapping::EndpointIndependent,
        3 => Mapping::EndpointDependent,
        _ => return None,
    })
}

fn put_endpoints(out: &mut Vec<u8>, endpoints: &[Endpoint]) {
    out.push(endpoints.len().min(ENDPOINTS_MAX) as u8);
    for e in endpoints.iter().take(ENDPOINTS_MAX) {
        out.push(e.kind.to_u8());
        out.extend_from_slice(&encode_addr(e.addr));
    }
}

fn read_endpoints(r: &mut Reader<'_>) -> Result<Vec<Endpoint>, TraversalError> {
    let n = usize::from(r.u8().ok_or(TraversalError::Malformed)?);
    if n > ENDPOINTS_MAX {
        return Err(TraversalError::TooMany("endpoints"));
    }
    (0..n)
        .map(|_| {
            let kind = r.u8().ok_or(TraversalError::Malformed)?;
            let kind =
                EndpointKind::from_u8(kind).ok_or(TraversalError::BadField("endpoint kind"))?;
            let addr = r.take(ADDR_LEN).and_then(decode_addr);
            let addr = addr.ok_or(TraversalError::Malformed)?;
            Ok(Endpoint { kind, addr })
        })
        .collect()
}

/// `addr` as it reads back after [`encode_addr`], which does not carry IPv6
/// scope ids and flow labels.
fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    decode_addr(&encode_addr(addr)).unwrap_or(addr)
}

impl Traversal {
    /// The message's bytes. Lists longer than their maximum are cut to it,
    /// and addresses are written as [`encode_addr`] does.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TRAVERSAL_VERSION];
        match self {
            Traversal::Endpoints {
                seq,
                mapping,
                reply,
                endpoints,
                relays,
            } => {
                out.push(KIND_ENDPOINTS);
                out.extend_from_slice(&seq.to_be_bytes());
                out.push(mapping_to_u8(*mapping));
                out.push(u8::from(*reply));
                put_endpoints(&mut out, endpoints);
                out.push(relays.len().min(RELAYS_MAX) as u8);
                for k in relays.iter().take(RELAYS_MAX) {
                    out.extend_from_slice(k);
                }
            }
            Traversal::PunchConnect { nonce }
            | Traversal::PunchConnectReply { nonce }
            | Traversal::PunchSync { nonce } => {
                out.push(match self {
                    Traversal::PunchConnect { .. } => KIND_PUNCH_CONNECT,
                    Traversal::PunchConnectReply { .. } => KIND_PUNCH_CONNECT_REPLY,
                    _ => KIND_PUNCH_SYNC,
                });
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Traversal::InviteAccepted { secret, endpoints } => {
                out.push(KIND_INVITE_ACCEPTED);
                out.extend_from_slice(secret);
                put_endpoints(&mut out, endpoints);
            }
        }
        out
    }

    /// Reads a message. Only canonical bytes decode: `decode(b)` is
    /// `Ok(m)` only if `m.encode() == b`.
    pub fn decode(bytes: &[u8]) -> Result<Traversal, TraversalError> {
        let mut r = Reader::new(bytes);
        let version = r.u8().ok_or(TraversalError::Malformed)?;
        if version != TRAVERSAL_VERSION {
            return Err(TraversalError::WrongVersion(version));
        }
        let kind = r.u8().ok_or(TraversalError::Malformed)?;
        let msg = match kind {
            KIND_ENDPOINTS => {
                let seq = r.u32().ok_or(TraversalError::Malformed)?;
                let mapping = r.u8().ok_or(TraversalError::Malformed)?;
                let mapping =
                    mapping_from_u8(mapping).ok_or(TraversalError::BadField("mapping"))?;
                let reply = match r.u8().ok_or(TraversalError::Malformed)? {
                    0 => false,
                    1 => true,
                    _ => return Err(TraversalError::BadField("reply")),
                };
                let endpoints = read_endpoints(&mut r)?;
                let n = usize::from(r.u8().ok_or(TraversalError::Malformed)?);
                if n > RELAYS_MAX {
                    return Err(TraversalError::TooMany("relays"));
                }
                let relays = (0..n)
                    .map(|_| r.array::<32>().ok_or(TraversalError::Malformed))
                    .collect::<Result<_, _>>()?;
                Traversal::Endpoints {
                    seq,
                    mapping,
                    reply,
                    endpoints,
                    relays,
                }
            }
            KIND_PUNCH_CONNECT | KIND_PUNCH_CONNECT_REPLY | KIND_PUNCH_SYNC => {
                let nonce = r.u64().ok_or(TraversalError::Malformed)?;
                match kind {
                    KIND_PUNCH_CONNECT => Traversal::PunchConnect { nonce },
                    KIND_PUNCH_CONNECT_REPLY => Traversal::PunchConnectReply { nonce },
                    _ => Traversal::PunchSync { nonce },
                }
            }
            KIND_INVITE_ACCEPTED => {
                let secret = r.array().ok_or(TraversalError::Malformed)?;
                let endpoints = read_endpoints(&mut r)?;
                Traversal::InviteAccepted { secret, endpoints }
            }
            k => return Err(TraversalError::UnknownKind(k)),
        };
        if !r.is_empty() {
            return Err(TraversalError::Malformed);
        }
        Ok(msg)
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Traversal::Endpoints { .. } => "endpoints",
            Traversal::PunchConnect { .. } => "punch-connect",
            Traversal::PunchConnectReply { .. } => "punch-connect-reply",
            Traversal::PunchSync { .. } => "punch-sync",
            Traversal::InviteAccepted { .. } => "invite-accepted",
        }
    }
}

/// The endpoints as they travel: with the port and address canonical (see
/// [`encode_addr`]), sorted, without repeats, at most [`ENDPOINTS_MAX`].
pub fn normalize_endpoints(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    for e in &mut endpoints {
        e.addr = canonical_addr(e.addr);
    }
    endpoints.sort();
    endpoints.dedup();
    endpoints.truncate(ENDPOINTS_MAX);
    endpoints
}

/// Seals traversal message `msg` (at most [`ENVELOPE_MESSAGE_MAX_LEN`]
/// bytes) for `to`: the envelope a partner of both passes on (`fwd-to`).
pub fn seal(
    me: &Identity,
    to: &[u8; 32],
    now_unix: u64,
    msg: &[u8],
) -> Result<Vec<u8>, HandshakeError> {
    LinkInitiator::start(me, to, ENVELOPE_BINDING, now_unix, msg).map(|(_, envelope)| envelope)
}

/// Opens an envelope sealed to this node: who sealed it (proven) and the
/// traversal message. `opener` keeps the replay cache of envelopes; keep it
/// apart from the listener's.
pub fn open(
    opener: &mut LinkResponder,
    envelope: &[u8],
    now_unix: u64,
) -> Result<([u8; 32], Vec<u8>), HandshakeError> {
    opener
        .read_msg1(envelope, ENVELOPE_BINDING, now_unix)
        .map(|incoming| (incoming.peer, incoming.app_payload.clone()))
}

/// One side of a pair of partners that have no link, for [`plan`].
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// Its identity key.
    pub key: &'a [u8; 32],
    /// Its NAT.
    pub mapping: Mapping,
    /// Its endpoints.
    pub endpoints: &'a [Endpoint],
}

impl Side<'_> {
    fn dialable(&self) -> Vec<SocketAddr> {
        self.endpoints
            .iter()
            .filter(|e| e.kind.is_dialable())
            .map(|e| e.addr)
            .collect()
    }

    fn observed(&self) -> Option<SocketAddr> {
        self.endpoints
            .iter()
            .find(|e| e.kind == EndpointKind::Observed)
            .map(|e| e.addr)
    }

    /// Whether hole punching may work from this side: its NAT maps endpoint
    /// independently (or it could not tell yet) and it knows where its dial
    /// port appears outside.
    fn punchable(&self) -> bool {
        matches!(
            self.mapping,
            Mapping::EndpointIndependent | Mapping::Unknown
        ) && self.observed().is_some()
    }
}

/// What was tried already for a pair, for [`plan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried {
    /// Dialing the peer's dialable endpoints failed.
    pub dial_failed: bool,
    /// The peer did not dial this node's dialable endpoints in time.
    pub await_failed: bool,
    /// Hole punching failed every attempt.
    pub punch_failed: bool,
}

/// The next way to try a link between two partners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Dial these endpoints of the peer.
    Dial(Vec<SocketAddr>),
    /// The peer can dial this node: wait for it.
    AwaitDial,
    /// Both NATs may let a simultaneous open through: punch, toward the
    /// peer's observed endpoint. The initiator (the lower key) measures the
    /// round trip, says when, and is the TLS client.
    Punch {
        /// Whether this side leads.
        initiator: bool,
        /// Where the peer's dial port appears.
        target: SocketAddr,
    },
    /// Link through a partner both have a live link to. The initiator (the
    /// lower key) opens the relayed stream and is the TLS client.
    Relay {
        /// Whether this side opens it.
        initiator: bool,
    },
}

/// Decides how `me` should try to link with `peer` after what `tried`
/// says failed: a direct dial where either side has a listener others can
/// reach (its own, or a port mapping), a hole punch where both NATs map
/// endpoint independently, and a relay otherwise (docs/architecture.md,
/// "NAT traversal"). Both sides compute it from the same facts and agree.
pub fn plan(me: &Side<'_>, peer: &Side<'_>, tried: Tried) -> Step {
    let initiator = me.key < peer.key;
    let theirs = peer.dialable();
    if !theirs.is_empty() && !tried.dial_failed {
        return Step::Dial(theirs);
    }
    if !me.dialable().is_empty() && !tried.await_failed {
        return Step::AwaitDial;
    }
    if !tried.punch_failed
        && me.punchable()
        && peer.punchable()
        && let Some(target) = peer.observed()
    {
        return Step::Punch { initiator, target };
    }
    Step::Relay { initiator }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(kind: EndpointKind, s: &str) -> Endpoint {
        Endpoint {
            kind,
            addr: s
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
        }
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            Traversal::Endpoints {
                seq: 7,
                mapping: Mapping::EndpointIndependent,
                reply: true,
                endpoints: vec![
                    ep(EndpointKind::Observed, "198.18.11.2:40001"),
                    ep(EndpointKind::Listen, "[2001:db8::1]:443"),
                ],
                relays: vec![[3; 32], [4; 32]],
            },
            Traversal::PunchConnect { nonce: 1 },
            Traversal::PunchConnectReply { nonce: u64::MAX },
            Traversal::PunchSync { nonce: 9 },
            Traversal::InviteAccepted {
                secret: [5; 16],
                endpoints: vec![ep(EndpointKind::Mapped, "198.18.21.2:443")],
            },
        ];
        for m in msgs {
            assert_eq!(Traversal::decode(&m.encode()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn bad_messages_are_refused() {
        assert_eq!(Traversal::decode(&[]), Err(TraversalError::Malformed));
        assert_eq!(
            Traversal::decode(&[2, 1]),
            Err(TraversalError::WrongVersion(2))
        );
        assert_eq!(
            Traversal::decode(&[1, 99]),
            Err(TraversalError::UnknownKind(99))
        );
        let mut sync = Traversal::PunchSync { nonce: 1 }.encode();
        sync.push(0);
        assert_eq!(Traversal::decode(&sync), Err(TraversalError::Malformed));
        // Nine endpoints.
        let mut many = vec![1, KIND_ENDPOINTS, 0, 0, 0, 0, 0, 0, 9];
        many.extend(std::iter::repeat_n(0u8, 9 * (1 + ADDR_LEN)));
        many.push(0);
        assert_eq!(
            Traversal::decode(&many),
            Err(TraversalError::TooMany("endpoints"))
        );
        let bad_mapping = [1, KIND_ENDPOINTS, 0, 0, 0, 0, 9, 0, 0, 0];
        assert_eq!(
            Traversal::decode(&bad_mapping),
            Err(TraversalError::BadField("mapping"))
        );
    }

    fn side<'a>(key: &'a [u8; 32], mapping: Mapping, endpoints: &'a [Endpoint]) -> Side<'a> {
        Side {
            key,
            mapping,
            endpoints,
        }
    }

    #[test]
    fn the_plan_follows_the_nat_matrix() {
        let (lo, hi) = ([1u8; 32], [2u8; 32]);
        let listen = [ep(EndpointKind::Listen, "198.18.1.2:443")];
        let mapped = [
            ep(EndpointKind::Mapped, "198.18.21.2:443"),
            ep(EndpointKind::Observed, "198.18.21.2:40000"),
        ];
        let eim = [ep(EndpointKind::Observed, "198.18.11.2:40000")];
        let edm: [Endpoint; 0] = [];
        let none = Tried::default();
        use Mapping::*;
        // Public or mapped on either side: a direct dial by whoever can.
        let p = plan(
            &side(&lo, EndpointIndependent, &eim),
            &side(&hi, Public, &listen),
            none,
        );
        assert_eq!(
            p,
            Step::Dial(vec![
                "198.18.1.2:443".parse().unwrap_or_else(|_| unreachable!())
            ])
        );
        let p = plan(
            &side(&hi, Public, &listen),
            &side(&lo, EndpointIndependent, &eim),
            none,
        );
        assert_eq!(p, Step::AwaitDial);
        let p = plan(
            &side(&lo, EndpointDependent, &edm),
            &side(&hi, EndpointDependent, &mapped),
            none,
        );
        assert!(matches!(p, Step::Dial(_)));
        // Both endpoint independent: punch, the lower key leads.
        let p = plan(
            &side(&lo, EndpointIndependent, &eim),
            &side(&hi, EndpointIndependent, &eim),
            none,
        );
        assert!(matches!(
            p,
            Step::Punch {
                initiator: true,
                ..
            }
        ));
        let p = plan(
            &side(&hi, EndpointIndependent, &eim),
            &side(&lo, EndpointIndependent, &eim),
            none,
        );
        assert!(matches!(
            p,
            Step::Punch {
                initiator: false,
                ..
            }
        ));
        // Endpoint dependent on either side: relay, the lower key opens it.
        let p = plan(
            &side(&lo, EndpointDependent, &edm),
            &side(&hi, EndpointIndependent, &eim),
            none,
        );
        assert_eq!(p, Step::Relay { initiator: true });
        let p = plan(
            &side(&hi, EndpointIndependent, &eim),
            &side(&lo, EndpointDependent, &edm),
            none,
        );
        assert_eq!(p, Step::Relay { initiator: false });
        // What failed moves the plan on.
        let failed = Tried {
            punch_failed: true,
            ..none
        };
        let p = plan(
            &side(&lo, EndpointIndependent, &eim),
            &side(&hi, EndpointIndependent, &eim),
            failed,
        );
        assert_eq!(p, Step::Relay { initiator: true });
        let failed = Tried {
            await_failed: true,
            ..none
        };
        let p = plan(
            &side(&hi, Public, &listen),
            &side(&lo, EndpointDependent, &edm),
            failed,
        );
        assert_eq!(p, Step::Relay { initiator: false });
    }

    #[test]
    fn envelopes_prove_the_sender_and_refuse_replays() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let msg = Traversal::PunchSync { nonce: 3 }.encode();
        let env = seal(&a, &b.public(), 1000, &msg).unwrap_or_default();
        let mut opener = LinkResponder::new(b.clone());
        assert_eq!(open(&mut opener, &env, 1001), Ok((a.public(), msg.clone())));
        assert_eq!(open(&mut opener, &env, 1001), Err(HandshakeError::Replay));
        // Sealed for b, not readable by a third node.
        let mut other = LinkResponder::new(Identity::generate());
        assert!(open(&mut other, &env, 1001).is_err());
        // Too old.
        let env = seal(&a, &b.public(), 1000, &msg).unwrap_or_default();
        assert_eq!(
            open(&mut opener, &env, 2000),
            Err(HandshakeError::StaleTimestamp)
        );
    }
}
