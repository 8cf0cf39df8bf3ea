//! The rules a parsed config must follow. Each error names the file, the key as written
//! in the file, the value, and the reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::{Reporter, Scope, quote};
use crate::{Config, ConfigError, MAX_MTU, MAX_PADDING_RATE, MAX_TUN_NAME_LEN, MIN_MTU};

/// Why an MTU is out of range, or `None` if it is fine.
pub(crate) fn mtu_problem(mtu: i64) -> Option<String> {
    if mtu > i64::from(MAX_MTU) {
        Some(format!("is above the maximum {MAX_MTU}"))
    } else if mtu < i64::from(MIN_MTU) {
        Some(format!(
            "is below the minimum {MIN_MTU}, the smallest MTU IPv6 allows"
        ))
    } else {
        None
    }
}

impl Config {
    /// Checks the rules that types alone do not: ranges, names, keys that need or exclude
    /// each other, and duplicate peers. `origin` is the file name used in error messages.
    ///
    /// [`Config::from_toml`] and [`Config::load`] call this; call it yourself on a config
    /// built in code.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let r = Reporter { path: origin };
        let top = Scope::top();

        for (name, path) in [
            ("state_dir", &self.state_dir),
            ("control_socket", &self.control_socket),
        ] {
            if !path.is_absolute() {
                return Err(r.invalid(
                    &top.key(name),
                    format!(
                        "{name} = {} is not an absolute path; it must start with /",
                        quote(&path.to_string_lossy())
                    ),
                ));
            }
        }

        if self.address_prefix & 1 != 0 {
            let p = self.address_prefix;
            return Err(r.invalid(
                &top.key("address_prefix"),
                format!(
                    "address_prefix = {p:#04x} is odd; it must be even, because its low bit \
                     is the subnet bit ({p:#04x} | 1 is the subnet prefix), such as {:#04x}",
                    p & !1
                ),
            ));
        }

        self.validate_tun(&r)?;
        self.validate_listen(&r)?;
        self.validate_cover(&r)?;
        self.validate_peers(&r)?;
        self.validate_routes(&r)?;

        if self.padding.rate > MAX_PADDING_RATE {
            return Err(r.invalid(
                &Scope::table("padding").key("rate"),
                format!(
                    "[padding] rate = \"{}\" is above the maximum {MAX_PADDING_RATE}; padding is \
                     sent one cell at a time, so it cannot be paced faster",
                    self.padding.rate
                ),
            ));
        }

        self.validate_names(&r)?;
        self.validate_apps(&r)?;

