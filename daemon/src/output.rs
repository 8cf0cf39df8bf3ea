//! What commands print: small aligned tables for people, one JSON document
//! for scripts (`docs/cli.md, "Output"`).

#![allow(clippy::print_stdout)] // this module is the CLI's output

use std::io::Write;

use anyhow::Result;
use serde_json::Value;

/// Prints one JSON document on stdout.
pub(crate) fn json(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Prints one line on stdout.
pub(crate) fn line(s: &str) -> Result<()> {
    writeln!(std::io::stdout().lock(), "{s}")?;
    Ok(())
}

/// Prints `key: value` rows with the values aligned.
pub(crate) fn kv(rows: &[(&str, &str)]) -> Result<()> {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (k, v) in rows {
        writeln!(out, "{:width$}  {v}", format!("{k}:"), width = width + 1)?;
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints `umbra status` for people.
pub(crate) fn status(s: &Value) -> Result<()> {
    let tun = match &s["tun"] {
        Value::Null => "disabled".to_string(),
        t => format!("{} (mtu {})", text(&t["name"]), text(&t["mtu"])),
    };
    let listeners = match s["listeners"].as_array() {
        Some(l) if !l.is_empty() => l.iter().map(text).collect::<Vec<_>>().join(", "),
        _ => "none".into(),
    };
    let links = format!(
        "{} up / {} total",
        text(&s["links_up"]),
        text(&s["links_total"])
    );
    let uptime = format_duration(s["uptime_secs"].as_u64().unwrap_or(0));
    let nat = nat_line(&s["nat"]);
    kv(&[
        ("address", &text(&s["address"])),
        ("name", &text(&s["name"])),
        ("subnet", &text(&s["subnet"])),
        ("public key", &text(&s["public_key"])),
        ("uptime", &uptime),
        ("listeners", &listeners),
        ("links", &links),
        ("circuits", &text(&s["circuits"])),
        ("tun", &tun),
        ("nat", &nat),
    ])?;
    for w in s["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", text(w));
    }
    Ok(())
}

/// `status`'s `nat` in one line: the mapping, then the external endpoints
/// peers saw, then the port mapping at the gateway if one is held.
fn nat_line(nat: &Value) -> String {
    let line = nat_class_line(nat);
    match &nat["port_mapping"] {
        Value::Object(m) => format!(
            "{line}; port mapped at {} by {}",
            m.get("external").map_or_else(|| "-".into(), text),
            m.get("protocol").map_or_else(|| "-".into(), text)
        ),
        _ => line,
    }
}

/// The mapping and the external endpoints peers saw.
fn nat_class_line(nat: &Value) -> String {
    let mapping = match &nat["mapping"] {
        Value::Null => "unknown".to_string(),
        m => text(m),
    };
    let external: Vec<String> = nat["external"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    if external.is_empty() {
        mapping
    } else {
        format!("{mapping} (seen as {})", external.join(", "))
    }
}

/// Prints rows as an aligned table with a header.
fn table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|s| s.to_string()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r.clone()))?;
    }
    Ok(())
}

fn short(key: &Value) -> String {
    text(key).chars().take(16).collect()
}

