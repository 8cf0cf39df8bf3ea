//! A node that runs (docs/architecture.md, "The service"): `umbra run` in its own network namespace
//! brings up `umbra0` with its address, route and MTU, answers on its
//! control socket, survives malformed requests, refuses a second daemon on
//! the same state, reloads on SIGHUP and removes everything on SIGTERM.

use std::time::Duration;

use umbra_tests::netns::{netns, prepare, require_root, temp_dir};

#[test]
fn node_runs_in_a_namespace() {
    require_root();
    let ns = netns("node");
    let dir = temp_dir("node");
    let mut d = prepare(dir.path(), "[listen]\nhttps = []\n");
    d.start(&ns).expect("umbra run starts");

    // The identity was created on first run, mode 0600.
    let key = d.state_dir.join("identity.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key).expect("key").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "identity.key mode");

    let status = d.cli_json(&["status", "--json"]).expect("umbra cli");
    let addr = status["address"].as_str().expect("address").to_string();
    assert!(addr.starts_with("6"), "address {addr} is not in 600::/8");
    assert!(status["subnet"].as_str().expect("subnet").ends_with("/64"));
    assert_eq!(status["public_key"].as_str().expect("key").len(), 64);
    assert_eq!(status["tun"]["name"], "umbra0");
    assert_eq!(status["tun"]["mtu"], 65535);
    assert_eq!(status["links_up"], 0);
    assert_eq!(status["circuits"], 0);
    assert_eq!(status["threads"], 1, "one worker thread by default");

    // `umbra address` works offline from the state dir and agrees.
    let out = d.cli(&["address"]).expect("run umbra cli");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), addr);

    // The kernel's view: address, no link-local, route, MTU.
    let addrs = ns
        .exec(&["ip", "-6", "addr", "show", "dev", "umbra0"])
        .expect("command in the namespace");
    assert!(
        addrs.contains(&format!("{addr}/128")),
        "ip -6 addr:\n{addrs}"
    );
    assert!(!addrs.contains("fe80"), "link-local on umbra0:\n{addrs}");
    let routes = ns
        .exec(&["ip", "-6", "route", "show", "dev", "umbra0"])
        .expect("command in the namespace");
    assert!(routes.contains("600::/7"), "ip -6 route:\n{routes}");
    let link = ns
        .exec(&["ip", "link", "show", "umbra0"])
        .expect("command in the namespace");
    assert!(link.contains("mtu 65535"), "ip link:\n{link}");

    // Malformed requests get an error answer; the daemon keeps running.
    for bad in ["garbage", "{\"cmd\":\"bogus\"}", "{", "\u{7f}\u{1}"] {
        let answer = d.request(bad).expect("an answer to a malformed request");
        assert!(
            answer.contains("\"ok\":false"),
            "answer to {bad:?}: {answer}"
        );
    }
    // Absurd numbers are refused with the bound, not wrapped or stored.
    for (bad, says) in [
        (
            "{\"cmd\":\"invite\",\"ttl_secs\":18446744073709551615}",
            "90 days",
        ),
        ("{\"cmd\":\"invite\",\"ttl_secs\":0}", "90 days"),
        (
            "{\"cmd\":\"propose\",\"to\":\"602::1\",\"ttl_secs\":8640000000}",
            "30 days",
        ),
        ("{\"cmd\":\"invite\",\"ttl_secs\":-1}", "bad request"),
        ("{\"cmd\":\"revoke\",\"id\":1e300}", "bad request"),
    ] {
        let answer = d.request(bad).expect("an answer to an absurd request");
        assert!(
            answer.contains("\"ok\":false") && answer.contains(says),
            "answer to {bad}: {answer}"
        );
    }
    // A request over the stated limit (64 KiB) is answered with the limit,
    // and the connection closed.
    let long = "x".repeat(100_000);
    let answer = d.request(&long).unwrap_or_default();
    assert!(answer.contains("longer than 65536 bytes"), "{answer}");
    assert!(
        d.try_wait().is_none(),
        "daemon died on bad input:\n{}",
        d.log_text()
    );
    assert_eq!(
        d.cli_json(&["status", "--json"]).expect("umbra cli")["address"],
        addr.as_str()
    );

    // A second daemon on the same state directory is refused clearly.
    let mut second = std::process::Command::new(umbra_tests::netns::umbra_bin());
    let out = second
        .args(["--config"])
        .arg(&d.config)
        .arg("--control")
        .arg(dir.path().join("second.sock"))
        .arg("run")
        .output()
        .expect("second daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "second daemon said: {err}");

    // SIGHUP reloads; the daemon stays up.
    d.signal("HUP").expect("signal the daemon");
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.try_wait().is_none());
    assert!(
        d.log_text().contains("config reloaded"),
        "log:\n{}",
        d.log_text()
    );

    // SIGTERM: clean exit, interface and socket gone.
    d.signal("TERM").expect("signal the daemon");
    let status = d
        .wait(Duration::from_secs(10))
        .expect("daemon exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        d.log_text()
    );
    let links = ns
        .exec(&["ip", "link", "show"])
        .expect("command in the namespace");
    assert!(!links.contains("umbra0"), "umbra0 still there:\n{links}");
    assert!(!d.socket.exists(), "control socket left behind");

    // A stale socket file from a crash does not stop the next start.
    std::os::unix::net::UnixListener::bind(&d.socket).expect("stale socket");
    d.start(&ns).expect("umbra run starts");
    assert_eq!(
        d.cli_json(&["status", "--json"]).expect("umbra cli")["address"],
        addr.as_str()
    );
}

