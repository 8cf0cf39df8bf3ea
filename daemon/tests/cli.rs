//! The command line without a running daemon: config errors, `init`,
//! `address`, `keygen`, and a bad identity file. No root needed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn umbra(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_umbra"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("UMBRA_CONFIG")
        .output()
        .expect("run umbra")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config_in(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("umbra.toml");
    fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\ncontrol_socket = \"{}\"\n{extra}",
            dir.join("state").display(),
            dir.join("control.sock").display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn bad_config_exits_2_with_one_line_naming_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (extra, key) in [
        ("[tun]\nmtu = 70000\n", "mtu"),
        ("[tun]\nbogus = 1\n", "bogus"),
        ("anonymity = \"loud\"\n", "anonymity"),
        ("nonsense\n", ""),
    ] {
        let cfg = config_in(dir.path(), extra);
        let out = umbra(&cfg, &["address"]);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one line for {extra:?}: {err}"
        );
        assert!(
            err.contains(&cfg.display().to_string()),
            "names the file: {err}"
        );
        assert!(err.contains(key), "names {key}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

#[test]
fn a_named_config_that_does_not_exist_exits_2_for_every_command_but_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such.toml");
    for args in [
        &["run"][..],
        &["address"],
        &["status"],
        &["peers"],
        &["invite"],
        &["agreements"],
    ] {
        let out = umbra(&missing, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&missing.display().to_string()) && err.contains("does not exist"),
            "{args:?}: {err}"
        );
    }
    // The same through UMBRA_CONFIG.
    let out = Command::new(env!("CARGO_BIN_EXE_umbra"))
        .arg("address")
        .env("UMBRA_CONFIG", &missing)
        .output()
        .expect("run umbra");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Nothing was made in its place, and no state directory either.
    assert!(!missing.exists());
    assert_eq!(fs::read_dir(dir.path()).expect("read dir").count(), 0);
    // `init` writes the named file.
    let out = umbra(
        &missing,
        &[
            "init",
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(missing.exists());
}

#[test]
fn init_creates_then_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("etc/umbra.toml");
    let state = dir.path().join("state");
    let args = [
        "init",
        "--state-dir",
        state.to_str().expect("utf8"),
        "--json",
    ];
    let first = umbra(&cfg, &args);
    assert!(first.status.success(), "{}", stderr(&first));
    let doc: serde_json::Value = serde_json::from_slice(&first.stdout).expect("json");
    assert_eq!(doc["created_identity"], true);
    assert_eq!(doc["created_config"], true);
    let key_text = fs::read_to_string(state.join("identity.key")).expect("key");
    let mode = fs::metadata(state.join("identity.key"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The written config is valid and commented.
    let cfg_text = fs::read_to_string(&cfg).expect("config");
    assert!(cfg_text.contains('#'), "commented default:\n{cfg_text}");

    // Edit the config, run init again: nothing is overwritten.
    fs::write(&cfg, format!("{cfg_text}\n# operator's note\n")).expect("edit");
    let second = umbra(&cfg, &args);
    assert!(second.status.success(), "{}", stderr(&second));
    let doc2: serde_json::Value = serde_json::from_slice(&second.stdout).expect("json");
    assert_eq!(doc2["created_identity"], false);
    assert_eq!(doc2["created_config"], false);
    assert_eq!(doc2["address"], doc["address"]);
    assert_eq!(
        fs::read_to_string(state.join("identity.key")).expect("key"),
        key_text
    );
    assert!(
        fs::read_to_string(&cfg)
            .expect("cfg")
            .contains("operator's note")
    );

    // `address` reads the state directory offline and agrees with init.
    let out = umbra(&cfg, &["address"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        doc["address"].as_str().expect("addr")
    );
}

#[test]
fn world_readable_or_corrupt_key_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_in(dir.path(), "");
    let state = dir.path().join("state");
    assert!(umbra(&cfg, &["init"]).status.success());
    let key = state.join("identity.key");

    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = umbra(&cfg, &["address"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(err.contains(&key.display().to_string()), "{err}");

    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::write(&key, "not a key\n").expect("corrupt");
    let out = umbra(&cfg, &["address"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("corrupt"), "{}", stderr(&out));
}

#[test]
fn address_without_identity_says_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_in(dir.path(), "");
    let out = umbra(&cfg, &["address"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("umbra init"), "{}", stderr(&out));
}

#[test]
fn keygen_meets_strength_and_prints_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_in(dir.path(), "");
    let out = umbra(&cfg, &["keygen", "--strength", "8", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(doc["strength"].as_u64().expect("strength") >= 8);
    let key = doc["public_key"].as_str().expect("key");
    assert!(key.starts_with("00"), "8 leading zero bits: {key}");
    // Second address byte = leading zero bits.
    let addr: std::net::Ipv6Addr = doc["address"].as_str().expect("a").parse().expect("ipv6");
    assert_eq!(addr.octets()[0], 0x06);
    assert_eq!(
        u64::from(addr.octets()[1]),
        doc["strength"].as_u64().expect("s")
    );

    let out = umbra(&cfg, &["keygen", "--strength", "99"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn status_without_daemon_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_in(dir.path(), "");
    let out = umbra(&cfg, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the daemon"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn doctor_prints_its_checks_and_exits_1_on_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_in(dir.path(), "[tun]\nenabled = false\n[listen]\nhttps = []\n");
    assert!(umbra(&cfg, &["init"]).status.success());
    let out = umbra(&cfg, &["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let status = |name: &str| {
        checks
            .as_array()
            .and_then(|a| a.iter().find(|c| c["check"] == name))
            .map(|c| c["status"].clone())
            .unwrap_or_else(|| panic!("no {name} in {checks}"))
    };
    for name in [
        "config",
        "capabilities",
        "state directory",
        "identity",
        "control socket",
    ] {
        assert_eq!(status(name), "ok", "{name}: {checks:#}");
    }
    assert_eq!(status("tun device"), "skip");
    assert_eq!(status("listen"), "skip");
    assert_eq!(status("NAT type"), "skip");
    let failed = checks
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["status"] == "fail"));
    assert_eq!(
        out.status.code(),
        Some(if failed { 1 } else { 0 }),
        "{checks:#}"
    );

    // A bad config is a failed check (exit 1), not a usage error (exit 2).
    fs::write(&cfg, "[tun]\nmtu = 70000\n").expect("write");
    let out = umbra(&cfg, &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(checks[0]["check"], "config");
    assert_eq!(checks[0]["status"], "fail");
    assert!(stderr(&out).contains("checks failed"), "{}", stderr(&out));
    // For people: one row per check, the fix under a failure.
    let out = umbra(&cfg, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("FAIL  config"), "{text}");
    assert!(text.contains("fix: "), "{text}");
}

/// A config for `umbra run` without a TUN or listeners, so it needs no root.
fn offline_node(dir: &Path) -> std::path::PathBuf {
    let cfg = config_in(dir, "[tun]\nenabled = false\n[listen]\nhttps = []\n");
    let out = umbra(&cfg, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    cfg
}

fn run_briefly(cfg: &Path) -> Output {
    Command::new("timeout")
        .args(["10"])
        .arg(env!("CARGO_BIN_EXE_umbra"))
        .arg("--config")
        .arg(cfg)
        .arg("run")
        .env_remove("UMBRA_CONFIG")
        .output()
        .expect("run umbra")
}

#[test]
fn a_corrupt_or_newer_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = offline_node(dir.path());
    let db = dir.path().join("state/umbra.db");

    fs::write(&db, b"not a database, but someone's ledgers once").expect("write");
    let before = fs::read(&db).expect("read");
    let out = run_briefly(&cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&db.display().to_string())
            && err.contains("untouched")
            && err.contains("not a database"),
        "{err}"
    );
    assert_eq!(fs::read(&db).expect("read"), before, "the file was changed");
    assert!(!dir.path().join("state/umbra.db-wal").exists());

    fs::remove_file(&db).expect("rm");
    let c = rusqlite::Connection::open(&db).expect("sqlite");
    c.execute_batch("PRAGMA user_version = 99; CREATE TABLE future (x);")
        .expect("a newer schema");
    drop(c);
    let before = fs::read(&db).expect("read");
    let out = run_briefly(&cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("schema version 99, newer than this umbra") && err.contains("upgrade umbra"),
        "{err}"
    );
    assert_eq!(fs::read(&db).expect("read"), before, "the file was changed");
}

#[test]
fn a_state_directory_this_user_cannot_write_is_named() {
    let uid = fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    if uid != "0" {
        eprintln!("skipped: needs root to run umbra as another user");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = offline_node(dir.path());
    let state = dir.path().join("state");
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(env!("CARGO_BIN_EXE_umbra"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env_remove("UMBRA_CONFIG")
        .output()
        .expect("runuser");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the state directory {} is not writable",
            state.display()
        )),
        "{err}"
    );
}

/// A free UDP port on loopback (bound and released: a race, but only with
/// other tests of this machine).
/// A loopback port free for both UDP and TCP, as the DNS responder binds
/// both.
fn free_dns_port() -> u16 {
    for _ in 0..100 {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig (bind9-dnsutils; scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `.umbra` DNS responder of a running node, asked by `dig`: its own
/// name, a petname, SRV for an enabled service, NXDOMAIN for a typo,
/// REFUSED outside `.umbra`, and a packet that is not DNS dropped and
/// counted. `umbra address --name` and `status` agree with it.
#[test]
fn the_dns_responder_answers_umbra_names_and_refuses_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_dns_port();
    let pet = "a".repeat(64);
    let cfg = config_in(
        dir.path(),
        &format!(
            "[tun]\nenabled = false\n[listen]\nhttps = []\n[dns]\nlisten = \"127.0.0.1:{port}\"\n\
             srv = {{ \"_xmpp-server._tcp\" = 5269 }}\n[names]\nchat = \"{pet}\"\n"
        ),
    );
    assert_eq!(umbra(&cfg, &["init"]).status.code(), Some(0));
    let name = String::from_utf8_lossy(&umbra(&cfg, &["address", "--name"]).stdout)
        .trim()
        .to_string();
    let addr = String::from_utf8_lossy(&umbra(&cfg, &["address"]).stdout)
        .trim()
        .to_string();
    assert!(name.ends_with(".umbra") && name.len() == 55 + 6, "{name}");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_umbra"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env_remove("UMBRA_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("umbra run");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut daemon);
    let mut answer = String::new();
    for _ in 0..100 {
        // Until the daemon is up, dig reports a refused connection.
        answer = dig(port, &["+short", &name, "AAAA"]);
        if !answer.trim().is_empty() && !answer.contains(";;") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(answer.trim(), addr, "AAAA of its own name");
    // The same port over TCP.
    let tcp = dig(port, &["+tcp", "+short", &name, "AAAA"]);
    assert_eq!(tcp.trim(), addr, "AAAA over TCP");
    let upper = dig(port, &["+short", &name.to_ascii_uppercase(), "AAAA"]);
    assert_eq!(upper.trim(), addr, "names are case-insensitive");
    let pet_addr = dig(port, &["+short", "chat.umbra", "AAAA"]);
    assert!(pet_addr.trim().starts_with('6'), "petname: {pet_addr}");
    let srv = dig(
        port,
        &["+short", &format!("_xmpp-server._tcp.{name}"), "SRV"],
    );
    assert_eq!(srv.trim(), format!("0 0 5269 {name}."), "SRV");
    let mut typo = name.clone();
    typo.replace_range(0..1, if name.starts_with('a') { "b" } else { "a" });
    assert!(dig(port, &[&typo, "AAAA"]).contains("status: NXDOMAIN"));
    assert!(dig(port, &["example.com", "AAAA"]).contains("status: REFUSED"));
    // Not DNS: dropped, counted, and the responder answers on.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    s.send_to(b"\x01\x02 not dns at all", ("127.0.0.1", port))
        .expect("send");
    assert_eq!(dig(port, &["+short", &name, "AAAA"]).trim(), addr);
    let status = Command::new(env!("CARGO_BIN_EXE_umbra"))
        .arg("--config")
        .arg(&cfg)
        .args(["status", "--json"])
        .output()
        .expect("umbra status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status["name"], name.as_str());
    let d = &status["dns"];
    assert_eq!(d["dropped"], 1, "{d}");
    assert_eq!(d["nxdomain"], 1, "{d}");
    assert_eq!(d["refused"], 1, "{d}");
    assert!(d["answered"].as_u64() >= Some(5), "{d}");
}