/// Table rows from a JSON array: one cell per field of `columns`; key
/// fields are shortened to 16 hex digits.
fn rows(v: &Value, columns: &[&str]) -> Vec<Vec<String>> {
    let cell = |item: &Value, field: &str| {
        if field.ends_with("key") || field == "via" {
            short(&item[field])
        } else {
            text(&item[field])
        }
    };
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|item| columns.iter().map(|f| cell(item, f)).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// Prints `umbra peers` for people.
pub(crate) fn peers(v: &Value) -> Result<()> {
    let rows = rows(
        v,
        &[
            "key",
            "address",
            "state",
            "kind",
            "via",
            "endpoint",
            "observed",
            "bytes_in",
            "bytes_out",
        ],
    );
    if rows.is_empty() {
        return line(
            "no peers: link one with `umbra invite` / `umbra accept`, or a [[peer]] in the config",
        );
    }
    table(
        &[
            "KEY", "ADDRESS", "STATE", "KIND", "VIA", "ENDPOINT", "OBSERVED", "IN", "OUT",
        ],
        &rows,
    )
}

/// Prints `umbra path` for people.
pub(crate) fn path(v: &Value) -> Result<()> {
    line(&format!(
        "circuit {} to {} ({})",
        text(&v["circuit"]),
        text(&v["destination"]["address"]),
        if v["built"] == true {
            "built"
        } else {
            "building"
        }
    ))?;
    for (i, hop) in v["hops"].as_array().into_iter().flatten().enumerate() {
        line(&format!(
            "  {}. {}  {}\n       sees {} and {}\n       {}",
            i + 1,
            text(&hop["key"]).get(..16).unwrap_or_default(),
            text(&hop["address"]),
            text(&hop["sees"][0]["address"]),
            if hop["sees"][1].is_null() {
                "nothing after it".to_string()
            } else {
                text(&hop["sees"][1]["address"])
            },
            text(&hop["role"]),
        ))?;
    }
    Ok(())
}

/// Prints `umbra agreements` for people: agreements and proposals, by id.
pub(crate) fn agreements(v: &Value) -> Result<()> {
    let mut rows = rows(
        v,
        &["id", "peer_key", "peer_address", "state", "terms", "origin"],
    );
    if rows.is_empty() {
        return line(
            "no agreements yet: `umbra invite` on one node, `umbra accept TOKEN` on the other \
             (or `umbra propose ADDRESS`)",
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for (row, item) in rows.iter_mut().zip(v.as_array().into_iter().flatten()) {
        row.extend(ledger_columns(&item["ledger"], now));
        row.push(proposal_detail(item, now));
    }
    table(
        &[
            "ID", "PEER", "ADDRESS", "STATE", "TERMS", "ORIGIN", "FOR THEM", "BY THEM", "BALANCE",
            "STANDING", "CHECKED", "PROPOSAL",
        ],
        &rows,
    )
}

/// An agreement's ledger in `umbra agreements`: relayed for the peer and by
/// it this period, the balance (positive: the peer owes us), the state
/// against the thresholds, and the last check of the peer's counts. Empty
/// for a row without a ledger.
fn ledger_columns(l: &Value, now_unix: u64) -> [String; 5] {
    if l.is_null() {
        return Default::default();
    }
    let bytes = |k: &str| l[k].as_i64().map_or_else(String::new, format_bytes);
    let balance = match l["balance"].as_i64() {
        Some(b) if b > 0 => format!("+{}", format_bytes(b)),
        Some(b) => format_bytes(b),
        None => String::new(),
    };
    let standing = l["state"].as_str().unwrap_or_default().replace('_', " ");
    let checked = match (l["last_check_unix"].as_u64(), l["agreed"].as_bool()) {
        (Some(at), Some(agreed)) => {
            let ago = format_duration(now_unix.saturating_sub(at));
            let peer = match l["peer_agreed"].as_bool() {
                Some(false) => ", the peer disagrees",
                _ => "",
            };
            if agreed {
                format!("agreed {ago} ago{peer}")
            } else {
                format!("MISMATCH {ago} ago{peer}")
            }
        }
        _ => "not yet".into(),
    };
    [
        bytes("relayed_for_peer"),
        bytes("relayed_by_peer"),
        balance,
        standing,
        checked,
    ]
}

/// `1.5GiB`, `12KiB`, `-300B`: bytes with a binary unit and one decimal.
fn format_bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n.unsigned_abs() as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    let sign = if n < 0 { "-" } else { "" };
    if unit == 0 {
        format!("{sign}{v:.0}{}", units[unit])
    } else {
        format!("{sign}{v:.1}{}", units[unit])
    }
}

/// What the PROPOSAL column says of a proposal row (empty for agreements):
/// its direction, what became of it, and its note.
fn proposal_detail(p: &Value, now_unix: u64) -> String {
    if p["kind"] != "proposal" {
        return String::new();
    }
    let mut parts = vec![text(&p["direction"])];
    let expires = p["expiry_unix"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(now_unix);
    match p["state"].as_str().unwrap_or_default() {
        "pending" => {
            if p["direction"] == "outgoing" {
                parts.push(if p["delivered"] == true {
                    "delivered".into()
                } else {
                    "not confirmed yet".into()
                });
            }
            parts.push(format!("expires in {}", format_duration(expires)));
        }
        "accepted" => parts.push(format!("agreement {}", text(&p["agreement_id"]))),
        "refused" => parts.push(text(&p["reason_text"])),
        _ => {}
    }
    let mut out = parts.join(", ");
    if let Some(note) = p["note"].as_str().filter(|n| !n.is_empty()) {
        out.push_str(&format!(": \"{note}\""));
    }
    out
}

/// Prints what `umbra propose` did.
pub(crate) fn proposal_sent(p: &Value) -> Result<()> {
    let whom = format!("{} ({})", text(&p["peer_address"]), short(&p["peer_key"]));
    let id = text(&p["id"]);
    let said = match p["state"].as_str().unwrap_or_default() {
        "pending" if p["delivered"] == true => format!(
            "its node holds it for its operator; `umbra agreements` shows the answer (ID {id})"
        ),
        "pending" => format!(
            "its node has not confirmed it yet; it stays pending (ID {id}) and counts if it \
             arrives: `umbra agreements` shows the answer"
        ),
        "refused" => format!("refused: {}", text(&p["reason_text"])),
        other => format!("{other} (ID {id})"),
    };
    line(&format!(
        "proposal {id} sent to {whom}, terms {}: {said}",
        text(&p["terms"])
    ))
}

/// `3d 4h`, `5m 2s`: the two largest units.
fn format_duration(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let parts: Vec<String> = units
        .iter()
        .scan(secs, |rest, &(size, name)| {
            let n = *rest / size;
            *rest %= size;
            Some((n, name))
        })
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .map(|(n, name)| format!("{n}{name}"))
        .collect();
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::{format_bytes, format_duration, ledger_columns, nat_line, proposal_detail};
    use serde_json::json;

    #[test]
    fn a_ledger_shows_what_each_side_relayed_the_balance_and_the_last_check() {
        let l = json!({"relayed_for_peer": 1_572_864, "relayed_by_peer": 0, "balance": 1_572_864,
            "state": "low_priority", "agreed": true, "peer_agreed": false, "last_check_unix": 990});
        assert_eq!(
            ledger_columns(&l, 1000),
            [
                "1.5MiB".to_string(),
                "0B".into(),
                "+1.5MiB".into(),
                "low priority".into(),
                "agreed 10s ago, the peer disagrees".into()
            ]
        );
        let fresh = json!({"relayed_for_peer": 0, "relayed_by_peer": 2400, "balance": -2400,
            "state": "ok", "agreed": null, "last_check_unix": null});
        assert_eq!(ledger_columns(&fresh, 1000)[2], "-2.3KiB");
        assert_eq!(ledger_columns(&fresh, 1000)[4], "not yet");
        assert_eq!(ledger_columns(&json!(null), 1000), <[String; 5]>::default());
        assert_eq!(format_bytes(i64::MIN), "-8.0EiB");
    }

    #[test]
    fn a_proposal_row_says_which_way_what_became_of_it_and_the_note() {
        let incoming = json!({"kind": "proposal", "direction": "incoming", "state": "pending",
            "expiry_unix": 1000 + 7 * 86_400, "note": "hello from A"});
        assert_eq!(
            proposal_detail(&incoming, 1000),
            "incoming, expires in 7d 0h: \"hello from A\""
        );
        let outgoing = json!({"kind": "proposal", "direction": "outgoing", "state": "pending",
            "delivered": false, "expiry_unix": 4600, "note": ""});
        assert_eq!(
            proposal_detail(&outgoing, 1000),
            "outgoing, not confirmed yet, expires in 1h 0m"
        );
        let refused = json!({"kind": "proposal", "direction": "outgoing", "state": "refused",
            "reason_text": "that node takes no proposals", "note": ""});
        assert_eq!(
            proposal_detail(&refused, 1000),
            "outgoing, that node takes no proposals"
        );
        let accepted = json!({"kind": "proposal", "direction": "incoming", "state": "accepted",
            "agreement_id": 5, "note": ""});
        assert_eq!(proposal_detail(&accepted, 1000), "incoming, agreement 5");
        assert_eq!(proposal_detail(&json!({"kind": "agreement"}), 1000), "");
    }

    #[test]
    fn nat_line_adds_the_port_mapping() {
        let nat = json!({"mapping": "endpoint-independent", "external": ["198.18.21.2:443"], "port_mapping": null});
        assert_eq!(
            nat_line(&nat),
            "endpoint-independent (seen as 198.18.21.2:443)"
        );
        let nat = json!({"mapping": "unknown", "external": [], "port_mapping": {
            "protocol": "pcp", "external": "198.18.21.2:443", "lifetime_secs": 20, "renews_in_secs": 9}});
        assert_eq!(
            nat_line(&nat),
            "unknown; port mapped at 198.18.21.2:443 by pcp"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(61), "1m 1s");
        assert_eq!(format_duration(90_000), "1d 1h");
    }
}
