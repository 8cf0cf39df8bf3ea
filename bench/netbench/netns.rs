//! Namespaces, veth pairs and processes for the benchmark, with cleanup that
//! also runs on Ctrl-C, SIGTERM and panics.
//!
//! Every namespace is named `ubn<pid>…` and recorded in a process-wide list;
//! [`cleanup_all`] kills what runs inside each and deletes it. Addresses are
//! from 198.18.0.0/15 and exist only inside these namespaces.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::R;

/// Namespaces alive now, for cleanup from a signal or a panic.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static COUNTER: AtomicU32 = AtomicU32::new(0);
/// The prefix of every namespace this tool makes.
const PREFIX: &str = "ubn";

/// Runs a command and returns its stdout; an error names the command and
/// its stderr.
pub(crate) fn sh(args: &[&str]) -> R<String> {
    let out = run(args)?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and returns its output whatever its exit status.
pub(crate) fn run(args: &[&str]) -> R<Output> {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("running {}: {e}", args.join(" ")))
}

fn delete_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Deletes every namespace this process made (and kills what runs in them).
pub(crate) fn cleanup_all() {
    let names: Vec<String> = match LIVE.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        Err(p) => std::mem::take(&mut *p.into_inner()),
    };
    for n in names {
        delete_namespace(&n);
    }
}

/// Deletes namespaces left by earlier runs that died without cleaning up
/// (their process is gone).
pub(crate) fn sweep_stale() {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(name);
        }
    }
}

/// Cleans up on SIGINT, SIGTERM and SIGHUP (then exits 130), and on panics.
pub(crate) fn install_cleanup_handlers() -> R<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("netbench: signal {sig}, removing namespaces");
            cleanup_all();
            std::process::exit(130);
        }
    });
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        cleanup_all();
        default(info);
    }));
    Ok(())
}

/// A network namespace, deleted with everything in it on drop.
#[derive(Debug)]
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace with loopback up.
    pub(crate) fn new(tag: &str) -> R<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}{tag}{n}", std::process::id());
        if let Ok(mut v) = LIVE.lock() {
            v.push(name.clone());
        }
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside; an error if it fails.
    pub(crate) fn exec(&self, args: &[&str]) -> R<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a command inside and returns its output whatever its status.
    pub(crate) fn run(&self, args: &[&str]) -> R<Output> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A `Command` for `program` inside. `ip netns exec` execs the program
    /// in place, so the child's pid is the program's.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_namespace(&self.name);
        if let Ok(mut v) = LIVE.lock() {
            v.retain(|n| *n != self.name);
        }
    }
}

/// Joins `a` and `b` with a veth pair on 198.18.`subnet`.0/24 (`a` is .1,
/// `b` is .2) and returns the two addresses.
pub(crate) fn veth(a: &Netns, b: &Netns, subnet: u8) -> R<(String, String)> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (ia, ib) = (format!("ubv{n}a"), format!("ubv{n}b"));
    sh(&[
        "ip",
        "link",
        "add",
        &ia,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &ib,
        "netns",
        b.name(),
    ])?;
    let ip_a = format!("198.18.{subnet}.1");
    let ip_b = format!("198.18.{subnet}.2");
    a.exec(&["ip", "addr", "add", &format!("{ip_a}/24"), "dev", &ia])?;
    b.exec(&["ip", "addr", "add", &format!("{ip_b}/24"), "dev", &ib])?;
    a.exec(&["ip", "link", "set", &ia, "up"])?;
    b.exec(&["ip", "link", "set", &ib, "up"])?;
    Ok((ip_a, ip_b))
}

/// A process started in a namespace, its output in a log file; killed on
/// drop.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
    /// Where its stdout and stderr go.
    pub(crate) log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr into `log`.
    pub(crate) fn spawn(mut cmd: Command, log: &Path) -> R<Proc> {
        let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {cmd:?}: {e}"))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited.
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for it to exit on its own; then kills it.
    pub(crate) fn wait(&mut self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited, from a shared reference (reads /proc).
    pub(crate) fn exited_now(&self) -> bool {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Gone, or a zombie waiting to be reaped.
        stat.rsplit_once(')')
            .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
    }

    /// Its log so far.
    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it: SIGTERM, then SIGKILL after 3 s.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