        loopback_only(
            &r,
            "metrics",
            self.metrics.listen,
            "metrics are for local scraping",
            "127.0.0.1:9477",
        )
    }

    /// `[dns]` and `[names]`: a loopback responder, well-formed services,
    /// TXT owners that are DNS labels with strings DNS can carry, petnames
    /// that are DNS labels and never look like a key's name.
    fn validate_names(&self, r: &Reporter<'_>) -> Result<(), ConfigError> {
        use crate::{MAX_TXT_RECORDS, MAX_TXT_STRING_LEN};
        loopback_only(
            r,
            "dns",
            self.dns.listen,
            "the responder answers this host's programs only",
            "127.0.0.1:53",
        )?;
        for service in self.dns.srv.keys() {
            if !is_service(service) {
                return Err(r.invalid(
                    &Scope::table("dns.srv").key(service),
                    format!(
                        "[dns.srv] {} is not a service: write _name._tcp or _name._udp, such as \
                         \"_xmpp-server._tcp\"",
                        crate::error::quote(service)
                    ),
                ));
            }
        }
        for (owner, texts) in &self.dns.txt {
            let key = Scope::table("dns.txt").key(owner);
            let shown = quote(owner);
            if let Some(why) = txt_owner_problem(owner) {
                return Err(r.invalid(&key, format!("[dns.txt] {shown} {why}")));
            }
            if texts.is_empty() || texts.len() > MAX_TXT_RECORDS {
                return Err(r.invalid(
                    &key,
                    format!(
                        "[dns.txt] {shown} has {} strings; give 1 to {MAX_TXT_RECORDS}, one a record",
                        texts.len()
                    ),
                ));
            }
            if let Some((i, text)) = texts
                .iter()
                .enumerate()
                .find(|(_, t)| t.len() > MAX_TXT_STRING_LEN)
            {
                return Err(r.invalid(
                    &key,
                    format!(
                        "[dns.txt] {shown} string {} is {} bytes long; a TXT string holds at most \
                         {MAX_TXT_STRING_LEN}, so split it into several strings",
                        i + 1,
                        text.len()
                    ),
                ));
            }
        }
        for label in self.names.keys() {
            if let Some(why) = petname_problem(label) {
                return Err(r.invalid(
                    &Scope::table("names").key(label),
                    format!("[names] {} {why}", crate::error::quote(label)),
                ));
            }
        }
        Ok(())
    }

    /// `[socks]` and `[[expose]]`: a loopback proxy, and each exposed port
    /// once, outside the stack's own ports, forwarded to a real address.
    fn validate_apps(&self, r: &Reporter<'_>) -> Result<(), ConfigError> {
        loopback_only(
            r,
            "socks",
            self.socks.listen,
            "the proxy serves this host's programs only",
            "127.0.0.1:1080",
        )?;
        for (i, e) in self.expose.iter().enumerate() {
            let scope = Scope::entry("expose", i + 1);
            let (port, to) = (scope.key("port"), scope.key("to"));
            let (start, end) = (crate::SOCKS_PORTS.start(), crate::SOCKS_PORTS.end());
            if crate::SOCKS_PORTS.contains(&e.port) {
                return Err(r.invalid(
                    &port,
                    format!(
                        "{} = {} collides with the ports the SOCKS proxy connects from \
                         ({start} to {end}); expose a port below {start}",
                        port.shown, e.port
                    ),
                ));
            }
            if let Some(j) = self.expose.iter().take(i).position(|o| o.port == e.port) {
                return Err(r.invalid(
                    &port,
                    format!(
                        "{} = {} is exposed by [[expose]] #{} already; each overlay port goes \
                         to one local socket",
                        port.shown,
                        e.port,
                        j + 1
                    ),
                ));
            }
            if e.to.ip().is_unspecified() || e.to.port() == 0 {
                return Err(r.invalid(
                    &to,
                    format!(
                        "{} = \"{}\" is not an address to connect to; write the local socket \
                         the service listens on, such as \"127.0.0.1:{}\"",
                        to.shown, e.to, e.port
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_tun(&self, r: &Reporter<'_>) -> Result<(), ConfigError> {
        let scope = Scope::table("tun");
        let key = scope.key("mtu");
        if let Some(reason) = mtu_problem(i64::from(self.tun.mtu)) {
            return Err(r.invalid(&key, format!("{} = {} {reason}", key.shown, self.tun.mtu)));
        }

        let key = scope.key("name");
        let name = &self.tun.name;
        let problem = if name.is_empty() {
            Some("is empty; the interface needs a name, such as \"umbra0\"".to_owned())
        } else if name.len() > MAX_TUN_NAME_LEN {
            Some(format!(
                "is {} bytes long; Linux interface names are at most {MAX_TUN_NAME_LEN} bytes",
                name.len()
            ))
        } else if name == "." || name == ".." {
            Some("is not a name Linux accepts for an interface".to_owned())
        } else {
            name.chars()
                .find(|&c| c == '/' || c == ':' || c.is_whitespace())
                .map(|c| {
                    format!("contains {c:?}; interface names cannot contain '/', ':' or whitespace")
                })
        };
        if let Some(problem) = problem {
            return Err(r.invalid(&key, format!("{} = {} {problem}", key.shown, quote(name))));
        }
        Ok(())
    }

    fn validate_listen(&self, r: &Reporter<'_>) -> Result<(), ConfigError> {
        let scope = Scope::table("listen");
        let listen = &self.listen;

        let mut seen: Vec<SocketAddr> = Vec::with_capacity(listen.https.len());
        for addr in &listen.https {
            if seen.contains(addr) {
                return Err(r.invalid(
                    &scope.key("https"),
                    format!("[listen] https lists \"{addr}\" twice; list each address once"),
                ));
            }
            seen.push(*addr);
        }

        for (name, path) in [("cert", &listen.cert), ("key", &listen.key)] {
            if set_but_empty(path) {
                return Err(r.invalid(
                    &scope.key(name),
                    format!("[listen] {name} is empty; name a PEM file, or remove the key"),
                ));
            }
        }
        match (&listen.cert, &listen.key) {
            (Some(_), None) => {
                return Err(r.invalid(
                    &scope.key("key"),
                    "[listen] cert is set but key is not; a certificate from files needs both \
                     cert and key"
                        .to_owned(),
                ));
            }
            (None, Some(_)) => {
                return Err(r.invalid(
                    &scope.key("cert"),
                    "[listen] key is set but cert is not; a certificate from files needs both \
                     cert and key"
                        .to_owned(),
                ));
            }
            _ => {}
        }

        if listen.acme {
            if listen.server_name.is_empty() {
                return Err(r.invalid(
                    &scope.key("server_name"),
                    "[listen] acme = true needs server_name, the domain to get a certificate for"
                        .to_owned(),
                ));
            }
            if listen.cert.is_some() {
                return Err(r.invalid(
                    &scope.key("acme"),
                    "[listen] acme = true and cert/key are two certificate sources; choose one"
                        .to_owned(),
                ));
            }
        }

        let directory = &listen.acme_directory;
        let host = directory.strip_prefix("https://").unwrap_or_default();
        if host.is_empty() || host.starts_with('/') || directory.chars().any(char::is_whitespace) {
            return Err(r.invalid(
                &scope.key("acme_directory"),
                format!(
                    "[listen] acme_directory = {} is not an https:// URL; write the ACME \
                     server's directory URL, such as \"{}\"",
                    quote(directory),
                    crate::DEFAULT_ACME_DIRECTORY
                ),
            ));
        }
        if let Some(email) = &listen.acme_email {
            let bad = has_space_or_control(email)
                || email
                    .split_once('@')
                    .is_none_or(|(a, b)| a.is_empty() || b.is_empty());
            if bad {
                return Err(r.invalid(
                    &scope.key("acme_email"),
                    format!(
                        "[listen] acme_email = {} is not an e-mail address, such as \
                         \"ops@example.org\"; or remove the key",
                        quote(email)
                    ),
                ));
            }
        }
        if set_but_empty(&listen.acme_ca) {
            return Err(r.invalid(
                &scope.key("acme_ca"),
                "[listen] acme_ca is empty; name a PEM file of CA certificates, or remove the key"
                    .to_owned(),
            ));
        }

        if has_space_or_control(&listen.server_name) {
            return Err(r.invalid(
                &scope.key("server_name"),
                format!(
                    "[listen] server_name = {} contains whitespace; it must be a domain name",
                    quote(&listen.server_name)
                ),
            ));
        }
        Ok(())
    }

    fn validate_cover(&self, r: &Reporter<'_>) -> Result<(), ConfigError> {
        let scope = Scope::table("cover");
        let cover = &self.cover;
        if cover.root.is_some() && cover.upstream.is_some() {
            return Err(r.invalid(
                &scope.key("upstream"),
                "[cover] root and upstream are both set; the cover site is either a directory \
                 (root) or a server to proxy (upstream), so set only one"
                    .to_owned(),
            ));
        }
        if set_but_empty(&cover.root) {
            return Err(r.invalid(
                &scope.key("root"),
                "[cover] root is empty; name a directory, or remove the key".to_owned(),
            ));
        }
        if let Some(upstream) = &cover.upstream {
            let host = upstream.strip_prefix("http://").unwrap_or_default();
            if host.is_empty() || has_space_or_control(host) {
                return Err(r.invalid(
                    &scope.key("upstream"),
                    format!(
                        "[cover] upstream = {} must start with http:// and name a server, such as \
                         \"http://127.0.0.1:8080\" (the upstream is a local plain-HTTP server)",
                        quote(upstream)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[[route]]`: each destination once, and addresses inside this node's
    /// overlay (`address_prefix`: its addresses and their subnets).
    fn validate_routes(&self, r: &Reporter<'_>) -> Result<(), ConfigError> {
        for (i, route) in self.routes.iter().enumerate() {
            let scope = Scope::entry("route", i + 1);
            let key = scope.key("to");
            if let Some(first) = self.routes[..i].iter().position(|o| o.to == route.to) {
                return Err(r.invalid(
                    &key,
                    format!(
                        "{} = \"{}\" repeats the destination of [[route]] #{}; list each \
                         destination once",
                        key.shown,
                        route.to,
                        first + 1
                    ),
                ));
            }
            if let crate::RouteTarget::Address(a) = route.to
                && a.octets()[0] & 0xfe != self.address_prefix & 0xfe
            {
                return Err(r.invalid(
                    &key,
                    format!(
                        "{} = \"{a}\" is not an overlay address: with address_prefix = {:#04x} \
                         they start with {:x}:: or {:x}::",
                        key.shown,
                        self.address_prefix,
                        u16::from(self.address_prefix & 0xfe) << 8,
                        u16::from(self.address_prefix | 1) << 8,
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_peers(&self, r: &Reporter<'_>) -> Result<(), ConfigError> {
        let mut first_with_key = HashMap::with_capacity(self.peers.len());
        for (i, peer) in self.peers.iter().enumerate() {
            let scope = Scope::entry("peer", i + 1);

            if let Some(first) = first_with_key.insert(peer.key, i + 1) {
                let key = scope.key("key");
                return Err(r.invalid(
                    &key,
                    format!(
                        "{} = \"{}\" repeats the key of [[peer]] #{first}; list each peer once",
                        key.shown, peer.key
                    ),
                ));
            }

            // No endpoint means: reach this peer by NAT traversal
            // (docs/architecture.md, "NAT traversal").
            let key = scope.key("endpoints");
            for endpoint in &peer.endpoints {
                if let Some(problem) = endpoint_problem(endpoint) {
                    return Err(r.invalid(
                        &key,
                        format!(
                            "{} entry {} {problem}; write host:port, such as \"198.18.0.1:443\", \
                             \"[2001:db8::1]:443\" or \"relay.example.org:443\"",
                            key.shown,
                            quote(endpoint)
                        ),
                    ));
                }
            }

            if peer.terms.bytes_per_period == 0 || peer.terms.period_secs == 0 {
                let key = scope.key("terms");
                return Err(r.invalid(
                    &key,
                    format!(
                        "{} = \"{}\" has a zero amount or period; both must be above zero",
                        key.shown, peer.terms
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[table] listen`, when set, must be a loopback address: `why` says whom
/// it serves, `example` is one to write instead.
fn loopback_only(
    r: &Reporter<'_>,
    table: &str,
    listen: Option<SocketAddr>,
    why: &str,
    example: &str,
) -> Result<(), ConfigError> {
    match listen {
        Some(addr) if !addr.ip().is_loopback() => Err(r.invalid(
            &Scope::table(table).key("listen"),
            format!(
                "[{table}] listen = \"{addr}\" is not a loopback address; {why}, so use \
                 127.0.0.1 or [::1], such as \"{example}\""
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether an optional path is set to the empty string (`key = ""`).
fn set_but_empty(path: &Option<PathBuf>) -> bool {
    path.as_ref().is_some_and(|p| p.as_os_str().is_empty())
}

/// Whether `s` contains whitespace or a control character.
fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Why `endpoint` is not `host:port`, or `None` if it is.
fn endpoint_problem(endpoint: &str) -> Option<&'static str> {
    if let Ok(addr) = endpoint.parse::<SocketAddr>() {
        return (addr.port() == 0).then_some("has port 0");
    }
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Some("has no port");
    };
    if host.is_empty() {
        return Some("has no host");
    }
    if host.contains(':') || host.starts_with('[') {
        return Some("is not a valid address (an IPv6 address goes in brackets)");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Some("has a host that is not an IP address or a DNS name");
    }
    match port.parse::<u16>() {
        Ok(0) => Some("has port 0"),
        Ok(_) => None,
        Err(_) => Some("has a port that is not a number from 1 to 65535"),
    }
}

/// Length of a node's own name label (its key and checksum in base32): a
/// petname may not have it, so the two never collide.
pub const KEY_LABEL_LEN: usize = 55;

/// Why `label` cannot be a petname, if it cannot: it must be a DNS label of
/// 1 to 63 lowercase letters, digits and hyphens, not starting or ending with
/// a hyphen, and not [`KEY_LABEL_LEN`] long.
pub(crate) fn petname_problem(label: &str) -> Option<&'static str> {
    let b = label.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Some("must be 1 to 63 characters");
    }
    if b.len() == KEY_LABEL_LEN {
        return Some("has the length of a node's own name (55); pick a shorter or longer one");
    }
    if !b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Some("may hold only lowercase letters, digits and hyphens");
    }
    if b.first() == Some(&b'-') || b.last() == Some(&b'-') {
        return Some("may not start or end with a hyphen");
    }
    None
}

/// Why `owner` cannot own `[dns] txt` records below every name, if it
/// cannot: dot-separated labels of 1 to 63 lowercase letters, digits,
/// hyphens and underscores (`_xmppconnect`), none starting or ending with a
/// hyphen, at most [`crate::MAX_TXT_OWNER_LEN`] characters in all.
fn txt_owner_problem(owner: &str) -> Option<String> {
    use crate::MAX_TXT_OWNER_LEN;
    if owner.len() > MAX_TXT_OWNER_LEN {
        return Some(format!(
            "is {} characters long; an owner is at most {MAX_TXT_OWNER_LEN}",
            owner.len()
        ));
    }
    for label in owner.split('.') {
        let b = label.as_bytes();
        let why = if b.is_empty() || b.len() > 63 {
            "has a label that is not 1 to 63 characters long"
        } else if !b
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        {
            "may hold only lowercase letters, digits, hyphens, underscores and dots"
        } else if b.first() == Some(&b'-') || b.last() == Some(&b'-') {
            "has a label that starts or ends with a hyphen"
        } else {
            continue;
        };
        return Some(format!(
            "{why}; write the labels below the name, such as \"_xmppconnect\""
        ));
    }
    None
}

/// Whether `s` is `_name._tcp` or `_name._udp` with a DNS label for a name.
fn is_service(s: &str) -> bool {
    let Some((name, proto)) = s.split_once('.') else {
        return false;
    };
    let Some(name) = name.strip_prefix('_') else {
        return false;
    };
    matches!(proto, "_tcp" | "_udp") && petname_problem(name).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_addresses_and_names() {
        for ok in [
            "198.18.0.1:443",
            "[2001:db8::1]:443",
            "relay.example.org:443",
            "localhost:8443",
        ] {
            assert_eq!(endpoint_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("198.18.0.1", "no port"),
            (":443", "no host"),
            ("2001:db8::1:443", "brackets"),
            ("[2001:db8::1]", "brackets"),
            ("host:99999", "not a number"),
            ("host:https", "not a number"),
            ("host:0", "port 0"),
            ("1.2.3.4:0", "port 0"),
            ("bad host:443", "not an IP address or a DNS name"),
        ] {
            let problem = endpoint_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }
}
