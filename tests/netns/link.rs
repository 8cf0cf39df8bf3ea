//! Links (docs/protocol.md, "Invites", and docs/protocol.md, "Agreements"):
//! two nodes link by invite, three by config; a used or
//! expired token is refused; links come back after a restart and the
//! agreement survives it.

use std::time::Duration;

use umbra_tests::netns::{
    Daemon, Netns, init_keys, netns, peer, require_root, start, temp_dir, veth, wait_for,
};

const LINK_WAIT: Duration = Duration::from_secs(30);

fn node(ns: &Netns, dir: &tempfile::TempDir, name: &str, extra: &str) -> Daemon {
    start(
        ns,
        &dir.path().join(name),
        &format!("[tun]\nenabled = false\n{extra}"),
    )
}

#[test]
fn two_nodes_link_by_invite_and_survive_restarts() {
    require_root();
    let (na, nb) = (netns("ia"), netns("ib"));
    let (ip_a, _ip_b) = veth(&na, &nb, 10);
    let dir = temp_dir("invite");
    let mut a = node(
        &na,
        &dir,
        "a",
        &format!("[listen]\nhttps = [\"{ip_a}:443\"]\n"),
    );
    let mut b = node(&nb, &dir, "b", "[listen]\nhttps = []\n");
    let (ka, kb) = (
        a.key().expect("the node key"),
        b.key().expect("the node key"),
    );

    let invite = a
        .cli_json(&["invite", "--terms", "10GiB/30d", "--json"])
        .expect("umbra cli");
    let token = invite["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("umbra1"));
    assert!(
        token[6..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{token}"
    );

    let accepted = b
        .cli_json(&["accept", &token, "--json"])
        .expect("umbra cli");
    assert_eq!(accepted["peer_key"], ka.as_str());
    wait_for(
        LINK_WAIT,
        "the invite link up on both sides",
        &[&a, &b],
        || (a.link_up_to(&kb) && b.link_up_to(&ka)).then_some(()),
    );

    // Both sides store the active agreement, signed by the other side.
    for (d, other) in [(&a, &kb), (&b, &ka)] {
        let ags = d.cli_json(&["agreements", "--json"]).expect("umbra cli");
        let ag = &ags.as_array().expect("list")[0];
        assert_eq!(ag["peer_key"], other.as_str());
        assert_eq!(ag["state"], "active");
        assert_eq!(ag["terms"], "10GiB/30d");
        assert_eq!(ag["signed_by_peer"], true);
    }
    // Each side learns how the other saw it.
    let peers_b = b.cli_json(&["peers", "--json"]).expect("umbra cli");
    assert_eq!(peers_b[0]["endpoint"], format!("{ip_a}:443").as_str());
    assert!(
        peers_b[0]["observed"]
            .as_str()
            .expect("observed")
            .starts_with("198.18.10.2:"),
        "{peers_b}"
    );

    // The token works once.
    let again = b.cli(&["accept", &token]).expect("run umbra cli");
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("did not accept the token"), "{err}");
    // The inviter's log says which refusal it was.
    wait_for(LINK_WAIT, "a to log the reused token", &[&a], || {
        a.log_text().contains("token already used").then_some(())
    });

    // An expired token is refused with a clear message.
    let short = a
        .cli_json(&["invite", "--ttl", "1s", "--json"])
        .expect("umbra cli");
    std::thread::sleep(Duration::from_millis(2100));
    let late = b
        .cli(&["accept", short["token"].as_str().expect("token")])
        .expect("run umbra cli");
    assert!(!late.status.success());
    assert!(String::from_utf8_lossy(&late.stderr).contains("expired"));

    // Restart the dialing side: it redials from the stored agreement.
    b.signal("TERM").expect("signal the daemon");
    b.wait(Duration::from_secs(10)).expect("b stops");
    b.start(&nb).expect("umbra run starts");
    wait_for(
        LINK_WAIT,
        "the link back after b restarts",
        &[&a, &b],
        || b.link_up_to(&ka).then_some(()),
    );

    // Restart the listening side: the dialer backs off and comes back.
    a.signal("TERM").expect("signal the daemon");
    a.wait(Duration::from_secs(10)).expect("a stops");
    a.start(&na).expect("umbra run starts");
    wait_for(
        LINK_WAIT,
        "the link back after a restarts",
        &[&a, &b],
        || (a.link_up_to(&kb) && b.link_up_to(&ka)).then_some(()),
    );
    assert_eq!(
        a.cli_json(&["agreements", "--json"]).expect("umbra cli")[0]["state"],
        "active"
    );

    // Revoking ends the link and tells the peer.
    let id = a.cli_json(&["agreements", "--json"]).expect("umbra cli")[0]["id"]
        .as_i64()
        .expect("id");
    assert!(
        a.cli(&["agreements", "revoke", &id.to_string()])
            .expect("run umbra cli")
            .status
            .success()
    );
    wait_for(
        LINK_WAIT,
        "the peer to learn of the revocation",
        &[&a, &b],
        || {
            (b.cli_json(&["agreements", "--json"]).expect("umbra cli")[0]["state"] == "revoked")
                .then_some(())
        },
    );
}

#[test]
fn three_nodes_link_by_config() {
    require_root();
    let (na, nb, nc) = (netns("ca"), netns("cb"), netns("cc"));
    let (ip_a, ip_b1) = veth(&na, &nb, 20);
    let (ip_b2, ip_c) = veth(&nb, &nc, 21);
    let dir = temp_dir("config");
    // Keys first: init each node so the configs can name each other.
    let keys = init_keys(dir.path(), &["a", "b", "c"]);
    let a = node(
        &na,
        &dir,
        "a",
        &format!(
            "[listen]\nhttps = [\"{ip_a}:443\"]\n{}",
            peer(&keys[1], &ip_b1)
        ),
    );
    let b = node(
        &nb,
        &dir,
        "b",
        &format!(
            "[listen]\nhttps = [\"{ip_b1}:443\", \"{ip_b2}:443\"]\n{}{}",
            peer(&keys[0], &ip_a),
            peer(&keys[2], &ip_c)
        ),
    );
    let c = node(
        &nc,
        &dir,
        "c",
        &format!(
            "[listen]\nhttps = [\"{ip_c}:443\"]\n{}",
            peer(&keys[1], &ip_b2)
        ),
    );
    wait_for(LINK_WAIT, "a-b and b-c links", &[&a, &b, &c], || {
        (a.link_up_to(&keys[1])
            && b.link_up_to(&keys[0])
            && b.link_up_to(&keys[2])
            && c.link_up_to(&keys[1]))
        .then_some(())
    });
    // Both dial each other; each pair ends with exactly one link.
    std::thread::sleep(Duration::from_secs(3));
    let peers_b = b.cli_json(&["peers", "--json"]).expect("umbra cli");
    let up: Vec<_> = peers_b
        .as_array()
        .expect("rows")
        .iter()
        .filter(|p| p["state"] == "up")
        .collect();
    assert_eq!(up.len(), 2, "{peers_b}");
    assert_eq!(
        a.cli_json(&["agreements", "--json"]).expect("umbra cli")[0]["origin"],
        "config"
    );
    // a and c have no agreement, so no link.
    assert!(!a.link_up_to(&keys[2]));
}

#[test]
fn a_one_sided_peer_entry_does_not_link() {
    require_root();
    let (na, nb) = (netns("oa"), netns("ob"));
    let (ip_a, _) = veth(&na, &nb, 30);
    let dir = temp_dir("onesided");
    let a = node(
        &na,
        &dir,
        "a",
        &format!("[listen]\nhttps = [\"{ip_a}:443\"]\n"),
    );
    let ka = a.key().expect("the node key");
    let b = node(
        &nb,
        &dir,
        "b",
        &format!("[listen]\nhttps = []\n[[peer]]\nkey = \"{ka}\"\nendpoints = [\"{ip_a}:443\"]\n"),
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !b.link_up_to(&ka),
        "a lists nobody, so b's entry is only half an agreement"
    );
    assert!(
        a.cli_json(&["agreements", "--json"])
            .expect("umbra cli")
            .as_array()
            .expect("list")
            .is_empty()
    );
}
