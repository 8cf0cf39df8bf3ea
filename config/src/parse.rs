//! From TOML text to a [`Config`], with every type error naming its key.
//!
//! Each table is a serde struct with `deny_unknown_fields`, so the schema's keys are
//! written once. Its fields are left as raw TOML values and converted here, because
//! serde's own type errors do not say which key they are about. Each table is
//! deserialized on its own for the same reason: an unknown key is reported with its table.
//! The rules that need the whole config live in `validate.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::error::{Key, QUOTE_MAX_CHARS, Reporter, Scope, escape_controls, one_line, quote};
use crate::{
    Config, ConfigError, ExposeConfig, PeerConfig, PublicKey, RouteConfig, RouteTarget, Terms,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    state_dir: Option<Value>,
    control_socket: Option<Value>,
    address_prefix: Option<Value>,
    anonymity: Option<Value>,
    threads: Option<Value>,
    tun: Option<Value>,
    listen: Option<Value>,
    cover: Option<Value>,
    home: Option<Value>,
    peer: Option<Value>,
    route: Option<Value>,
    metrics: Option<Value>,
    padding: Option<Value>,
    nat: Option<Value>,
    agreements: Option<Value>,
    dns: Option<Value>,
    names: Option<Value>,
    socks: Option<Value>,
    expose: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocks {
    listen: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpose {
    port: Option<Value>,
    to: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    listen: Option<Value>,
    srv: Option<Value>,
    txt: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTun {
    enabled: Option<Value>,
    name: Option<Value>,
    mtu: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    https: Option<Value>,
    server_name: Option<Value>,
    acme: Option<Value>,
    acme_directory: Option<Value>,
    acme_email: Option<Value>,
    acme_ca: Option<Value>,
    cert: Option<Value>,
    key: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCover {
    root: Option<Value>,
    upstream: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHome {
    key: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    key: Option<Value>,
    endpoints: Option<Value>,
    terms: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    to: Option<Value>,
    anonymity: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPadding {
    rate: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNat {
    port_mapping: Option<Value>,
    relay: Option<Value>,
    relay_rate: Option<Value>,
    relay_total: Option<Value>,
    retry_direct: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgreements {
    proposals: Option<Value>,
}

/// Reads TOML values for [`Reporter`], each error naming its key.
impl Reporter<'_> {
    fn anonymity(&self, key: &Key, v: Value) -> Result<crate::Anonymity, ConfigError> {
        let allowed = r#"one of "fast", "balanced", "strong""#;
        let Value::String(text) = v else {
            return Err(self.wrong_type(key, allowed, &v));
        };
        text.parse().map_err(|_| {
            self.invalid(
                key,
                format!("{} = {} is not {allowed}", key.shown, quote(&text)),
            )
        })
    }

    fn wrong_type(&self, key: &Key, expected: &str, found: &Value) -> ConfigError {
        self.invalid(
            key,
            format!(
                "{} must be {expected}, found {}",
                key.shown,
                describe(found)
            ),
        )
    }

    fn syntax(&self, text: &str, error: &toml::de::Error) -> ConfigError {
        let mut reason = one_line(error.message());
        match error.span() {
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                // toml does not say which key; the span covers it.
                let snippet = text.get(span).unwrap_or_default().trim();
                if reason == "duplicate key"
                    && !snippet.is_empty()
                    && snippet.chars().count() <= QUOTE_MAX_CHARS
                    && !snippet.contains('\n')
                {
                    reason = format!(
                        "duplicate key `{}`; a key or table may be written only once",
                        escape_controls(snippet)
                    );
                }
                ConfigError::Syntax {
                    path: self.path.to_owned(),
                    line,
                    column,
                    reason,
                }
            }
            None => ConfigError::Invalid {
                path: self.path.to_owned(),
                key: String::new(),
                message: reason,
            },
        }
    }

    /// Deserializes one table, reporting an unknown key with its table.
    fn table<T: DeserializeOwned>(&self, scope: &Scope, table: Table) -> Result<T, ConfigError> {
        table.try_into::<T>().map_err(|e| {
            let message = one_line(e.message());
            match unknown_field(e.message()) {
                Some((key, expected)) => ConfigError::UnknownKey {
                    path: self.path.to_owned(),
                    table: scope.shown.clone(),
                    key: escape_controls(&key),
                    expected,
                },
                None => ConfigError::Invalid {
                    path: self.path.to_owned(),
                    key: scope.dotted.clone(),
                    message: if scope.shown.is_empty() {
                        message
                    } else {
                        format!("{}: {message}", scope.shown)
                    },
                },
            }
        })
    }

    /// A sub-table such as `tun`, which must be a TOML table.
    fn sub_table<T: DeserializeOwned>(
        &self,
        name: &str,
        value: Option<Value>,
    ) -> Result<Option<T>, ConfigError> {
        match value {
            None => Ok(None),
            Some(Value::Table(table)) => self.table(&Scope::table(name), table).map(Some),
            Some(other) => Err(self.wrong_type(
                &Scope::top().key(name),
                &format!("a table ([{name}])"),
                &other,
            )),
        }
    }

    fn string(&self, key: &Key, value: Value) -> Result<String, ConfigError> {
        match value {
            Value::String(s) => Ok(s),
            other => Err(self.wrong_type(key, "a string", &other)),
        }
    }

    fn path(&self, key: &Key, value: Value) -> Result<PathBuf, ConfigError> {
        self.string(key, value).map(PathBuf::from)
    }

    fn bool(&self, key: &Key, value: Value) -> Result<bool, ConfigError> {
        match value {
            Value::Boolean(b) => Ok(b),
            other => Err(self.wrong_type(key, "true or false", &other)),
        }
    }

    fn integer(&self, key: &Key, value: Value) -> Result<i64, ConfigError> {
        match value {
            Value::Integer(n) => Ok(n),
            other => Err(self.wrong_type(key, "a whole number", &other)),
        }
    }

    /// A TCP or UDP port, 1 to 65535.
    fn port(&self, key: &Key, value: Value) -> Result<u16, ConfigError> {
        let n = self.integer(key, value)?;
        u16::try_from(n).ok().filter(|&p| p != 0).ok_or_else(|| {
            self.invalid(
                key,
                format!("{} = {n} is not a port (1 to 65535)", key.shown),
            )
        })
    }

    fn strings(&self, key: &Key, value: Value) -> Result<Vec<String>, ConfigError> {
        let Value::Array(items) = value else {
            return Err(self.wrong_type(key, "a list of strings", &value));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s),
                other => Err(self.invalid(
                    key,
                    format!(
                        "{} must be a list of strings, but entry {} is {}",
                        key.shown,
                        i + 1,
                        describe(&other)
                    ),
                )),
            })
            .collect()
    }

    fn socket_addr(&self, key: &Key, text: &str, example: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.invalid(
                key,
                format!(
                    "{} = {} is not a socket address; write an IP address and a port, such as {example}",
                    key.shown,
                    quote(text)
                ),
            )
        })
    }

    fn public_key(&self, key: &Key, value: Value) -> Result<PublicKey, ConfigError> {
        let text = self.string(key, value)?;
        text.parse().map_err(|e| {
            self.invalid(
                key,
                format!("{} = {} is not a public key: {e}", key.shown, quote(&text)),
            )
        })
    }
}

/// Parses TOML text into a config, checking types but not the cross-key rules.
pub(crate) fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let r = Reporter { path: origin };
    let document: Table = toml::from_str(text).map_err(|e| r.syntax(text, &e))?;
    let top = Scope::top();
    let raw: RawTop = r.table(&top, document)?;
    let mut config = Config::default();

    if let Some(v) = raw.state_dir {
        config.state_dir = r.path(&top.key("state_dir"), v)?;
    }
    if let Some(v) = raw.control_socket {
        config.control_socket = r.path(&top.key("control_socket"), v)?;
    }
    if let Some(v) = raw.address_prefix {
        let key = top.key("address_prefix");
        let n = r.integer(&key, v)?;
        config.address_prefix = u8::try_from(n).map_err(|_| {
            r.invalid(
                &key,
                format!("address_prefix = {n} is out of range: it is one byte, 0x00 to 0xfe"),
            )
        })?;
    }
    if let Some(v) = raw.anonymity {
        config.anonymity = r.anonymity(&top.key("anonymity"), v)?;
    }
    if let Some(v) = raw.threads {
        let key = top.key("threads");
        let n = r.integer(&key, v)?;
        config.threads = u16::try_from(n)
            .ok()
            .filter(|n| (1..=crate::MAX_THREADS).contains(n))
            .ok_or_else(|| {
                r.invalid(
                    &key,
                    format!("threads = {n} is out of range: 1 to {}", crate::MAX_THREADS),
                )
            })?;
    }

    if let Some(tun) = r.sub_table::<RawTun>("tun", raw.tun)? {
        let scope = Scope::table("tun");
        if let Some(v) = tun.enabled {
            config.tun.enabled = r.bool(&scope.key("enabled"), v)?;
        }
        if let Some(v) = tun.name {
            config.tun.name = r.string(&scope.key("name"), v)?;
        }
        if let Some(v) = tun.mtu {
            let key = scope.key("mtu");
            let n = r.integer(&key, v)?;
            // Out-of-range values get the same message as in `validate`.
            config.tun.mtu = match (crate::validate::mtu_problem(n), u32::try_from(n)) {
                (None, Ok(mtu)) => mtu,
                (problem, _) => {
                    let reason = problem.unwrap_or_else(|| "is out of range".to_owned());
                    return Err(r.invalid(&key, format!("{} = {n} {reason}", key.shown)));
                }
            };
        }
    }

    if let Some(listen) = r.sub_table::<RawListen>("listen", raw.listen)? {
        let scope = Scope::table("listen");
        if let Some(v) = listen.https {
            let key = scope.key("https");
            config.listen.https = r
                .strings(&key, v)?
                .iter()
                .map(|text| r.socket_addr(&key, text, "\"[::]:443\" or \"0.0.0.0:443\""))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = listen.server_name {
            config.listen.server_name = r.string(&scope.key("server_name"), v)?;
        }
        if let Some(v) = listen.acme {
            config.listen.acme = r.bool(&scope.key("acme"), v)?;
        }
        if let Some(v) = listen.acme_directory {
            config.listen.acme_directory = r.string(&scope.key("acme_directory"), v)?;
        }
        if let Some(v) = listen.acme_email {
            config.listen.acme_email = Some(r.string(&scope.key("acme_email"), v)?);
        }
        if let Some(v) = listen.acme_ca {
            config.listen.acme_ca = Some(r.path(&scope.key("acme_ca"), v)?);
        }
        if let Some(v) = listen.cert {
            config.listen.cert = Some(r.path(&scope.key("cert"), v)?);
        }
        if let Some(v) = listen.key {
            config.listen.key = Some(r.path(&scope.key("key"), v)?);
        }
    }

    if let Some(cover) = r.sub_table::<RawCover>("cover", raw.cover)? {
        let scope = Scope::table("cover");
        if let Some(v) = cover.root {
            config.cover.root = Some(r.path(&scope.key("root"), v)?);
        }
        if let Some(v) = cover.upstream {
            config.cover.upstream = Some(r.string(&scope.key("upstream"), v)?);
        }
    }

    if let Some(home) = r.sub_table::<RawHome>("home", raw.home)?
        && let Some(v) = home.key
    {
        config.home.key = Some(r.public_key(&Scope::table("home").key("key"), v)?);
    }

    if let Some(v) = raw.peer {
        config.peers = peers(&r, v)?;
    }

    if let Some(v) = raw.route {
        config.routes = routes(&r, v)?;
    }

    if let Some(metrics) = r.sub_table::<RawMetrics>("metrics", raw.metrics)?
        && let Some(v) = metrics.listen
    {
        let key = Scope::table("metrics").key("listen");
        let text = r.string(&key, v)?;
        config.metrics.listen = Some(r.socket_addr(&key, &text, "\"127.0.0.1:9477\"")?);
    }

    if let Some(padding) = r.sub_table::<RawPadding>("padding", raw.padding)?
        && let Some(v) = padding.rate
    {
        let key = Scope::table("padding").key("rate");
        let text = r.string(&key, v)?;
        config.padding.rate = text.parse().map_err(|e| {
            r.invalid(
                &key,
                format!("{} = {} is not a rate: {e}", key.shown, quote(&text)),
            )
        })?;
    }

    if let Some(nat) = r.sub_table::<RawNat>("nat", raw.nat)? {
        let scope = Scope::table("nat");
        if let Some(v) = nat.port_mapping {
            config.nat.port_mapping = r.bool(&scope.key("port_mapping"), v)?;
        }
        if let Some(v) = nat.relay {
            config.nat.relay = r.bool(&scope.key("relay"), v)?;
        }
        if let Some(v) = nat.relay_rate {
            let key = scope.key("relay_rate");
            let text = r.string(&key, v)?;
            let rate: crate::ByteRate = text.parse().map_err(|e| {
                r.invalid(
                    &key,
                    format!("{} = {} is not a rate: {e}", key.shown, quote(&text)),
                )
            })?;
            if rate.is_zero() {
                return Err(r.invalid(
                    &key,
                    format!(
                        "{} = {} must be above zero; to relay nothing, set relay = false",
                        key.shown,
                        quote(&text)
                    ),
                ));
            }
            config.nat.relay_rate = rate;
        }
        if let Some(v) = nat.relay_total {
            let key = scope.key("relay_total");
            let text = r.string(&key, v)?;
            let total = crate::terms::parse_bytes_or_zero(&text, "amount").map_err(|e| {
                r.invalid(
                    &key,
                    format!(
                        "{} = {} is not an amount of bytes: {e}",
                        key.shown,
                        quote(&text)
                    ),
                )
            })?;
            if total == 0 {
                return Err(r.invalid(
                    &key,
                    format!(
                        "{} = {} must be above zero; to relay nothing, set relay = false",
                        key.shown,
                        quote(&text)
                    ),
                ));
            }
            config.nat.relay_total = total;
        }
        if let Some(v) = nat.retry_direct {
            let key = scope.key("retry_direct");
            let text = r.string(&key, v)?;
            let secs = crate::terms::parse_secs_or_zero(&text, "duration").map_err(|e| {
                r.invalid(
                    &key,
                    format!("{} = {} is not a duration: {e}", key.shown, quote(&text)),
                )
            })?;
            if secs == 0 {
                return Err(r.invalid(
                    &key,
                    format!("{} = {} must be at least 1s", key.shown, quote(&text)),
                ));
            }
            config.nat.retry_direct = std::time::Duration::from_secs(secs);
        }
    }

    if let Some(agreements) = r.sub_table::<RawAgreements>("agreements", raw.agreements)?
        && let Some(v) = agreements.proposals
    {
        config.agreements.proposals = r.bool(&Scope::table("agreements").key("proposals"), v)?;
    }

    if let Some(dns) = r.sub_table::<RawDns>("dns", raw.dns)? {
        let scope = Scope::table("dns");
        if let Some(v) = dns.listen {
            let key = scope.key("listen");
            let text = r.string(&key, v)?;
            config.dns.listen = Some(r.socket_addr(&key, &text, "\"127.0.0.1:53\"")?);
        }
        if let Some(v) = dns.srv {
            let key = scope.key("srv");
            let Value::Table(t) = v else {
                return Err(r.wrong_type(
                    &key,
                    "a table of services and ports, such as { \"_xmpp-server._tcp\" = 5269 }",
                    &v,
                ));
            };
            for (service, port) in t {
                let entry = Scope::table("dns.srv").key(&service);
                let port = r.port(&entry, port)?;
                config.dns.srv.insert(service, port);
            }
        }
        if let Some(v) = dns.txt {
            let key = scope.key("txt");
            let Value::Table(t) = v else {
                return Err(r.wrong_type(
                    &key,
                    "a table of owners and texts, such as { \"_xmppconnect\" = \"…\" }",
                    &v,
                ));
            };
            for (owner, value) in t {
                let entry = Scope::table("dns.txt").key(&owner);
                let texts = match value {
                    Value::String(s) => vec![s],
                    Value::Array(_) => r.strings(&entry, value)?,
                    other => {
                        return Err(r.wrong_type(&entry, "a string or a list of strings", &other));
                    }
                };
                config.dns.txt.insert(owner, texts);
            }
        }
    }

    if let Some(v) = raw.names {
        let key = top.key("names");
        let Value::Table(t) = v else {
            return Err(r.wrong_type(&key, "a table ([names]) of names and keys", &v));
        };
        for (label, value) in t {
            let entry = Scope::table("names").key(&label);
            config.names.insert(label, r.public_key(&entry, value)?);
        }
    }

    if let Some(socks) = r.sub_table::<RawSocks>("socks", raw.socks)?
        && let Some(v) = socks.listen
    {
        let key = Scope::table("socks").key("listen");
        let text = r.string(&key, v)?;
        config.socks.listen = Some(r.socket_addr(&key, &text, "\"127.0.0.1:1080\"")?);
    }

    if let Some(v) = raw.expose {
        config.expose = exposes(&r, v)?;
    }

    Ok(config)
}

fn exposes(r: &Reporter<'_>, value: Value) -> Result<Vec<ExposeConfig>, ConfigError> {
    let mut exposes = Vec::new();
    for (scope, table) in array_of_tables(r, "expose", value)? {
        let raw: RawExpose = r.table(&scope, table)?;
        let port_key = scope.key("port");
        let Some(port) = raw.port else {
            return Err(r.invalid(
                &port_key,
                format!(
                    "{} has no port; write the overlay port, such as port = 5269",
                    scope.shown
                ),
            ));
        };
        let port = r.port(&port_key, port)?;
        let to_key = scope.key("to");
        let Some(to) = raw.to else {
            return Err(r.invalid(
                &to_key,
                format!(
                    "{} has no destination; write the local socket, such as to = \"127.0.0.1:{port}\"",
                    scope.shown
                ),
            ));
        };
        let text = r.string(&to_key, to)?;
        let to = r.socket_addr(&to_key, &text, &format!("\"127.0.0.1:{port}\""))?;
        exposes.push(ExposeConfig { port, to });
    }
    Ok(exposes)
}

/// The tables of an array of tables such as `[[peer]]`, each with its scope.
fn array_of_tables(
    r: &Reporter<'_>,
    name: &str,
    value: Value,
) -> Result<Vec<(Scope, Table)>, ConfigError> {
    let key = Scope::top().key(name);
    let items = match value {
        Value::Array(items) => items,
        Value::Table(_) => {
            return Err(r.invalid(
                &key,
                format!(
                    "[{name}] must be written [[{name}]], with two brackets: each {name} is one \
                     entry of a list"
                ),
            ));
        }
        other => return Err(r.wrong_type(&key, &format!("a list of tables ([[{name}]])"), &other)),
    };
    let mut tables = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let scope = Scope::entry(name, i + 1);
        let Value::Table(table) = item else {
            return Err(r.invalid(
                &key,
                format!("{} must be a table, found {}", scope.shown, describe(&item)),
            ));
        };
        tables.push((scope, table));
    }
    Ok(tables)
}

fn routes(r: &Reporter<'_>, value: Value) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut routes = Vec::new();
    for (scope, table) in array_of_tables(r, "route", value)? {
        let raw: RawRoute = r.table(&scope, table)?;
        let to_key = scope.key("to");
        let Some(to) = raw.to else {
            return Err(r.invalid(
                &to_key,
                format!(
                    "{} has no destination; write to = \"<64 hex characters: the node's public \
                     key>\" or its overlay address",
                    scope.shown
                ),
            ));
        };
        let text = r.string(&to_key, to)?;
        let to = match (
            text.parse::<PublicKey>(),
            text.parse::<std::net::Ipv6Addr>(),
        ) {
            (Ok(k), _) => RouteTarget::Key(k),
            (_, Ok(a)) => RouteTarget::Address(a),
            (Err(e), Err(_)) => {
                return Err(r.invalid(
                    &to_key,
                    format!(
                        "{} = {} is neither a public key ({e}) nor an IPv6 address",
                        to_key.shown,
                        quote(&text)
                    ),
                ));
            }
        };
        let anonymity_key = scope.key("anonymity");
        let Some(anonymity) = raw.anonymity else {
            return Err(r.invalid(
                &anonymity_key,
                format!(
                    "{} has no anonymity; a route exists to set one, such as anonymity = \"fast\"",
                    scope.shown
                ),
            ));
        };
        let anonymity = r.anonymity(&anonymity_key, anonymity)?;
        routes.push(RouteConfig { to, anonymity });
    }
    Ok(routes)
}

fn peers(r: &Reporter<'_>, value: Value) -> Result<Vec<PeerConfig>, ConfigError> {
    let mut peers = Vec::new();
    for (scope, table) in array_of_tables(r, "peer", value)? {
        let raw: RawPeer = r.table(&scope, table)?;
        let key_key = scope.key("key");
        let Some(key_value) = raw.key else {
            return Err(r.invalid(
                &key_key,
                format!(
                    "{} has no key; every peer needs its public key, key = \"<64 hex characters>\"",
                    scope.shown
                ),
            ));
        };
        let public_key = r.public_key(&key_key, key_value)?;
        let endpoints = match raw.endpoints {
            Some(v) => r.strings(&scope.key("endpoints"), v)?,
            None => Vec::new(),
        };
        let terms = match raw.terms {
            None => Terms::default(),
            Some(v) => {
                let terms_key = scope.key("terms");
                let text = r.string(&terms_key, v)?;
                text.parse().map_err(|e| {
                    r.invalid(
                        &terms_key,
                        format!(
                            "{} = {} is not valid terms: {e}",
                            terms_key.shown,
                            quote(&text)
                        ),
                    )
                })?
            }
        };
        peers.push(PeerConfig {
            key: public_key,
            endpoints,
            terms,
        });
    }
    Ok(peers)
}

/// Splits serde's "unknown field `x`, expected one of `a`, `b`" into the key and the
/// keys the table accepts. The key comes from the user and may contain anything, so
/// search from the right; the accepted keys are ours and contain no backticks or commas.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    if let Some(at) = rest.rfind("`, expected ") {
        let list = &rest[at + "`, expected ".len()..];
        let list = list.strip_prefix("one of ").unwrap_or(list);
        let expected = list
            .split(", ")
            .map(|k| k.trim_matches('`').to_owned())
            .collect();
        return Some((rest[..at].to_owned(), expected));
    }
    let at = rest.rfind("`, there are no fields")?;
    Some((rest[..at].to_owned(), Vec::new()))
}

/// A short description of a TOML value for "found …" in messages.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("string {}", quote(s)),
        Value::Integer(n) => format!("integer {n}"),
        Value::Float(x) => format!("float {x}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\nbé = x\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 6), (2, 1));
        // 'x' is after the two-byte 'é'.
        assert_eq!(line_and_column(text, text.find('x').unwrap_or(0)), (2, 6));
        assert_eq!(line_and_column(text, 999), (3, 1));
    }

    #[test]
    fn unknown_field_parses_serde_messages() {
        assert_eq!(
            unknown_field("unknown field `foo`, expected one of `a`, `b`"),
            Some(("foo".to_owned(), vec!["a".to_owned(), "b".to_owned()]))
        );
        assert_eq!(
            unknown_field("unknown field `x`, expected `key`"),
            Some(("x".to_owned(), vec!["key".to_owned()]))
        );
        assert_eq!(
            unknown_field("unknown field `a`, b`, expected `key`"),
            Some(("a`, b".to_owned(), vec!["key".to_owned()]))
        );
        assert_eq!(unknown_field("invalid type: integer"), None);
    }
}
