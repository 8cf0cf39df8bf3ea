//! The commented config file that `umbra init` writes.

use std::path::Path;

/// The commented default config text that `umbra init` writes.
///
/// Parsing it with [`Config::from_toml`](crate::Config::from_toml) gives a config equal
/// to [`Config::default()`](crate::Config::default) with `state_dir` and
/// `control_socket` as given. Every key is shown with its default value or, for keys that
/// are off by default, as a comment with an example. (A path that is not UTF-8 is written
/// with its invalid bytes replaced.)
pub fn default_config_text(state_dir: &Path, control_socket: &Path) -> String {
    let state_dir = toml_string(&state_dir.to_string_lossy());
    let control_socket = toml_string(&control_socket.to_string_lossy());
    format!(
        r#"# umbra config. Every key has a default, so an empty file is valid; unknown keys
# are errors. `umbra run` reads this file at start, and again on SIGHUP.

# The identity key (identity.key, mode 0600) and the database (umbra.db) live here.
state_dir = {state_dir}
# The `umbra` commands talk to the running daemon through this socket.
control_socket = {control_socket}
# First byte of this node's address. 0x06 gives addresses in 600::/8 and subnets in
# 700::/8; 0x02 gives Yggdrasil's addresses. It must be even: prefix | 1 is the subnet.
address_prefix = 0x06
# How circuits pick their relays: "fast" (shortest path), "balanced" (a random walk
# from the home node) or "strong" (more relays, and padding).
anonymity = "balanced"
# Worker threads that carry the data path. One keeps a cell's path on one core and
# was fastest where the node shares its cores with the servers it carries.
threads = 1

[tun]
# The interface that gives every program on this host the overlay.
enabled = true
name = "umbra0"
# Bytes, from 1280 to 65535.
mtu = 65535

[listen]
# Where peers reach this node, as HTTPS. An empty list means dial out only (a node
# behind NAT).
https = ["[::]:443"]
# The domain this node serves (SNI and certificate name); empty for none.
server_name = ""
# Where the TLS certificate comes from: ACME for server_name, or files (set both cert
# and key), or, with neither, a self-signed certificate kept in state_dir.
acme = false
# With acme = true: the ACME server (Let's Encrypt unless changed), an e-mail address
# for the CA's notices, and, for a private ACME server, a PEM file of the CA
# certificates its HTTPS is checked against. ACME answers the TLS-ALPN-01 challenge
# on the https port, so the CA must reach server_name on port 443. The account and
# the certificate are kept in state_dir/acme.
acme_directory = "https://acme-v02.api.letsencrypt.org/directory"
# acme_email = "ops@example.org"
# acme_ca = "/etc/umbra/acme-ca.pem"
# cert = "/etc/umbra/cert.pem"
# key = "/etc/umbra/key.pem"

[cover]
# The website anyone without a link token sees. With neither key, a built-in static
# site. Set at most one of:
# root = "/var/www/cover"                 # a directory to serve
# upstream = "http://127.0.0.1:8080"      # a local web server to proxy

[home]
# The home node, the first hop of every circuit, pinned by its public key.
# Default: the first agreement.
# key = "<64 hex characters>"

# Each [[peer]] is half of an agreement; it becomes one when that peer lists this node
# too. Terms are bytes per period, each way: units B KB MB GB TB KiB MiB GiB TiB,
# periods s m h d. With no endpoints, the peer is reached by NAT traversal.
# [[peer]]
# key = "<64 hex characters: the peer's public key>"
# endpoints = ["198.18.0.1:443"]
# terms = "50GiB/30d"

# Each [[route]] gives one destination its own anonymity setting, such as "fast" to
# your own second server while everything else stays balanced. "fast" takes the
# shortest path over any partner: its relays may see both ends. `to` is the node's
# public key or its overlay address.
# [[route]]
# to = "<64 hex characters: the destination's public key>"
# anonymity = "fast"

[metrics]
# Prometheus text on a loopback address; unset means no metrics.
# listen = "127.0.0.1:9477"

[dns]
# Answer .umbra names (AAAA, and SRV and TXT below) on a loopback address, over UDP
# and TCP; unset means no responder. Everything outside .umbra is refused.
# listen = "127.0.0.1:53"
# SRV records answered for every .umbra name, pointing at that name itself:
# srv = {{ "_xmpp-server._tcp" = 5269, "_matrix._tcp" = 8448 }}
# TXT records answered below every .umbra name: owner = a string, or a list of
# strings (one record each, at most 255 bytes each):
# txt = {{ "_xmppconnect" = "_xmpp-client-websocket=wss://chat.umbra/xmpp-websocket" }}

[names]
# Petnames: chat.umbra stands for this key, on this node only.
# chat = "<64 hex characters: a node's public key>"

[socks]
# A SOCKS5 proxy on a loopback address for apps without the TUN: CONNECT to a .umbra
# name or an overlay address crosses circuits from this node's address; anything
# outside the overlay is refused. Unset means no proxy.
# listen = "127.0.0.1:1080"

# Overlay TCP to this node's address on a port, forwarded to a local socket (with the
# TUN off too). One table per port, below 61000.
# [[expose]]
# port = 5269
# to = "127.0.0.1:5269"

[padding]
# With anonymity = "strong": cover cells each way on every link, so an idle link looks
# busy. Cells with traffic count toward the rate; padding fills the rest. It is paid
# from the agreement: never above its terms' average rate (50GiB/30d is about
# 20KiB/s). Bytes per second, at most 1MiB/s; "0B/s" turns padding off.
# rate = "32KiB/s"

[nat]
# Behind a NAT with a listen address: ask the gateway (UPnP-IGD, NAT-PMP or PCP) to
# forward the link port, renew it, and remove it at shutdown. false sends it nothing.
# port_mapping = true
# Partners without a direct path link through a partner both share: relay for them,
# at most this fast and this much per relayed link.
# relay = true
# relay_rate = "8MiB/s"
# relay_total = "100GiB"
# While a link is relayed, try for a direct or punched one this long after (doubling).
# retry_direct = "60s"

[agreements]
# Other nodes may propose an agreement over the overlay (`umbra propose`); each one
# waits in `umbra agreements` for you to accept or reject. false refuses them all,
# and the proposer is told so.
# proposals = true
"#
    )
}

