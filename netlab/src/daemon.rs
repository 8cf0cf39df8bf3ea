//! [`Daemon`]: one `umbra run` in a namespace, its control socket and log.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::registry::{self, STOP_GRACE};
use crate::{Error, Netns, Proc, Result, UmbraConfig, cmd, poll};

/// How long `umbra run` may take to answer on its control socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A node's identity, from `umbra init --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its public key, hex.
    pub key: String,
    /// Its overlay IPv6 address.
    pub address: String,
}

/// One `umbra run` with its files (config, state, socket, log). Stopped
/// (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Daemon {
    /// The `umbra` binary.
    pub umbra: PathBuf,
    /// The config file it runs with.
    pub config: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
    /// Environment for `umbra run` (`RUST_LOG`, `NOTIFY_SOCKET`, …).
    pub env: Vec<(String, String)>,
    proc: Option<Proc>,
}

impl Daemon {
    /// Writes `config` (making its directory) without starting anything.
    /// The daemon logs at `info`, without colours.
    pub fn new(umbra: &Path, config: &UmbraConfig) -> Result<Daemon> {
        let path = config.write()?;
        Ok(Daemon {
            umbra: umbra.to_path_buf(),
            config: path,
            state_dir: config.state_dir(),
            socket: config.socket(),
            log: config.log(),
            env: vec![
                ("RUST_LOG".into(), "info".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            proc: None,
        })
    }

    /// Writes `config` again (for the next start or a SIGHUP reload).
    pub fn rewrite(&mut self, config: &UmbraConfig) -> Result<()> {
        self.config = config.write()?;
        Ok(())
    }

    /// Creates the identity (`umbra init --json`) and returns it.
    pub fn init(&self) -> Result<Identity> {
        let v = self.cli_json(&["init", "--json"])?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Output(format!("umbra init --json has no {k}: {v}")))
        };
        Ok(Identity {
            key: field("public_key")?,
            address: field("address")?,
        })
    }

    /// Starts `umbra run` in `ns` without waiting for it.
    pub fn spawn(&mut self, ns: &Netns) -> Result<()> {
        let mut c = ns.command(&self.umbra);
        c.arg("--config")
            .arg(&self.config)
            .arg("run")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let p = Proc::spawn(c, &self.log)?;
        registry::lock().daemons.push(p.pid());
        self.proc = Some(p);
        Ok(())
    }

    /// Starts `umbra run` in `ns` and waits until its control socket
    /// answers.
    pub fn start(&mut self, ns: &Netns) -> Result<()> {
        self.spawn(ns)?;
        self.wait_ready(START_TIMEOUT)
    }