#[test]
fn prefix_and_threads_from_config_take_effect() {
    require_root();
    let ns = netns("pfx");
    let dir = temp_dir("pfx");
    let mut d = prepare(
        dir.path(),
        "address_prefix = 0x02\nthreads = 3\n[tun]\nname = \"ygg9\"\n[listen]\nhttps = []\n",
    );
    d.start(&ns).expect("umbra run starts");
    let status = d.cli_json(&["status", "--json"]).expect("umbra cli");
    assert_eq!(status["threads"], 3, "the runtime's worker threads");
    let addr = status["address"].as_str().expect("address");
    assert!(addr.starts_with("2"), "address {addr} should be in 200::/8");
    let routes = ns
        .exec(&["ip", "-6", "route", "show", "dev", "ygg9"])
        .expect("command in the namespace");
    assert!(routes.contains("200::/7"), "ip -6 route:\n{routes}");
}

#[test]
fn tells_systemd_ready_reloading_stopping() {
    require_root();
    let ns = netns("sdn");
    let dir = temp_dir("sdn");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut d = prepare(dir.path(), "[tun]\nname = \"sdn0\"\n[listen]\nhttps = []\n");
    d.env
        .push(("NOTIFY_SOCKET".into(), notify_path.display().to_string()));
    d.start(&ns).expect("umbra run starts");
    let next = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().contains("READY=1"));
    d.signal("HUP").expect("signal the daemon");
    assert!(next().contains("RELOADING=1"));
    assert!(next().contains("READY=1"));
    d.signal("TERM").expect("signal the daemon");
    assert!(next().contains("STOPPING=1"));
    assert!(d.wait(Duration::from_secs(10)).expect("exits").success());
}

/// A task the node cannot work without dies (here the datapath, because its
/// TUN was deleted under it): the daemon says why and exits 1, so systemd
/// restarts it, instead of answering `status` while it routes nothing.
#[test]
fn a_dead_datapath_takes_the_daemon_down_loudly() {
    require_root();
    let ns = netns("vital");
    let dir = temp_dir("vital");
    let mut d = prepare(
        dir.path(),
        "[tun]\nname = \"vital0\"\n[listen]\nhttps = []\n",
    );
    d.start(&ns).expect("umbra run starts");
    assert!(d.cli_json(&["status", "--json"]).is_ok());
    ns.exec(&["ip", "link", "del", "vital0"])
        .expect("delete the TUN");
    let status = d
        .wait(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the daemon stayed up without its TUN:\n{}", d.log_text()));
    let log = d.log_text();
    assert_eq!(status.code(), Some(1), "exit status {status}; log:\n{log}");
    assert!(
        log.contains("the datapath task failed: reading the TUN has failed for 2 s"),
        "log:\n{log}"
    );
    assert!(!d.socket.exists(), "control socket left behind");
}