/// A TOML string literal holding `text`.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, DEFAULT_CONTROL_SOCKET, DEFAULT_STATE_DIR};
    use std::path::PathBuf;

    #[test]
    fn default_text_parses_to_the_default() {
        let text = default_config_text(
            Path::new(DEFAULT_STATE_DIR),
            Path::new(DEFAULT_CONTROL_SOCKET),
        );
        let config = Config::from_toml(&text, Path::new("umbra.toml")).expect("parses");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn default_text_keeps_the_given_paths() {
        let state_dir = PathBuf::from("/srv/umbra \"state\"\\dir");
        let socket = PathBuf::from("/tmp/umbra test/control.sock");
        let text = default_config_text(&state_dir, &socket);
        let config = Config::from_toml(&text, Path::new("umbra.toml")).expect("parses");
        assert_eq!(
            config,
            Config {
                state_dir,
                control_socket: socket,
                ..Config::default()
            }
        );
    }

    #[test]
    fn default_text_examples_are_valid_when_uncommented() {
        // Uncomment the examples an operator is most likely to turn on, one at a time.
        let text = default_config_text(
            Path::new(DEFAULT_STATE_DIR),
            Path::new(DEFAULT_CONTROL_SOCKET),
        );
        for example in [
            "# root = \"/var/www/cover\"",
            "# upstream = \"http://127.0.0.1:8080\"",
            "# listen = \"127.0.0.1:9477\"",
            "# acme_email = \"ops@example.org\"",
            "# acme_ca = \"/etc/umbra/acme-ca.pem\"",
            "# rate = \"32KiB/s\"",
            "# port_mapping = true",
            "# proposals = true",
            "# srv = {",
            "# txt = {",
        ] {
            assert!(text.contains(example), "{example}");
            let edited = text.replace(example, example.trim_start_matches("# "));
            let result = Config::from_toml(&edited, Path::new("umbra.toml"));
            assert!(result.is_ok(), "{example}: {:?}", result.err());
        }
        let edited = text
            .replace("# cert = ", "cert = ")
            .replace("# key = \"/etc", "key = \"/etc");
        let config = Config::from_toml(&edited, Path::new("umbra.toml")).expect("cert and key");
        assert_eq!(
            config.listen.cert,
            Some(PathBuf::from("/etc/umbra/cert.pem"))
        );
        assert_eq!(config.listen.key, Some(PathBuf::from("/etc/umbra/key.pem")));
    }
}
