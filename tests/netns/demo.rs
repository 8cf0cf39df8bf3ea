//! `umbra demo` (docs/cli.md, "umbra demo"): it builds its overlay, carries traffic over a
//! balanced circuit, shows each relay's view, and leaves nothing behind.

use std::process::Command;

use umbra_tests::netns::{require_root, umbra_bin};

fn demo_namespaces() -> usize {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("umbrademo"))
        .count()
}

#[test]
fn demo_runs_and_cleans_up() {
    require_root();
    let out = Command::new(umbra_bin())
        .arg("demo")
        .output()
        .expect("run umbra demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "umbra demo failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("5/5 answered"), "{stdout}");
    assert!(stdout.contains("Mbit/s"), "{stdout}");
    assert!(stdout.contains("home node"), "{stdout}");
    assert!(stderr.contains("cleaned up"), "{stderr}");
    assert!(
        !stdout.contains("warning"),
        "a relay knew too much:\n{stdout}"
    );
    assert_eq!(demo_namespaces(), 0, "namespaces left behind");
}
