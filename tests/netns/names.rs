//! Names over the overlay (docs/architecture.md, "Names"): a node's
//! programs reach another node by its `.umbra` name through the system's
//! own resolver (glibc, `/etc/resolv.conf` naming the node's responder),
//! and `ping` by name crosses a circuit.

use umbra_tests::netns::overlay::Overlay;
use umbra_tests::netns::require_root;

/// `/etc/netns/NAME/resolv.conf`, which `ip netns exec` puts in place of
/// `/etc/resolv.conf` for commands in the namespace; removed on drop.
struct NetnsResolvConf(std::path::PathBuf);

impl NetnsResolvConf {
    fn new(ns: &str, text: &str) -> NetnsResolvConf {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).expect("/etc/netns/NAME");
        std::fs::write(dir.join("resolv.conf"), text).expect("resolv.conf");
        NetnsResolvConf(dir)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_program_reaches_another_node_by_its_umbra_name() {
    require_root();
    let o = Overlay::build("nm", 3, &[(0, 1), (1, 2)], |i, _| {
        let dns = if i == 0 {
            "\n[dns]\nlisten = \"127.0.0.1:53\"\n"
        } else {
            ""
        };
        format!("anonymity = \"fast\"{dns}")
    });
    let name = o.status(2)["name"]
        .as_str()
        .expect("status names the node")
        .to_string();
    let _conf = NetnsResolvConf::new(o.ns[0].name(), "nameserver 127.0.0.1\n");
    let out = o.ns[0].run(&["getent", "ahostsv6", &name]).expect("getent");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with(&o.addrs[2])),
        "getent ahostsv6 {name}: {text}"
    );
    let ping = o.ns[0]
        .run(&["ping", "-6", "-c", "3", "-W", "5", &name])
        .expect("ping");
    let said = String::from_utf8_lossy(&ping.stdout);
    eprintln!("{said}");
    assert!(
        ping.status.success(),
        "ping {name}: {said}\nlogs:\n{}",
        o.logs()
    );
    // A name outside .umbra gets nothing from the node's responder.
    let out = o.ns[0]
        .run(&["getent", "ahostsv6", "example.com"])
        .expect("getent");
    assert!(!out.status.success(), "example.com resolved through umbra");
}
