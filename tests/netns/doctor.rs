//! `umbra doctor` (docs/cli.md, "umbra doctor") run in network namespaces:
//! all checks pass on a good setup; each thing broken on purpose (the state
//! directory's mode, the identity's mode, the listen port held by another
//! process, an invalid config, a partner nobody listens for) fails its own
//! check with a fix that names it, and exit code 1; against a running
//! daemon with a live link, the port it holds and the partner pass.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use umbra_tests::netns::{
    Netns, init_keys, netns, peer, prepare, require_root, spawn_test_helper, start, temp_dir,
    test_role, umbra_bin, veth, wait_for,
};

/// How long the link between the two running nodes may take.
const LINK_WAIT: Duration = Duration::from_secs(30);

/// Runs `umbra --config CONFIG doctor --json` inside `ns`: its exit code
/// and its checks.
fn doctor(ns: &Netns, config: &Path) -> (i32, Vec<Value>) {
    let out = ns
        .command(umbra_bin())
        .arg("--config")
        .arg(config)
        .args(["doctor", "--json"])
        .output()
        .expect("run umbra doctor");
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "umbra doctor --json printed no JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = checks.as_array().expect("a JSON array").clone();
    for c in &checks {
        assert!(
            ["ok", "warn", "fail", "skip"].contains(&c["status"].as_str().unwrap_or("")),
            "bad status in {c}"
        );
        assert!(c["detail"].is_string() && c["check"].is_string(), "{c}");
        if c["status"] == "fail" || c["status"] == "warn" {
            assert!(
                c["fix"].as_str().is_some_and(|f| !f.is_empty()),
                "no fix in {c}"
            );
        }
    }
    (out.status.code().expect("an exit code"), checks)
}

/// The check named `name` (exactly, or `name` as the start of it).
fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name || c["check"].as_str().is_some_and(|n| n.starts_with(name)))
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

/// Asserts that exactly the check `name` failed (with a fix containing
/// each of `fix_has`) and that doctor exited 1.
fn fails_only(code: i32, checks: &[Value], name: &str, fix_has: &[&str]) {
    let c = check(checks, name);
    assert_eq!(c["status"], "fail", "{name}: {checks:#?}");
    let fix = c["fix"].as_str().unwrap_or_default();
    for want in fix_has {
        assert!(fix.contains(want), "{name}'s fix {fix:?} lacks {want:?}");
    }
    let failed: Vec<&Value> = checks.iter().filter(|c| c["status"] == "fail").collect();
    assert_eq!(failed.len(), 1, "only {name} should fail: {failed:#?}");
    assert_eq!(code, 1, "exit code with a failed check");
}

/// The checks that must pass on a good offline setup.
const GOOD: &[&str] = &[
    "config",
    "tun device",
    "capabilities",
    "state directory",
    "identity",
    "control socket",
    "listen ",
];

