//! What commands print: small aligned tables for people, one JSON document
//! for scripts (STYLE.md).

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
    let links = format!("{} up / {} total", text(&s["links_up"]), text(&s["links_total"]));
    let uptime = format_duration(s["uptime_secs"].as_u64().unwrap_or(0));
    kv(&[
        ("address", &text(&s["address"])),
        ("subnet", &text(&s["subnet"])),
        ("public key", &text(&s["public_key"])),
        ("uptime", &uptime),
        ("listeners", &listeners),
        ("links", &links),
        ("circuits", &text(&s["circuits"])),
        ("tun", &tun),
    ])
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
    use super::format_duration;

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(61), "1m 1s");
        assert_eq!(format_duration(90_000), "1d 1h");
    }
}