    /// Waits up to `limit` until the control socket answers; an error if
    /// the daemon exits first.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let what = format!("umbra run to answer on {}", self.socket.display());
        poll(limit, Duration::from_millis(50), &what, |_| {
            self.check_running()?;
            Ok(self.answers().then_some(()))
        })
        .map_err(|e| match e {
            Error::Timeout { what, limit, .. } => Error::Timeout {
                what,
                limit,
                detail: format!("; log:\n{}", self.log_text()),
            },
            e => e,
        })
    }

    /// An error with its log if the daemon was started and has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.try_wait() {
            Some(status) => Err(Error::Exited {
                what: format!("umbra run ({})", self.config.display()),
                status,
                log: self.log_tail(40),
            }),
            None => Ok(()),
        }
    }

    /// Whether the control socket answers a status request.
    pub fn answers(&self) -> bool {
        self.request(r#"{"cmd":"status"}"#).is_some()
    }

    /// Sends one raw line to the control socket and returns the raw answer
    /// line, or `None` if the socket does not answer.
    pub fn request(&self, line: &str) -> Option<String> {
        let mut s = UnixStream::connect(&self.socket).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(line.as_bytes()).ok()?;
        s.write_all(b"\n").ok()?;
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).ok()?;
        (!answer.is_empty()).then_some(answer)
    }

    /// Sends a request (`{"cmd": …}`, docs/protocol.md, "Control
    /// protocol") and returns its `result`, or an error with the daemon's.
    pub fn query(&self, request: &Value) -> Result<Value> {
        let answer = self.request(&request.to_string()).ok_or_else(|| {
            Error::Output(format!(
                "the daemon at {} does not answer",
                self.socket.display()
            ))
        })?;
        let v: Value = serde_json::from_str(&answer).map_err(|e| {
            Error::Output(format!("the daemon's answer is not JSON ({e}): {answer}"))
        })?;
        if v["ok"] == true {
            Ok(v["result"].clone())
        } else {
            Err(Error::Output(
                v["error"]
                    .as_str()
                    .unwrap_or("the daemon refused")
                    .to_string(),
            ))
        }
    }

    /// Its status over the control socket.
    pub fn status(&self) -> Result<Value> {
        self.query(&serde_json::json!({"cmd": "status"}))
    }

    /// Its public key, hex, from its status.
    pub fn key(&self) -> Result<String> {
        let s = self.status()?;
        s["public_key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Output(format!("no public_key in the status: {s}")))
    }

    /// Whether its link to `key` is up (its `peers` over the control socket).
    pub fn link_up_to(&self, key: &str) -> bool {
        self.query(&serde_json::json!({"cmd": "peers"}))
            .is_ok_and(|v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|p| p["key"] == key && p["state"] == "up"))
            })
    }

    /// The graph it holds: (nodes, edges), from its status.
    pub fn graph(&self) -> Option<(u64, u64)> {
        let s = self.status().ok()?;
        Some((s["graph"]["nodes"].as_u64()?, s["graph"]["edges"].as_u64()?))
    }

    /// Runs an `umbra` CLI command against this daemon's config.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(&self.umbra)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                cmd: format!("umbra {}", args.join(" ")),
                source,
            })
    }

    /// Runs a CLI command that prints JSON, and parses it.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let out = self.cli(args)?;
        if !out.status.success() {
            return Err(Error::Failed {
                cmd: format!("umbra {}", args.join(" ")),
                status: out.status,
                stderr: format!(
                    "{}\nlog:\n{}",
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.log_text()
                ),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::Output(format!(
                "umbra {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    }

    /// The running process id, if started.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Sends a signal (`TERM`, `HUP`, `KILL`, …).
    pub fn signal(&self, sig: &str) -> Result<()> {
        match self.pid() {
            Some(pid) => cmd::signal(pid, sig),
            None => Err(Error::Missing("the daemon was not started".into())),
        }
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut()?.try_wait()
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let s = self.proc.as_mut()?.wait(limit)?;
        self.forget();
        Some(s)
    }

    /// Stops it: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let s = self.proc.as_mut()?.stop(STOP_GRACE);
        self.forget();
        s
    }

    /// Stops all of `daemons` at once: SIGTERM to each, then each gets
    /// the rest of 3 s before SIGKILL.
    pub fn stop_all(daemons: &mut [Daemon]) -> usize {
        let running: Vec<&mut Daemon> = daemons.iter_mut().filter(|d| d.proc.is_some()).collect();
        for d in &running {
            let _ = d.signal("TERM");
        }
        let deadline = Instant::now() + STOP_GRACE;
        let n = running.len();
        for d in running {
            if d.wait(deadline.saturating_duration_since(Instant::now()))
                .is_none()
            {
                if let Some(p) = d.proc.as_mut() {
                    p.kill();
                }
                d.forget();
            }
        }
        n
    }

    fn forget(&mut self) {
        if let Some(p) = self.proc.take() {
            let mut r = registry::lock();
            if let Some(i) = r.daemons.iter().position(|&d| d == p.pid()) {
                r.daemons.remove(i);
                r.done.daemons_stopped += 1;
            }
        }
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        cmd::tail(&self.log_text(), n)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