#[test]
fn doctor_passes_a_good_setup_and_names_each_broken_thing() {
    if let Some(role) = test_role() {
        hold_port(&role);
        return;
    }
    require_root();
    let (na, nb) = (netns("da"), netns("db"));
    let (ip_a, ip_b) = veth(&na, &nb, 70);
    let dir = temp_dir("doctor");
    let listen = format!("[listen]\nhttps = [\"{ip_a}:443\"]\n");
    let a = prepare(&dir.path().join("a"), &listen);
    a.init().expect("umbra init");

    // (a) A good setup: exit 0, every relevant check ok, no failure.
    let (code, checks) = doctor(&na, &a.config);
    for name in GOOD {
        assert_eq!(check(&checks, name)["status"], "ok", "{name}: {checks:#?}");
    }
    assert_eq!(
        check(&checks, &format!("listen {ip_a}:443"))["detail"],
        format!("{ip_a}:443 is free")
    );
    assert_eq!(check(&checks, "NAT type")["status"], "skip");
    assert!(
        check(&checks, "NAT type")["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("no daemon answers")),
        "{checks:#?}"
    );
    assert!(!checks.iter().any(|c| c["status"] == "fail"), "{checks:#?}");
    assert_eq!(code, 0, "{checks:#?}");

    // (b) One thing broken at a time.
    // The state directory readable by everyone.
    let state = a.state_dir.clone();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");
    let (code, checks) = doctor(&na, &a.config);
    fails_only(
        code,
        &checks,
        "state directory",
        &[&format!("chmod 700 {}", state.display())],
    );
    assert!(
        check(&checks, "state directory")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("0755")),
        "{checks:#?}"
    );
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).expect("chmod");

    // The identity readable by everyone.
    let key = state.join("identity.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, checks) = doctor(&na, &a.config);
    fails_only(
        code,
        &checks,
        "identity",
        &[&format!("chmod 600 {}", key.display())],
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(doctor(&na, &a.config).0, 0, "all fixed again");

    // The listen port held by another process (this test binary again).
    let hold = format!("{ip_a}:443");
    let mut holder = spawn_test_helper(
        &na,
        "doctor_passes_a_good_setup_and_names_each_broken_thing",
        "hold",
        &[("UMBRA_TEST_HOLD", hold.as_str())],
        &dir.path().join("holder.log"),
    );
    wait_for(
        Duration::from_secs(20),
        "the helper to hold port 443",
        &[],
        || na.listens_tcp(443).then_some(()),
    );
    let (code, checks) = doctor(&na, &a.config);
    fails_only(
        code,
        &checks,
        &format!("listen {hold}"),
        &["sport = :443", "[listen] https"],
    );
    assert!(
        check(&checks, "listen ")["detail"]
            .as_str()
            .is_some_and(|d| d.contains("in use by another process")),
        "{checks:#?}"
    );
    holder.kill();
    wait_for(Duration::from_secs(10), "port 443 free again", &[], || {
        (!na.listens_tcp(443)).then_some(())
    });

    // An invalid config: its own message (file and key) is the detail.
    let bad = dir.path().join("bad.toml");
    let good_text = fs::read_to_string(&a.config).expect("config");
    fs::write(&bad, format!("bogus_key = 1\n{good_text}")).expect("write");
    let (code, checks) = doctor(&na, &bad);
    fails_only(
        code,
        &checks,
        "config",
        &["`bogus_key`", &bad.display().to_string()],
    );
    let detail = check(&checks, "config")["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains(&bad.display().to_string()) && detail.contains("unknown key `bogus_key`"),
        "{detail}"
    );
    assert_eq!(check(&checks, "state directory")["status"], "skip");

    // A partner nobody listens for: b's namespace has no listener.
    let kb = &init_keys(dir.path(), &["b"])[0];
    let with_peer = dir.path().join("peer.toml");
    fs::write(&with_peer, format!("{good_text}\n{}", peer(kb, &ip_b))).expect("write");
    let (code, checks) = doctor(&na, &with_peer);
    let name = format!("partner {}", &kb[..16]);
    fails_only(
        code,
        &checks,
        &name,
        &["partner's node is running", "[[peer]] endpoints"],
    );
    let detail = check(&checks, &name)["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("{ip_b}:443")) && detail.contains("refused"),
        "{detail}"
    );
}

/// The helper role: holds the TCP address `$UMBRA_TEST_HOLD` until killed.
fn hold_port(role: &str) {
    assert_eq!(role, "hold", "unknown helper role");
    let addr = std::env::var("UMBRA_TEST_HOLD").expect("UMBRA_TEST_HOLD");
    let _listener = std::net::TcpListener::bind(&addr).expect("bind the held address");
    eprintln!("holding {addr}");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn doctor_trusts_a_running_daemon_with_a_live_link() {
    require_root();
    let (na, nb) = (netns("ra"), netns("rb"));
    let (ip_a, ip_b) = veth(&na, &nb, 71);
    let dir = temp_dir("doctor-run");
    let keys = init_keys(dir.path(), &["a", "b"]);
    let (ka, kb) = (&keys[0], &keys[1]);
    let conf = |ip: &str, other_key: &str, other_ip: &str| {
        format!(
            "[listen]\nhttps = [\"{ip}:443\"]\n{}",
            peer(other_key, other_ip)
        )
    };
    let mut a = start(&na, &dir.path().join("a"), &conf(&ip_a, kb, &ip_b));
    let b = start(&nb, &dir.path().join("b"), &conf(&ip_b, ka, &ip_a));
    wait_for(LINK_WAIT, "the link a–b up", &[&a, &b], || {
        (a.link_up_to(kb) && b.link_up_to(ka)).then_some(())
    });

    // (c) With a running: its port and its partner pass on its word.
    let (code, checks) = doctor(&na, &a.config);
    let listen = check(&checks, &format!("listen {ip_a}:443"));
    assert_eq!(listen["status"], "ok", "{checks:#?}");
    assert_eq!(
        listen["detail"],
        format!("{ip_a}:443 is held by the running umbra")
    );
    let partner = check(&checks, &format!("partner {}", &kb[..16]));
    assert_eq!(partner["status"], "ok", "{checks:#?}");
    assert!(
        partner["detail"]
            .as_str()
            .is_some_and(|d| d.contains("the link is up")),
        "{partner}"
    );
    assert_eq!(check(&checks, "control socket")["status"], "ok");
    assert_eq!(check(&checks, "tun device")["status"], "ok");
    assert_eq!(code, 0, "{checks:#?}");

    // A listen address added to the config after the start: free, but the
    // daemon does not listen there until it restarts (a warning).
    let text = fs::read_to_string(&a.config).expect("config");
    let one = format!("https = [\"{ip_a}:443\"]");
    assert!(text.contains(&one), "{text}");
    let added = dir.path().join("added.toml");
    let two = format!("https = [\"{ip_a}:443\", \"{ip_a}:8443\"]");
    fs::write(&added, text.replace(&one, &two)).expect("write");
    let (code, checks) = doctor(&na, &added);
    let new_one = check(&checks, &format!("listen {ip_a}:8443"));
    assert_eq!(new_one["status"], "warn", "{checks:#?}");
    assert!(
        new_one["fix"]
            .as_str()
            .is_some_and(|f| f.contains("restart")),
        "{new_one}"
    );
    assert_eq!(
        check(&checks, &format!("listen {ip_a}:443"))["status"],
        "ok"
    );
    assert_eq!(code, 0, "a warning keeps exit code 0: {checks:#?}");

    // With a stopped, the port is free, and b's listener answers TLS as
    // an umbra listener does.
    a.stop();
    let (code, checks) = doctor(&na, &a.config);
    assert_eq!(
        check(&checks, &format!("listen {ip_a}:443"))["detail"],
        format!("{ip_a}:443 is free")
    );
    let partner = check(&checks, &format!("partner {}", &kb[..16]));
    assert_eq!(partner["status"], "ok", "{checks:#?}");
    assert!(
        partner["detail"]
            .as_str()
            .is_some_and(|d| d.contains("answers TCP and TLS with HTTP/2")),
        "{partner}"
    );
    assert_eq!(code, 0, "{checks:#?}");
}
