//! Whole-file tests: every rule's error names the file, the key and the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::{Anonymity, ByteRate, Config, ConfigError, PeerConfig, PublicKey, Terms};

const FILE: &str = "/etc/umbra/umbra.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new(FILE))
}

fn parse_ok(text: &str) -> Config {
    match parse(text) {
        Ok(config) => config,
        Err(e) => panic!("{text:?} should parse, got: {e}"),
    }
}

/// Parses `text`, expects an `Invalid` error about `key` (dotted), and checks that the
/// one-line message starts with the file and contains each of `parts`.
fn invalid(text: &str, key: &str, parts: &[&str]) -> String {
    let err = match parse(text) {
        Ok(config) => panic!("{text:?} should fail, parsed as {config:?}"),
        Err(e) => e,
    };
    let message = err.to_string();
    match &err {
        ConfigError::Invalid { key: got, path, .. } => {
            assert_eq!(got, key, "{message}");
            assert_eq!(path, Path::new(FILE));
        }
        other => panic!("expected Invalid about {key}, got {other:?}"),
    }
    assert!(
        message.starts_with(&format!("config {FILE}: ")),
        "{message}"
    );
    for part in parts {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    assert!(!message.contains('\n'), "{message:?}");
    message
}

fn hex_key(byte: u8) -> String {
    PublicKey([byte; 32]).to_string()
}

fn peer(byte: u8, rest: &str) -> String {
    format!("[[peer]]\nkey = \"{}\"\n{rest}\n", hex_key(byte))
}

// ---- whole files ----

#[test]
fn interface_example_parses() {
    let text = format!(
        r#"
state_dir = "/var/lib/umbra"
control_socket = "/run/umbra/control.sock"
address_prefix = 0x02
anonymity = "strong"

[tun]
enabled = false
name = "ygg1"
mtu = 1400

[listen]
https = ["[::]:443", "0.0.0.0:8443"]
server_name = "relay.example.org"
acme = true

[cover]
upstream = "http://127.0.0.1:8080"

[home]
key = "{home}"

[[peer]]
key = "{a}"
endpoints = ["198.18.0.1:443", "relay.example.org:443"]
terms = "1TB/7d"

[[peer]]
key = "{b}"
endpoints = ["[2001:db8::1]:443"]

[metrics]
listen = "[::1]:9477"
"#,
        home = hex_key(0xaa),
        a = hex_key(0xaa),
        b = hex_key(0xbb),
    );
    let config = parse_ok(&text);
    assert_eq!(config.address_prefix, 0x02);
    assert_eq!(config.anonymity, Anonymity::Strong);
    assert!(!config.tun.enabled);
    assert_eq!(config.tun.name, "ygg1");
    assert_eq!(config.tun.mtu, 1400);
    assert_eq!(config.listen.https.len(), 2);
    assert!(config.listen.acme);
    assert_eq!(
        config.cover.upstream.as_deref(),
        Some("http://127.0.0.1:8080")
    );
    assert_eq!(config.home.key, Some(PublicKey([0xaa; 32])));
    assert_eq!(
        config.peers,
        vec![
            PeerConfig {
                key: PublicKey([0xaa; 32]),
                endpoints: vec!["198.18.0.1:443".into(), "relay.example.org:443".into()],
                terms: "1TB/7d".parse().expect("terms"),
            },
            PeerConfig {
                key: PublicKey([0xbb; 32]),
                endpoints: vec!["[2001:db8::1]:443".into()],
                terms: Terms::default(),
            },
        ]
    );
    let metrics: SocketAddr = "[::1]:9477".parse().expect("addr");
    assert_eq!(config.metrics.listen, Some(metrics));
}

#[test]
fn empty_https_list_means_dial_out_only() {
    assert!(parse_ok("[listen]\nhttps = []\n").listen.https.is_empty());
}

#[test]
fn syntax_error_names_file_and_line() {
    let err = parse("[tun]\nmtu = = 3\n").expect_err("bad TOML");
    let message = err.to_string();
    assert!(
        matches!(err, ConfigError::Syntax { line: 2, .. }),
        "{err:?}"
    );
    assert!(
        message.starts_with(&format!("config {FILE}: line 2, column ")),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message:?}");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    let err = parse("[tun]\nmtu = 1400\nmtu = 1500\n").expect_err("duplicate");
    assert!(
        matches!(err, ConfigError::Syntax { line: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("duplicate key `mtu`"), "{err}");
}

// ---- unknown keys ----

fn unknown(text: &str, table: &str, key: &str) -> String {
    let err = parse(text).expect_err("unknown key");
    let message = err.to_string();
    match &err {
        ConfigError::UnknownKey {
            table: t, key: k, ..
        } => {
            assert_eq!((t.as_str(), k.as_str()), (table, key), "{message}");
        }
        other => panic!("expected UnknownKey, got {other:?}"),
    }
    assert!(
        message.starts_with(&format!("config {FILE}: unknown key `{key}` ")),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message:?}");
    message
}

#[test]
fn unknown_top_level_key_is_named() {
    let message = unknown("mtu = 1400\n", "", "mtu");
    assert!(message.contains("at the top level"), "{message}");
    assert!(
        message.contains("`state_dir`"),
        "lists the known keys: {message}"
    );
}

#[test]
fn unknown_key_in_tun_is_named_with_its_table() {
    let message = unknown("[tun]\nfoo = 1\n", "[tun]", "foo");
    assert_eq!(
        message,
        format!(
            "config {FILE}: unknown key `foo` in [tun]; expected one of `enabled`, `name`, `mtu`"
        )
    );
}

#[test]
fn unknown_key_in_a_peer_and_a_one_key_table() {
    let text = format!(
        "{}{}",
        peer(1, "endpoints = [\"a:1\"]"),
        peer(2, "endpoint = \"a:1\"")
    );
    unknown(&text, "[[peer]] #2", "endpoint");
    let message = unknown("[home]\npublic_key = \"x\"\n", "[home]", "public_key");
    assert!(message.ends_with("expected `key`"), "{message}");
    // A quoted key with a newline stays on one line.
    unknown("[tun]\n\"a\\nb\" = 1\n", "[tun]", "a\\nb");
}

#[test]
fn table_written_as_a_value_is_rejected() {
    invalid(
        "tun = 5\n",
        "tun",
        &["tun must be a table ([tun]), found integer 5"],
    );
}

// ---- top level ----

#[test]
fn state_dir_must_be_absolute() {
    invalid(
        "state_dir = \"var/lib/umbra\"\n",
        "state_dir",
        &["state_dir = \"var/lib/umbra\" is not an absolute path"],
    );
    invalid(
        "state_dir = \"\"\n",
        "state_dir",
        &["state_dir = \"\" is not an absolute path"],
    );
}

#[test]
fn control_socket_must_be_absolute() {
    invalid(
        "control_socket = \"control.sock\"\n",
        "control_socket",
        &["control_socket = \"control.sock\" is not an absolute path"],
    );
}

#[test]
fn paths_must_be_strings() {
    invalid(
        "state_dir = 5\n",
        "state_dir",
        &["state_dir must be a string, found integer 5"],
    );
}

#[test]
fn address_prefix_must_be_even() {
    let message = invalid(
        "address_prefix = 0x07\n",
        "address_prefix",
        &[
            "address_prefix = 0x07 is odd",
            "subnet bit",
            "0x07 | 1 is the subnet prefix",
            "0x06",
        ],
    );
    assert_eq!(message.matches("config ").count(), 1, "{message}");
    assert_eq!(parse_ok("address_prefix = 0x02\n").address_prefix, 0x02);
}

#[test]
fn address_prefix_must_be_one_byte() {
    invalid(
        "address_prefix = 256\n",
        "address_prefix",
        &["address_prefix = 256 is out of range"],
    );
    invalid(
        "address_prefix = -2\n",
        "address_prefix",
        &["address_prefix = -2 is out of range"],
    );
    invalid(
        "address_prefix = \"0x06\"\n",
        "address_prefix",
        &["address_prefix must be a whole number, found string \"0x06\""],
    );
}

#[test]
fn threads_is_a_count_from_1() {
    assert_eq!(parse_ok("").threads, 1);
    assert_eq!(parse_ok("threads = 4\n").threads, 4);
    for bad in ["0", "-1", "257"] {
        invalid(
            &format!("threads = {bad}\n"),
            "threads",
            &[&format!("threads = {bad} is out of range: 1 to 256")],
        );
    }
    invalid(
        "threads = \"2\"\n",
        "threads",
        &["threads must be a whole number, found string \"2\""],
    );
}

#[test]
fn anonymity_must_be_a_known_level() {
    invalid(
        "anonymity = \"paranoid\"\n",
        "anonymity",
        &[r#"anonymity = "paranoid" is not one of "fast", "balanced", "strong""#],
    );
    invalid(
        "anonymity = \"Fast\"\n",
        "anonymity",
        &[r#"anonymity = "Fast" is not one of"#],
    );
    invalid(
        "anonymity = 3\n",
        "anonymity",
        &[r#"anonymity must be one of "fast", "balanced", "strong", found integer 3"#],
    );
    for level in Anonymity::ALL {
        assert_eq!(
            parse_ok(&format!("anonymity = \"{level}\"\n")).anonymity,
            level
        );
    }
}

// ---- [tun] ----

#[test]
fn tun_mtu_above_maximum() {
    let message = invalid("[tun]\nmtu = 70000\n", "tun.mtu", &[]);
    assert_eq!(
        message,
        "config /etc/umbra/umbra.toml: [tun] mtu = 70000 is above the maximum 65535"
    );
    invalid(
        "[tun]\nmtu = 9223372036854775807\n",
        "tun.mtu",
        &["[tun] mtu = 9223372036854775807 is above the maximum 65535"],
    );
}

#[test]
fn tun_mtu_below_minimum() {
    invalid(
        "[tun]\nmtu = 1279\n",
        "tun.mtu",
        &["[tun] mtu = 1279 is below the minimum 1280", "IPv6"],
    );
    invalid(
        "[tun]\nmtu = -1\n",
        "tun.mtu",
        &["[tun] mtu = -1 is below the minimum 1280"],
    );
    assert_eq!(parse_ok("[tun]\nmtu = 1280\n").tun.mtu, 1280);
    assert_eq!(parse_ok("[tun]\nmtu = 65535\n").tun.mtu, 65535);
}

#[test]
fn tun_mtu_must_be_a_number() {
    invalid(
        "[tun]\nmtu = \"1400\"\n",
        "tun.mtu",
        &["[tun] mtu must be a whole number, found string \"1400\""],
    );
}

#[test]
fn tun_name_must_not_be_empty() {
    invalid(
        "[tun]\nname = \"\"\n",
        "tun.name",
        &["[tun] name = \"\" is empty"],
    );
}

#[test]
fn tun_name_at_most_15_bytes() {
    invalid(
        "[tun]\nname = \"umbra-interface0\"\n",
        "tun.name",
        &[
            "[tun] name = \"umbra-interface0\" is 16 bytes long",
            "at most 15 bytes",
        ],
    );
    assert_eq!(
        parse_ok("[tun]\nname = \"umbra-interface\"\n").tun.name,
        "umbra-interface"
    );
}

#[test]
fn tun_name_without_slash_or_whitespace() {
    invalid(
        "[tun]\nname = \"a/b\"\n",
        "tun.name",
        &["[tun] name = \"a/b\" contains '/'"],
    );
    invalid(
        "[tun]\nname = \"a b\"\n",
        "tun.name",
        &["[tun] name = \"a b\" contains ' '"],
    );
    invalid(
        "[tun]\nname = \"a\\tb\"\n",
        "tun.name",
        &["[tun] name = \"a\\tb\" contains '\\t'"],
    );
    invalid("[tun]\nname = \"a:b\"\n", "tun.name", &["contains ':'"]);
}

#[test]
fn tun_enabled_must_be_a_boolean() {
    invalid(
        "[tun]\nenabled = \"yes\"\n",
        "tun.enabled",
        &["[tun] enabled must be true or false, found string \"yes\""],
    );
}

// ---- [listen] ----

#[test]
fn listen_https_entries_are_socket_addresses() {
    invalid(
        "[listen]\nhttps = [\"[::]:443\", \"example.org:443\"]\n",
        "listen.https",
        &[
            "[listen] https = \"example.org:443\" is not a socket address",
            "\"[::]:443\"",
        ],
    );
    invalid(
        "[listen]\nhttps = [\"0.0.0.0\"]\n",
        "listen.https",
        &["\"0.0.0.0\" is not a socket address"],
    );
    invalid(
        "[listen]\nhttps = [443]\n",
        "listen.https",
        &["[listen] https must be a list of strings, but entry 1 is integer 443"],
    );
    invalid(
        "[listen]\nhttps = \"[::]:443\"\n",
        "listen.https",
        &["[listen] https must be a list of strings, found string \"[::]:443\""],
    );
}

#[test]
fn listen_https_duplicates_are_rejected() {
    invalid(
        "[listen]\nhttps = [\"[::]:443\", \"[::]:443\"]\n",
        "listen.https",
        &["[listen] https lists \"[::]:443\" twice"],
    );
}

#[test]
fn listen_cert_needs_key() {
    invalid(
        "[listen]\ncert = \"/etc/umbra/cert.pem\"\n",
        "listen.key",
        &["[listen] cert is set but key is not", "both"],
    );
}

#[test]
fn listen_key_needs_cert() {
    invalid(
        "[listen]\nkey = \"/etc/umbra/key.pem\"\n",
        "listen.cert",
        &["[listen] key is set but cert is not", "both"],
    );
    let config = parse_ok("[listen]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n");
    assert_eq!(config.listen.cert, Some(PathBuf::from("/c.pem")));
}

#[test]
fn listen_acme_needs_server_name() {
    invalid(
        "[listen]\nacme = true\n",
        "listen.server_name",
        &["[listen] acme = true needs server_name"],
    );
    invalid(
        "[listen]\nacme = true\nserver_name = \"\"\n",
        "listen.server_name",
        &["[listen] acme = true needs server_name"],
    );
    let config = parse_ok("[listen]\nacme = true\nserver_name = \"relay.example.org\"\n");
    assert!(config.listen.acme);
}

#[test]
fn listen_acme_excludes_cert_files() {
    invalid(
        "[listen]\nacme = true\nserver_name = \"a.example\"\ncert = \"/c\"\nkey = \"/k\"\n",
        "listen.acme",
        &["[listen] acme = true and cert/key are two certificate sources"],
    );
}

#[test]
fn listen_acme_server_defaults_to_lets_encrypt_and_can_be_changed() {
    let config = parse_ok("[listen]\nacme = true\nserver_name = \"a.example\"\n");
    assert_eq!(
        config.listen.acme_directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(config.listen.acme_email, None);
    assert_eq!(config.listen.acme_ca, None);

    let config = parse_ok(
        "[listen]\nacme = true\nserver_name = \"a.example\"\n\
         acme_directory = \"https://198.18.0.1:14000/dir\"\n\
         acme_email = \"ops@example.org\"\nacme_ca = \"/etc/umbra/test-ca.pem\"\n",
    );
    assert_eq!(config.listen.acme_directory, "https://198.18.0.1:14000/dir");
    assert_eq!(config.listen.acme_email.as_deref(), Some("ops@example.org"));
    assert_eq!(
        config.listen.acme_ca,
        Some(PathBuf::from("/etc/umbra/test-ca.pem"))
    );
}

#[test]
fn listen_acme_keys_reject_bad_values() {
    for bad in [
        "http://acme.example/dir",
        "acme.example/dir",
        "https://",
        "",
    ] {
        invalid(
            &format!("[listen]\nacme_directory = \"{bad}\"\n"),
            "listen.acme_directory",
            &["[listen] acme_directory = ", "is not an https:// URL"],
        );
    }
    for bad in ["ops", "@example.org", "ops@", "o ps@example.org"] {
        invalid(
            &format!("[listen]\nacme_email = \"{bad}\"\n"),
            "listen.acme_email",
            &["[listen] acme_email = ", "is not an e-mail address"],
        );
    }
    invalid(
        "[listen]\nacme_ca = \"\"\n",
        "listen.acme_ca",
        &["[listen] acme_ca is empty"],
    );
    invalid(
        "[listen]\nacme_email = 3\n",
        "listen.acme_email",
        &["[listen] acme_email must be a string"],
    );
}

// ---- [cover] ----

#[test]
fn cover_root_and_upstream_are_exclusive() {
    invalid(
        "[cover]\nroot = \"/var/www\"\nupstream = \"http://127.0.0.1:8080\"\n",
        "cover.upstream",
        &["[cover] root and upstream are both set", "only one"],
    );
    assert!(
        parse_ok("[cover]\nroot = \"/var/www\"\n")
            .cover
            .root
            .is_some()
    );
}

#[test]
fn cover_upstream_must_be_http() {
    invalid(
        "[cover]\nupstream = \"https://127.0.0.1:8443\"\n",
        "cover.upstream",
        &["[cover] upstream = \"https://127.0.0.1:8443\" must start with http://"],
    );
    invalid(
        "[cover]\nupstream = \"http://\"\n",
        "cover.upstream",
        &["must start with http://"],
    );
    invalid(
        "[cover]\nupstream = \"127.0.0.1:8080\"\n",
        "cover.upstream",
        &["must start with http://"],
    );
}

// ---- keys ----

#[test]
fn home_key_must_be_64_hex_characters() {
    invalid(
        "[home]\nkey = \"abcd\"\n",
        "home.key",
        &[
            "[home] key = \"abcd\" is not a public key",
            "expected 64 hex characters, found 4",
        ],
    );
    let not_hex = format!("{}zz", "ab".repeat(31));
    invalid(
        &format!("[home]\nkey = \"{not_hex}\"\n"),
        "home.key",
        &["[home] key = ", "not hex"],
    );
    let key = hex_key(0x42);
    assert_eq!(
        parse_ok(&format!("[home]\nkey = \"{key}\"\n")).home.key,
        Some(PublicKey([0x42; 32]))
    );
}

#[test]
fn peer_key_must_be_64_hex_characters() {
    invalid(
        "[[peer]]\nkey = \"ab\"\nendpoints = [\"a:1\"]\n",
        "peer[1].key",
        &[
            "[[peer]] #1 key = \"ab\" is not a public key",
            "expected 64 hex characters",
        ],
    );
}

// ---- [[peer]] ----

#[test]
fn peer_key_is_required() {
    invalid(
        "[[peer]]\nendpoints = [\"198.18.0.1:443\"]\n",
        "peer[1].key",
        &["[[peer]] #1 has no key", "public key"],
    );
}

#[test]
fn peer_endpoints_may_be_empty_for_nat_traversal() {
    for text in [peer(1, "endpoints = []"), peer(1, "")] {
        let config = parse_ok(&text);
        assert!(config.peers[0].endpoints.is_empty(), "{text}");
    }
}

#[test]
fn peer_endpoints_must_be_host_and_port() {
    invalid(
        &peer(1, "endpoints = [\"198.18.0.1\"]"),
        "peer[1].endpoints",
        &[
            "[[peer]] #1 endpoints entry \"198.18.0.1\" has no port",
            "host:port",
        ],
    );
    invalid(
        &peer(1, "endpoints = [\"relay.example.org:https\"]"),
        "peer[1].endpoints",
        &["entry \"relay.example.org:https\" has a port that is not a number"],
    );
    invalid(
        &peer(1, "endpoints = [\":443\"]"),
        "peer[1].endpoints",
        &["entry \":443\" has no host"],
    );
    invalid(
        &peer(1, "endpoints = \"198.18.0.1:443\""),
        "peer[1].endpoints",
        &["[[peer]] #1 endpoints must be a list of strings"],
    );
}

#[test]
fn peer_terms_must_parse() {
    invalid(
        &peer(1, "endpoints = [\"a:1\"]\nterms = \"50XB/30d\""),
        "peer[1].terms",
        &[
            "[[peer]] #1 terms = \"50XB/30d\" is not valid terms",
            "unknown unit \"XB\"",
        ],
    );
    invalid(
        &peer(1, "endpoints = [\"a:1\"]\nterms = \"0GiB/30d\""),
        "peer[1].terms",
        &["[[peer]] #1 terms = \"0GiB/30d\"", "zero"],
    );
    let config = parse_ok(&peer(1, "endpoints = [\"a:1\"]\nterms = \"1TB/7d\""));
    assert_eq!(config.peers[0].terms.bytes_per_period, 1_000_000_000_000);
}

#[test]
fn peer_keys_must_be_unique() {
    let text = format!(
        "{}{}{}",
        peer(1, "endpoints = [\"a:1\"]"),
        peer(2, "endpoints = [\"b:1\"]"),
        peer(1, "endpoints = [\"c:1\"]"),
    );
    invalid(
        &text,
        "peer[3].key",
        &[&format!(
            "[[peer]] #3 key = \"{}\" repeats the key of [[peer]] #1",
            hex_key(1)
        )],
    );
}

#[test]
fn peer_written_as_single_table_gets_a_hint() {
    invalid(
        "[peer]\nkey = \"x\"\n",
        "peer",
        &["[peer] must be written [[peer]]"],
    );
}

// ---- [[route]] ----

#[test]
fn routes_take_a_key_or_an_overlay_address() {
    let text = format!(
        "[[route]]\nto = \"{}\"\nanonymity = \"fast\"\n\
         [[route]]\nto = \"600:1234::1\"\nanonymity = \"strong\"\n",
        hex_key(7)
    );
    let config = parse_ok(&text);
    assert_eq!(
        config.routes,
        [
            crate::RouteConfig {
                to: crate::RouteTarget::Key(PublicKey([7; 32])),
                anonymity: Anonymity::Fast,
            },
            crate::RouteConfig {
                to: crate::RouteTarget::Address("600:1234::1".parse().expect("addr")),
                anonymity: Anonymity::Strong,
            },
        ]
    );
    // The subnet half of the overlay counts too.
    parse_ok("[[route]]\nto = \"700:1::1\"\nanonymity = \"fast\"\n");
}

#[test]
fn bad_routes_name_the_entry_and_the_fix() {
    invalid(
        "[[route]]\nanonymity = \"fast\"\n",
        "route[1].to",
        &["[[route]] #1 has no destination", "public key"],
    );
    invalid(
        "[[route]]\nto = \"myserver\"\nanonymity = \"fast\"\n",
        "route[1].to",
        &[
            "[[route]] #1 to = \"myserver\" is neither a public key",
            "nor an IPv6 address",
        ],
    );
    invalid(
        "[[route]]\nto = \"2001:db8::1\"\nanonymity = \"fast\"\n",
        "route[1].to",
        &["is not an overlay address", "600::", "700::"],
    );
    let key = hex_key(3);
    invalid(
        &format!("[[route]]\nto = \"{key}\"\n"),
        "route[1].anonymity",
        &["[[route]] #1 has no anonymity", "anonymity = \"fast\""],
    );
    invalid(
        &format!("[[route]]\nto = \"{key}\"\nanonymity = \"quick\"\n"),
        "route[1].anonymity",
        &["[[route]] #1 anonymity = \"quick\" is not one of \"fast\""],
    );
    invalid(
        &format!(
            "[[route]]\nto = \"{key}\"\nanonymity = \"fast\"\n\
             [[route]]\nto = \"{key}\"\nanonymity = \"strong\"\n"
        ),
        "route[2].to",
        &["repeats the destination of [[route]] #1"],
    );
    let err = parse(&format!(
        "[[route]]\nto = \"{key}\"\nanonymity = \"fast\"\nvia = 1\n"
    ))
    .expect_err("unknown key");
    assert!(err.to_string().contains("[[route]] #1"), "{err}");
    invalid(
        "[route]\nto = \"x\"\n",
        "route",
        &["[route] must be written [[route]]"],
    );
}

// ---- [metrics] ----

#[test]
fn metrics_listen_must_be_loopback() {
    invalid(
        "[metrics]\nlisten = \"0.0.0.0:9477\"\n",
        "metrics.listen",
        &[
            "[metrics] listen = \"0.0.0.0:9477\" is not a loopback address",
            "local scraping",
        ],
    );
    invalid(
        "[metrics]\nlisten = \"localhost:9477\"\n",
        "metrics.listen",
        &["[metrics] listen = \"localhost:9477\" is not a socket address"],
    );
    assert!(
        parse_ok("[metrics]\nlisten = \"127.0.0.1:9477\"\n")
            .metrics
            .listen
            .is_some()
    );
    assert!(
        parse_ok("[metrics]\nlisten = \"[::1]:9477\"\n")
            .metrics
            .listen
            .is_some()
    );
}

// ---- [padding] ----

#[test]
fn padding_rate_defaults_to_32_kib_per_second() {
    assert_eq!(Config::default().padding.rate, ByteRate::per_sec(32 * 1024));
    assert_eq!(
        parse_ok("[padding]\n").padding.rate,
        ByteRate::per_sec(32 * 1024)
    );
}

#[test]
fn padding_rate_parses_byte_units_per_second() {
    for (text, bytes) in [
        ("64KiB/s", 64 * 1024),
        ("1MiB/s", 1 << 20),
        ("20000B/s", 20_000),
        ("100KB/s", 100_000),
    ] {
        let config = parse_ok(&format!(
            "anonymity = \"strong\"\n[padding]\nrate = \"{text}\"\n"
        ));
        assert_eq!(config.padding.rate, ByteRate::per_sec(bytes), "{text}");
    }
}

#[test]
fn padding_rate_zero_means_off() {
    let config = parse_ok("anonymity = \"strong\"\n[padding]\nrate = \"0B/s\"\n");
    assert!(config.padding.rate.is_zero());
}

#[test]
fn padding_rate_rejects_bad_units_and_shapes() {
    invalid(
        "[padding]\nrate = \"32kbps\"\n",
        "padding.rate",
        &[
            "[padding] rate = \"32kbps\" is not a rate",
            "expected <amount>/s, such as \"32KiB/s\"",
        ],
    );
    invalid(
        "[padding]\nrate = \"32XB/s\"\n",
        "padding.rate",
        &[
            "[padding] rate = \"32XB/s\" is not a rate",
            "unknown unit \"XB\"",
        ],
    );
    invalid(
        "[padding]\nrate = \"32KiB/m\"\n",
        "padding.rate",
        &["expected <amount>/s"],
    );
    invalid(
        "[padding]\nrate = 32768\n",
        "padding.rate",
        &["[padding] rate must be a string, found integer 32768"],
    );
}

#[test]
fn padding_rate_has_a_maximum() {
    invalid(
        "[padding]\nrate = \"2MiB/s\"\n",
        "padding.rate",
        &["[padding] rate = \"2MiB/s\" is above the maximum 1MiB/s"],
    );
    invalid(
        "[padding]\nrate = \"8GiB/s\"\n",
        "padding.rate",
        &["too large for a rate"],
    );
}

#[test]
fn unknown_key_in_padding_is_named() {
    let message = unknown("[padding]\nrat = \"1KiB/s\"\n", "[padding]", "rat");
    assert!(message.ends_with("expected `rate`"), "{message}");
}

// ---- validate on configs built in code ----

#[test]
fn validate_checks_configs_built_in_code() {
    let mut config = Config::default();
    config.tun.mtu = 100;
    let err = config.validate(Path::new("built-in")).expect_err("mtu 100");
    assert_eq!(
        err.to_string(),
        "config built-in: [tun] mtu = 100 is below the minimum 1280, the smallest MTU IPv6 allows"
    );

    let mut config = Config::default();
    config.peers.push(PeerConfig {
        key: PublicKey([1; 32]),
        endpoints: vec!["a:1".into()],
        terms: Terms::quota(0, 1),
    });
    let err = config
        .validate(Path::new("built-in"))
        .expect_err("zero terms");
    assert!(err.to_string().contains("[[peer]] #1 terms"), "{err}");
}

// ---- never panics ----

/// Lines that look like this schema, so the fuzzing reaches past the TOML parser.
fn schema_line() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "state_dir",
        "control_socket",
        "address_prefix",
        "anonymity",
        "enabled",
        "name",
        "mtu",
        "https",
        "server_name",
        "acme",
        "acme_directory",
        "acme_email",
        "acme_ca",
        "cert",
        "key",
        "root",
        "upstream",
        "endpoints",
        "terms",
        "listen",
        "tun",
        "peer",
        "rate",
        "bogus",
    ]);
    let values = prop::sample::select(vec![
        "1",
        "-1",
        "0x07",
        "70000",
        "true",
        "\"\"",
        "\"/x\"",
        "\"x\"",
        "\"fast\"",
        "[\"[::]:443\"]",
        "[\"a:1\"]",
        "[1]",
        "[]",
        "{}",
        "1.5",
        "1979-05-27",
        "\"http://a\"",
        "\"50GiB/30d\"",
        "\"32KiB/s\"",
        "\"0B/s\"",
        "\"127.0.0.1:9\"",
        "\"0101010101010101010101010101010101010101010101010101010101010101\"",
    ]);
    let headers = prop::sample::select(vec![
        "[tun]",
        "[listen]",
        "[cover]",
        "[home]",
        "[[peer]]",
        "[metrics]",
        "[padding]",
        "[bogus]",
        "[peer]",
    ]);
    prop_oneof![
        (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
        headers.prop_map(str::to_owned),
    ]
}

proptest! {
    #[test]
    fn from_toml_never_panics_on_arbitrary_strings(text in "\\PC*") {
        if let Err(e) = parse(&text) {
            prop_assert!(!e.to_string().contains('\n'), "{}", e);
        }
    }

    #[test]
    fn from_toml_never_panics_on_arbitrary_bytes_as_text(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = parse(&text) {
            prop_assert!(!e.to_string().contains('\n'), "{}", e);
        }
    }

    #[test]
    fn from_toml_never_panics_on_schema_like_files(lines in prop::collection::vec(schema_line(), 0..12)) {
        let text = lines.join("\n");
        match parse(&text) {
            Ok(config) => prop_assert!(config.validate(Path::new(FILE)).is_ok()),
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.starts_with(&format!("config {FILE}: ")), "{}", message);
                prop_assert!(!message.contains('\n'), "{}", message);
            }
        }
    }
}

// ---- [nat] ----

#[test]
fn nat_relaying_and_its_limits() {
    let d = parse_ok("").nat;
    assert!(d.relay);
    assert_eq!(d.relay_rate, ByteRate::per_sec(8 << 20));
    assert_eq!(d.relay_total, 100 << 30);
    assert_eq!(d.retry_direct, std::time::Duration::from_secs(60));
    let c = parse_ok(
        "[nat]\nrelay = false\nrelay_rate = \"1MiB/s\"\nrelay_total = \"5GiB\"\nretry_direct = \"2s\"\n",
    )
    .nat;
    assert!(!c.relay);
    assert_eq!(c.relay_rate, ByteRate::per_sec(1 << 20));
    assert_eq!(c.relay_total, 5 << 30);
    assert_eq!(c.retry_direct, std::time::Duration::from_secs(2));
    invalid(
        "[nat]\nrelay_rate = \"0B/s\"\n",
        "nat.relay_rate",
        &["[nat] relay_rate = \"0B/s\"", "above zero", "relay = false"],
    );
    invalid(
        "[nat]\nrelay_rate = \"fast\"\n",
        "nat.relay_rate",
        &["[nat] relay_rate = \"fast\" is not a rate"],
    );
    invalid(
        "[nat]\nrelay_total = \"0B\"\n",
        "nat.relay_total",
        &["[nat] relay_total = \"0B\"", "above zero"],
    );
    invalid(
        "[nat]\nrelay_total = \"lots\"\n",
        "nat.relay_total",
        &["[nat] relay_total = \"lots\" is not an amount of bytes"],
    );
    invalid(
        "[nat]\nretry_direct = \"0s\"\n",
        "nat.retry_direct",
        &["[nat] retry_direct = \"0s\"", "at least 1s"],
    );
    invalid(
        "[nat]\nretry_direct = \"soon\"\n",
        "nat.retry_direct",
        &["[nat] retry_direct = \"soon\" is not a duration"],
    );
}

#[test]
fn nat_port_mapping_is_on_by_default_and_can_be_turned_off() {
    assert!(parse_ok("").nat.port_mapping);
    assert!(parse_ok("[nat]\n").nat.port_mapping);
    assert!(parse_ok("[nat]\nport_mapping = true\n").nat.port_mapping);
    assert!(!parse_ok("[nat]\nport_mapping = false\n").nat.port_mapping);
}

#[test]
fn nat_port_mapping_must_be_a_boolean() {
    invalid(
        "[nat]\nport_mapping = \"no\"\n",
        "nat.port_mapping",
        &["[nat] port_mapping must be true or false, found string \"no\""],
    );
    let message = unknown("[nat]\nupnp = false\n", "[nat]", "upnp");
    assert!(
        message.ends_with(
            "expected one of `port_mapping`, `relay`, `relay_rate`, `relay_total`, `retry_direct`"
        ),
        "{message}"
    );
    invalid(
        "nat = true\n",
        "nat",
        &["nat must be a table ([nat]), found boolean true"],
    );
}

// ---- [agreements] ----

#[test]
fn proposals_are_taken_by_default_and_can_be_refused() {
    assert!(parse_ok("").agreements.proposals);
    assert!(parse_ok("[agreements]\n").agreements.proposals);
    assert!(
        !parse_ok("[agreements]\nproposals = false\n")
            .agreements
            .proposals
    );
    invalid(
        "[agreements]\nproposals = \"no\"\n",
        "agreements.proposals",
        &["[agreements] proposals must be true or false, found string \"no\""],
    );
    let message = unknown(
        "[agreements]\nproposal = false\n",
        "[agreements]",
        "proposal",
    );
    assert!(message.ends_with("expected `proposals`"), "{message}");
}

// ---- [dns] and [names] ----

#[test]
fn dns_and_names_parse() {
    let c = parse_ok(&format!(
        "[dns]\nlisten = \"127.0.0.1:5353\"\nsrv = {{ \"_xmpp-server._tcp\" = 5269, \"_matrix._tcp\" = 8448 }}\n\
         [names]\nchat = \"{}\"\nmy-relay2 = \"{}\"\n",
        hex_key(1),
        hex_key(2)
    ));
    assert_eq!(c.dns.listen, Some("127.0.0.1:5353".parse().expect("addr")));
    assert_eq!(c.dns.srv.get("_xmpp-server._tcp"), Some(&5269));
    assert_eq!(c.dns.srv.get("_matrix._tcp"), Some(&8448));
    assert_eq!(c.names.get("chat"), Some(&PublicKey([1; 32])));
    assert_eq!(c.names.len(), 2);
    let off = parse_ok("");
    assert_eq!(off.dns.listen, None);
    assert!(off.names.is_empty());
    assert!(off.dns.txt.is_empty());
}

#[test]
fn dns_txt_takes_a_string_or_a_list_of_strings() {
    let longest = "t".repeat(255);
    let c = parse_ok(&format!(
        "[dns]\ntxt = {{ \"_xmppconnect\" = \"_xmpp-client-websocket=wss://chat.umbra/ws\", \
         \"_a.b-c._d\" = [\"one\", \"\", \"{longest}\"] }}\n"
    ));
    assert_eq!(
        c.dns.txt.get("_xmppconnect"),
        Some(&vec![
            "_xmpp-client-websocket=wss://chat.umbra/ws".to_string()
        ])
    );
    assert_eq!(
        c.dns.txt.get("_a.b-c._d"),
        Some(&vec!["one".to_string(), String::new(), longest])
    );
    // A table of its own, the way a long list reads best.
    let c = parse_ok("[dns.txt]\n_xmppconnect = [\"a\", \"b\"]\n");
    assert_eq!(c.dns.txt.get("_xmppconnect").map(Vec::len), Some(2));
}

#[test]
fn dns_txt_errors_name_the_owner() {
    invalid(
        "[dns]\ntxt = \"_xmppconnect\"\n",
        "dns.txt",
        &["[dns] txt", "a table of owners and texts"],
    );
    invalid(
        "[dns]\ntxt = { \"_x\" = 5 }\n",
        "dns.txt._x",
        &["a string or a list of strings"],
    );
    invalid(
        "[dns]\ntxt = { \"_x\" = [\"a\", 5] }\n",
        "dns.txt._x",
        &["entry 2"],
    );
    invalid(
        "[dns]\ntxt = { \"_X\" = \"a\" }\n",
        "dns.txt._X",
        &["[dns.txt] \"_X\"", "lowercase"],
    );
    for owner in ["", "a..b", ".a", "-a", "a-", "a b", "a.umbra!"] {
        invalid(
            &format!("[dns]\ntxt = {{ \"{owner}\" = \"a\" }}\n"),
            &format!("dns.txt.{owner}"),
            &["[dns.txt]", "such as \"_xmppconnect\""],
        );
    }
    let label = "a".repeat(64);
    invalid(
        &format!("[dns]\ntxt = {{ \"{label}\" = \"a\" }}\n"),
        &format!("dns.txt.{label}"),
        &["not 1 to 63 characters"],
    );
    let owner = [
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(60),
        "d".repeat(3),
    ]
    .join(".");
    invalid(
        &format!("[dns]\ntxt = {{ \"{owner}\" = \"a\" }}\n"),
        &format!("dns.txt.{owner}"),
        &["is 186 characters long", "at most 180"],
    );
    invalid(
        &format!(
            "[dns]\ntxt = {{ \"_x\" = [\"a\", \"{}\"] }}\n",
            "é".repeat(128)
        ),
        "dns.txt._x",
        &["string 2 is 256 bytes long", "at most 255"],
    );
    invalid(
        "[dns]\ntxt = { \"_x\" = [] }\n",
        "dns.txt._x",
        &["has 0 strings; give 1 to 16"],
    );
    let many = vec!["\"a\""; 17].join(", ");
    invalid(
        &format!("[dns]\ntxt = {{ \"_x\" = [{many}] }}\n"),
        "dns.txt._x",
        &["has 17 strings"],
    );
}

#[test]
fn dns_and_names_errors_name_the_key() {
    invalid(
        "[dns]\nlisten = \"0.0.0.0:53\"\n",
        "dns.listen",
        &["[dns] listen = \"0.0.0.0:53\" is not a loopback address"],
    );
    invalid(
        "[dns]\nsrv = { \"xmpp\" = 5269 }\n",
        "dns.srv.xmpp",
        &["is not a service", "_xmpp-server._tcp"],
    );
    invalid(
        "[dns]\nsrv = { \"_xmpp._tcp\" = 0 }\n",
        "dns.srv._xmpp._tcp",
        &["is not a port"],
    );
    invalid(
        "[dns]\nsrv = { \"_xmpp._tcp\" = 70000 }\n",
        "dns.srv._xmpp._tcp",
        &["is not a port"],
    );
    invalid(
        &format!("[names]\nChat = \"{}\"\n", hex_key(1)),
        "names.Chat",
        &["lowercase"],
    );
    let long = "a".repeat(55);
    invalid(
        &format!("[names]\n{long} = \"{}\"\n", hex_key(1)),
        &format!("names.{long}"),
        &["the length of a node's own name"],
    );
    invalid(
        "[names]\nchat = \"not a key\"\n",
        "names.chat",
        &["is not a public key"],
    );
}

// ---- [socks] and [[expose]] ----

#[test]
fn socks_and_expose_parse() {
    let c = parse_ok(
        "[socks]\nlisten = \"127.0.0.1:1080\"\n\
         [[expose]]\nport = 5269\nto = \"127.0.0.1:5269\"\n\
         [[expose]]\nport = 80\nto = \"[::1]:8080\"\n",
    );
    assert_eq!(
        c.socks.listen,
        Some("127.0.0.1:1080".parse().expect("addr"))
    );
    assert_eq!(c.expose.len(), 2);
    assert_eq!(c.expose[0].port, 5269);
    assert_eq!(c.expose[1].to, "[::1]:8080".parse().expect("addr"));
    let off = parse_ok("");
    assert_eq!(off.socks.listen, None);
    assert!(off.expose.is_empty());
}

#[test]
fn socks_and_expose_errors_name_the_key() {
    invalid(
        "[socks]\nlisten = \"0.0.0.0:1080\"\n",
        "socks.listen",
        &["[socks] listen = \"0.0.0.0:1080\" is not a loopback address"],
    );
    assert!(matches!(
        parse("[socks]\nport = 1080\n"),
        Err(ConfigError::UnknownKey { .. })
    ));
    invalid(
        "[[expose]]\nport = 61000\nto = \"127.0.0.1:80\"\n",
        "expose[1].port",
        &[
            "[[expose]] #1 port = 61000 collides with the ports the SOCKS proxy connects from (61000 to 65535)",
        ],
    );
    invalid(
        "[[expose]]\nport = 80\nto = \"127.0.0.1:80\"\n[[expose]]\nport = 80\nto = \"127.0.0.1:81\"\n",
        "expose[2].port",
        &["[[expose]] #2 port = 80 is exposed by [[expose]] #1 already"],
    );
    invalid(
        "[[expose]]\nport = 0\nto = \"127.0.0.1:80\"\n",
        "expose[1].port",
        &["is not a port (1 to 65535)"],
    );
    invalid(
        "[[expose]]\nport = 80\n",
        "expose[1].to",
        &["has no destination", "127.0.0.1:80"],
    );
    invalid(
        "[[expose]]\nport = 80\nto = \"0.0.0.0:80\"\n",
        "expose[1].to",
        &["is not an address to connect to"],
    );
    invalid(
        "[[expose]]\nport = 80\nto = \"localhost:80\"\n",
        "expose[1].to",
        &["is not a socket address"],
    );
    invalid("[expose]\nport = 80\n", "expose", &["[[expose]]"]);
}
