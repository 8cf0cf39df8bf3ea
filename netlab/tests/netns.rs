//! The lab itself, in real namespaces (root only): veth pairs carry pings,
//! a NAT router masquerades a host on 100.64.0.0/10, and everything goes
//! away on drop and on cleanup.

use umbra_netlab::{
    Filtering, Lab, NatMapping, NatRules, PingOptions, Router, Veth, internet_ip, nat_ip, ping,
};

fn exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

#[test]
fn veth_pings_and_namespaces_go_on_drop_and_cleanup() {
    assert!(
        umbra_netlab::is_root(),
        "this test makes namespaces: run it as root"
    );
    let lab = Lab::new("unl");
    let (a, b) = (lab.netns("a").expect("a"), lab.netns("b").expect("b"));
    let v = Veth::internet(&a, &b, 7).expect("veth");
    assert_eq!(
        v.ips(),
        ("198.18.7.1".to_string(), "198.18.7.2".to_string())
    );
    assert_eq!(a.iface_with_addr("198.18.7.1").expect("iface"), v.a.iface);
    let stats = ping(&a, "198.18.7.2", PingOptions::new(2, 0.2)).expect("ping");
    assert!(stats.success, "{}", stats.output);
    assert_eq!(stats.received(), 2);

    let (name_a, name_b) = (a.name().to_string(), b.name().to_string());
    drop(a);
    assert!(!exists(&name_a), "{name_a} left after drop");
    // What the handles did not remove, the cleanup does; it counts both.
    std::mem::forget(b);
    let done = lab.cleanup();
    assert!(!exists(&name_b), "{name_b} left after cleanup");
    assert_eq!(done.namespaces_deleted, 2, "{done}");
    assert!(done.left.is_empty());
}

#[test]
fn a_host_behind_nat_reaches_the_internet() {
    assert!(
        umbra_netlab::is_root(),
        "this test makes namespaces: run it as root"
    );
    if !umbra_netlab::has_tool("nft") {
        eprintln!("skipped: no nft (apt-get install nftables)");
        return;
    }
    let lab = Lab::new("unat");
    let host = lab.netns("host").expect("host");
    let router = lab.netns("router").expect("router");
    let server = lab.netns("server").expect("server");
    Veth::new(
        (&host, "eth0", nat_ip(1, 2)),
        (&router, "inside", nat_ip(1, 1)),
        24,
    )
    .expect("inside veth");
    Veth::new(
        (&router, "outside", internet_ip(1, 1)),
        (&server, "eth0", internet_ip(1, 2)),
        24,
    )
    .expect("outside veth");
    let rules = NatRules {
        mapping: NatMapping::EndpointIndependent,
        filtering: Filtering::Drop,
    };
    let router = Router::nat(router, "outside", rules).expect("nat");
    Router::route_via(&host, nat_ip(1, 1)).expect("default route");
    // The server has no route to 100.64.0.0/10: its replies come back only
    // because they go to the router's outside address.
    let stats = ping(&host, "198.18.1.2", PingOptions::new(2, 0.2)).expect("ping");
    assert!(stats.success, "{}", stats.output);
    drop(router);
}
