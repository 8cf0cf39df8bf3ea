//! The control socket's requests and responses: newline-delimited JSON
//! between the CLI and the daemon (docs/protocol.md, "Control protocol").
//!
//! A request is one line, `{"cmd": "status", ...}`. A response is one line,
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. This
//! module only parses and describes them; the daemon serves the socket.
//! Numeric fields are bounded where the daemon uses them, not here.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request line the daemon reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The node's status.
    Status,
    /// One row per link.
    Peers,
    /// Make an invite token.
    Invite {
        /// Terms like `50GiB/30d`; default: the default terms.
        #[serde(default)]
        terms: Option<String>,
        /// How long the token works, in seconds.
        #[serde(default)]
        ttl_secs: Option<u64>,
        /// Where the other node should dial; default: the listeners.
        #[serde(default)]
        endpoints: Vec<String>,
    },
    /// Use an invite token: make the agreement and the link.
    Accept {
        /// The `umbra1…` token.
        token: String,
    },
    /// The circuit in use for an address.
    Path {
        /// The destination address.
        address: std::net::Ipv6Addr,
    },
    /// Every agreement.
    Agreements,
    /// End an agreement.
    Revoke {
        /// Its id, from `agreements`.
        id: i64,
    },
    /// Propose an agreement to a node over the overlay.
    Propose {
        /// The node: its overlay address (or one in its /64), or its public
        /// key in hex.
        to: String,
        /// Terms like `50GiB/30d`; default: the default terms.
        #[serde(default)]
        terms: Option<String>,
        /// Words for the other operator.
        #[serde(default)]
        note: Option<String>,
        /// How long the proposal may be accepted, in seconds.
        #[serde(default)]
        ttl_secs: Option<u64>,
        /// How long to wait for the receiving node's first answer, in
        /// seconds (0: return once sent).
        #[serde(default)]
        wait_secs: Option<u64>,
    },
    /// Accept a proposal made to this node.
    AcceptProposal {
        /// Its id, from `agreements`.
        id: i64,
    },
    /// Reject a proposal made to this node.
    RejectProposal {
        /// Its id, from `agreements`.
        id: i64,
    },
}

/// A response on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// One sentence saying what went wrong, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: Value) -> Response {
        Response {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A refusal saying `msg`.
    pub fn error(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(msg.into()),
        }
    }
}

/// Parses one request line. Errors are sentences for the client.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err(
            "empty request: send one JSON object per line, like {\"cmd\":\"status\"}".into(),
        );
    }
    serde_json::from_str::<Request>(line).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        assert_eq!(parse_request("{\"cmd\":\"status\"}\n"), Ok(Request::Status));
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        for bad in ["", "{", "null", "[]", "{\"cmd\":\"nope\"}", "\u{0}\u{1}"] {
            let err = parse_request(bad).expect_err(bad);
            assert!(!err.is_empty());
        }
    }

    // Arbitrary lines are the fuzz target's and its twins'
    // (config/tests/fuzz_twins.rs).
    proptest::proptest! {
        /// A known command with a field of any type parses or is refused
        /// as a bad request.
        #[test]
        fn known_commands_with_odd_fields_are_refused_or_parsed(
            cmd in proptest::sample::select(vec![
                "status", "peers", "invite", "accept", "path", "agreements", "revoke",
                "propose", "accept_proposal", "reject_proposal",
            ]),
            field in proptest::sample::select(vec![
                "ttl_secs", "wait_secs", "id", "terms", "note", "to", "token", "address",
                "endpoints",
            ]),
            value in proptest::sample::select(vec![
                "-1", "0", "1e300", "18446744073709551616", "\"x\"", "null", "[]", "{}",
                "[\"a\",1]", "true", "\"602::1\"",
            ]),
        ) {
            let line = format!("{{\"cmd\":\"{cmd}\",\"{field}\":{value}}}");
            match parse_request(&line) {
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(e.starts_with("bad request"), "{}", e),
            }
        }
    }
}
