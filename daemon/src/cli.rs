//! The command line (`docs/cli.md`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use umbra_config::{Config, DEFAULT_CONFIG_PATH};
use umbra_routing::{Identity, address};

use crate::UsageError;
use crate::control::{self, Request};
use crate::output;
use crate::state_dir;

/// Highest `keygen --strength` accepted: each bit doubles the expected work,
/// and 2^32 keys is already hours on one core.
const MAX_KEYGEN_STRENGTH: u32 = 32;

/// umbra: an anonymizing overlay network daemon for servers.
#[derive(Debug, Parser)]
#[command(name = "umbra", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The config file [default: /etc/umbra/umbra.toml, which alone may be missing].
    #[arg(long, global = true, env = "UMBRA_CONFIG")]
    config: Option<PathBuf>,
    /// The control socket (default: the config's `control_socket`).
    #[arg(long, global = true)]
    control: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the identity and a commented default config if missing; never overwrites.
    Init {
        /// The state directory for the identity (default: the config's `state_dir`).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon in the foreground.
    Run,
    /// Print the node's /128 address (works offline).
    Address {
        /// Print the node's name (`<label>.umbra`) instead.
        #[arg(long)]
        name: bool,
        /// Print JSON (the address and the name).
        #[arg(long)]
        json: bool,
    },
    /// Print the running node's status.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One row per link: peer, state, endpoint, bytes.
    Peers {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the circuit that traffic to ADDRESS uses now, and what each hop sees.
    Path {
        /// A node's overlay address (or an address in its /64).
        address: std::net::Ipv6Addr,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time invite token for another node's operator.
    Invite {
        /// Bytes per period each way, like 50GiB/30d.
        #[arg(long)]
        terms: Option<String>,
        /// How long the token works, like 24h, 30m or 7d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// An address the other node can dial, HOST:PORT (repeatable); default: the listeners.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Use an invite token: make the agreement and the link.
    Accept {
        /// The `umbra1…` token.
        token: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Propose an agreement to a node known only by its overlay address (or key); no IP is sent.
    Propose {
        /// The node's overlay address (or an address in its /64), or its public key (64 hex).
        address: String,
        /// Bytes per period each way, like 50GiB/30d; limits after it (debt, cutoff, …) stay this node's own.
        #[arg(long)]
        terms: Option<String>,
        /// A line for the other operator (at most 256 bytes, no control characters).
        #[arg(long)]
        note: Option<String>,
        /// How long it may be accepted, like 7d, 12h or 30m (at most 30d).
        #[arg(long, default_value = "7d")]
        ttl: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List agreements and proposals; accept or reject a proposal; revoke an agreement.
    Agreements {
        #[command(subcommand)]
        action: Option<AgreementsAction>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Build a small overlay of real daemons in network namespaces (root), send traffic across a circuit, show what each relay saw, and clean up.
    Demo,
    /// Check the setup (TUN, capabilities, ports, clock, config, files, partners) and say how to fix each problem.
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a new identity.
    Keygen {
        /// Require at least N leading zero bits in the public key (a harder-to-imitate address).
        #[arg(long, default_value_t = 0)]
        strength: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script on stdout (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages into DIR (for packaging).
    #[command(hide = true)]
    Manpage {
        /// The directory to write `umbra.1` and one page per command into.
        dir: PathBuf,
    },
}

impl Cli {
    /// Whether this command runs the daemon.
    pub(crate) fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Run)
    }
}

#[derive(Debug, Subcommand)]
enum AgreementsAction {
    /// List every agreement (the default).
    List,
    /// End an agreement: the link closes and the peer is told.
    Revoke {
        /// The agreement's id, from `umbra agreements`.
        id: i64,
    },
    /// Accept a proposal made to this node: the agreement is made, and the two link.
    Accept {
        /// The proposal's id, from `umbra agreements`.
        id: i64,
    },
    /// Reject a proposal made to this node; the proposer is told.
    Reject {
        /// The proposal's id, from `umbra agreements`.
        id: i64,
    },
}

/// Where the config is, and whether the user named it (`--config` or
/// `UMBRA_CONFIG`). Only the default path may be missing, and then the
/// defaults apply; a named file must exist, so a mistyped path never runs
/// the wrong node (`umbra init` alone writes a missing one).
#[derive(Debug, Clone)]
pub(crate) struct ConfigPath {
    pub(crate) path: PathBuf,
    pub(crate) named: bool,
}

impl ConfigPath {
    fn new(flag: Option<PathBuf>) -> ConfigPath {
        match flag {
            Some(path) => ConfigPath { path, named: true },
            None => ConfigPath {
                path: PathBuf::from(DEFAULT_CONFIG_PATH),
                named: false,
            },
        }
    }

    /// Loads the config; any problem with it is a usage error (exit 2).
    pub(crate) fn load(&self) -> Result<Config> {
        if self.named && !self.path.exists() {
            return Err(UsageError(format!(
                "the config file {} does not exist (only the default, {DEFAULT_CONFIG_PATH}, \
                 may be missing; `umbra init --config {}` writes one)",
                self.path.display(),
                self.path.display()
            ))
            .into());
        }
        Config::load(&self.path).map_err(|e| UsageError(e.to_string()).into())
    }
}

/// Runs the parsed command line.
pub(crate) fn dispatch(cli: Cli) -> Result<()> {
    let config_path = ConfigPath::new(cli.config);
    match cli.command {
        Command::Init { state_dir, json } => init(&config_path.path, state_dir, json),
        Command::Run => {
            let config = config_path.load()?;
            crate::run::run(config, config_path, cli.control)
        }
        Command::Address { name, json } => {
            let config = config_path.load()?;
            let id = state_dir::require_identity(&config)?;
            let addr = address::address_for_key(&id.public(), config.address_prefix);
            let node_name = umbra_routing::name::name_for_key(&id.public());
            if json {
                output::json(&json!({ "address": addr.to_string(), "name": node_name }))
            } else if name {
                output::line(&node_name)
            } else {
                output::line(&addr.to_string())
            }
        }
        Command::Status { json } => {
            let socket = control_socket(&config_path, cli.control)?;
            let status = control::call(&socket, &Request::Status)?;
            if json {
                output::json(&status)
            } else {
                output::status(&status)
            }
        }
        Command::Keygen { strength, json } => keygen(strength, json),
        Command::Demo => crate::demo::run(),
        Command::Doctor { json } => crate::doctor::run(&config_path.path, cli.control, json),
        Command::Completions { shell } => crate::assets::completions(shell),
        Command::Manpage { dir } => crate::assets::manpages(&dir),
        Command::Peers { json } => {
            let v = control::call(&control_socket(&config_path, cli.control)?, &Request::Peers)?;
            if json {
                output::json(&v)
            } else {
                output::peers(&v)
            }
        }
        Command::Path { address, json } => {
            let v = control::call(
                &control_socket(&config_path, cli.control)?,
                &Request::Path { address },
            )?;
            if json {
                output::json(&v)
            } else {
                output::path(&v)
            }
        }
        Command::Invite {
            terms,
            ttl,
            endpoints,
            json,
        } => {
            let ttl_secs = parse_ttl(&ttl, crate::links::INVITE_TTL_MAX, "a token works")?;
            let v = control::call(
                &control_socket(&config_path, cli.control)?,
                &Request::Invite {
                    terms,
                    ttl_secs: Some(ttl_secs),
                    endpoints,
                },
            )?;
            if json {
                output::json(&v)
            } else {
                if let Some(note) = v["note"].as_str() {
                    eprintln!("note: {note}");
                }
                output::line(v["token"].as_str().unwrap_or_default())
            }
        }
        Command::Accept { token, json } => {
            let socket = control_socket(&config_path, cli.control)?;
            if !json {
                eprintln!("dialing the inviter and waiting for the link…");
            }
            let v = control::call(&socket, &Request::Accept { token })?;
            if json {
                output::json(&v)
            } else {
                output::line(&format!(
                    "agreement made with {} ({}), terms {}; the link is up",
                    v["peer_address"].as_str().unwrap_or_default(),
                    v["peer_key"].as_str().unwrap_or_default(),
                    v["terms"].as_str().unwrap_or_default(),
                ))
            }
        }
        Command::Propose {
            address,
            terms,
            note,
            ttl,
            json,
        } => {
            check_node_name(&address)?;
            let ttl_secs = parse_ttl(
                &ttl,
                crate::links::PROPOSAL_TTL_MAX,
                "a node holds a proposal",
            )?;
            let socket = control_socket(&config_path, cli.control)?;
            if !json {
                eprintln!(
                    "sending the proposal over the overlay and waiting for its node to answer…"
                );
            }
            let v = control::call(
                &socket,
                &Request::Propose {
                    to: address,
                    terms,
                    note,
                    ttl_secs: Some(ttl_secs),
                    wait_secs: None,
                },
            )?;
            if v["state"] == "refused" {
                bail!(
                    "{} refused the proposal (ID {}): {}",
                    v["peer_address"].as_str().unwrap_or_default(),
                    v["id"],
                    v["reason_text"].as_str().unwrap_or_default()
                );
            }
            if json {
                output::json(&v)
            } else {
                output::proposal_sent(&v)
            }
        }
        Command::Agreements { action, json } => {
            let socket = control_socket(&config_path, cli.control)?;
            match action.unwrap_or(AgreementsAction::List) {
                AgreementsAction::List => {
                    let v = control::call(&socket, &Request::Agreements)?;
                    if json {
                        output::json(&v)
                    } else {
                        output::agreements(&v)
                    }
                }
                AgreementsAction::Accept { id } => {
                    if !json {
                        eprintln!(
                            "accepting proposal {id}: telling the proposer and waiting for the link…"
                        );
                    }
                    let v = control::call(&socket, &Request::AcceptProposal { id })?;
                    if json {
                        output::json(&v)
                    } else {
                        output::line(&format!(
                            "agreement {} made with {} ({}), terms {}; the link is up",
                            v["id"],
                            v["peer_address"].as_str().unwrap_or_default(),
                            v["peer_key"].as_str().unwrap_or_default(),
                            v["terms"].as_str().unwrap_or_default(),
                        ))
                    }
                }
                AgreementsAction::Reject { id } => {
                    let v = control::call(&socket, &Request::RejectProposal { id })?;
                    if json {
                        output::json(&v)
                    } else {
                        let told = if v["told"] == true {
                            "the proposer was told"
                        } else {
                            "the proposer could not be told now"
                        };
                        output::line(&format!("proposal {id} rejected; {told}"))
                    }
                }
                AgreementsAction::Revoke { id } => {
                    let v = control::call(&socket, &Request::Revoke { id })?;
                    if json {
                        output::json(&v)
                    } else {
                        output::line(&format!("agreement {id} revoked"))?;
                        if let Some(note) = v["note"].as_str() {
                            eprintln!("note: {note}");
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

fn control_socket(config_path: &ConfigPath, flag: Option<PathBuf>) -> Result<PathBuf> {
    match flag {
        Some(p) => Ok(p),
        None => Ok(config_path.load()?.control_socket),
    }
}

fn init(config_path: &Path, state_dir: Option<PathBuf>, json_out: bool) -> Result<()> {
    let mut config = Config::load(config_path).map_err(|e| UsageError(e.to_string()))?;
    if let Some(dir) = state_dir {
        if !dir.is_absolute() {
            return Err(UsageError(format!(
                "--state-dir {} must be an absolute path",
                dir.display()
            ))
            .into());
        }
        config.state_dir = dir;
    }
    let (id, created_key) = state_dir::load_or_create_identity(&config)?;
    let text = umbra_config::default_config_text(&config.state_dir, &config.control_socket);
    let created_config = umbra_config::write_new(config_path, &text, 0o640)
        .with_context(|| format!("writing config {}", config_path.display()))?;
    let doc = identity_json(&id, config.address_prefix);
    if json_out {
        let mut doc = doc;
        doc["created_identity"] = json!(created_key);
        doc["created_config"] = json!(created_config);
        doc["config"] = json!(config_path.display().to_string());
        doc["state_dir"] = json!(config.state_dir.display().to_string());
        return output::json(&doc);
    }
    output::kv(&[
        ("address", doc["address"].as_str().unwrap_or_default()),
        ("subnet", doc["subnet"].as_str().unwrap_or_default()),
        ("public key", doc["public_key"].as_str().unwrap_or_default()),
    ])?;
    let note = |made: bool, what: &str, path: &Path| {
        let verb = if made { "created" } else { "kept existing" };
        format!("{verb} {what} {}", path.display())
    };
    eprintln!("{}", note(created_key, "identity", &config.identity_path()));
    eprintln!("{}", note(created_config, "config", config_path));
    Ok(())
}

fn identity_json(id: &Identity, prefix: u8) -> serde_json::Value {
    let key = id.public();
    json!({
        "address": address::address_for_key(&key, prefix).to_string(),
        "subnet": format!("{}/{}", address::subnet_for_key(&key, prefix), address::SUBNET_PREFIX_LEN),
        "public_key": hex::encode(key),
    })
}

fn keygen(strength: u32, json_out: bool) -> Result<()> {
    if strength > MAX_KEYGEN_STRENGTH {
        bail!(UsageError(format!(
            "--strength {strength} is above the maximum {MAX_KEYGEN_STRENGTH} (each bit doubles the work)"
        )));
    }
    if strength > 16 {
        eprintln!("mining a key with {strength} leading zero bits: about 2^{strength} tries");
    }
    let mut tries = 0;
    let id = Identity::mine(strength, &mut tries);
    let mut doc = identity_json(&id, umbra_config::DEFAULT_ADDRESS_PREFIX);
    doc["secret_key"] = json!(hex::encode(id.seed()));
    doc["strength"] = json!(address::leading_zero_bits(&id.public()));
    doc["tries"] = json!(tries);
    if json_out {
        return output::json(&doc);
    }
    let strength_text = doc["strength"].to_string();
    output::kv(&[
        ("address", doc["address"].as_str().unwrap_or_default()),
        ("subnet", doc["subnet"].as_str().unwrap_or_default()),
        ("public key", doc["public_key"].as_str().unwrap_or_default()),
        ("secret key", doc["secret_key"].as_str().unwrap_or_default()),
        ("strength", &strength_text),
    ])?;
    eprintln!(
        "to use it, write the secret key as one line to STATE_DIR/identity.key with mode 0600"
    );
    Ok(())
}

/// Checks that `propose`'s ADDRESS is an IPv6 address or a 64-hex key.
fn check_node_name(text: &str) -> Result<()> {
    let is_key = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if is_key || text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(());
    }
    Err(UsageError(format!(
        "{text} is neither an overlay address (like 602:959:…) nor a public key (64 hex characters)"
    ))
    .into())
}

/// Parses `--ttl`: a number with a unit `s`, `m`, `h` or `d`, at most
/// `max` (the most, in `what`'s words, the daemon accepts).
fn parse_ttl(text: &str, max: std::time::Duration, what: &str) -> Result<u64> {
    let bad = || {
        UsageError(format!(
            "--ttl {text}: expected a number and a unit (s, m, h, d), like 24h"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad().into()),
    };
    match n.checked_mul(unit_secs) {
        Some(0) | None => Err(bad().into()),
        Some(s) if s > max.as_secs() => Err(UsageError(format!(
            "--ttl {text} is longer than {} days, the most {what}",
            max.as_secs() / 86_400
        ))
        .into()),
        Some(s) => Ok(s),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_node_name, parse_ttl};

    #[test]
    fn propose_takes_an_address_or_a_key() {
        assert!(check_node_name("602:959:2717:2d30:6024:7e40:2ced:3826").is_ok());
        assert!(check_node_name(&"ab".repeat(32)).is_ok());
        for bad in [
            "",
            "198.18.0.1",
            "602:zz::1",
            &"ab".repeat(31),
            &"g".repeat(64),
        ] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ttl_units() {
        let max = std::time::Duration::from_secs(30 * 86_400);
        let ttl = |t: &str| parse_ttl(t, max, "test");
        assert_eq!(ttl("24h").expect("24h"), 86_400);
        assert_eq!(ttl("90s").expect("90s"), 90);
        assert_eq!(ttl("30d").expect("30d"), 30 * 86_400);
        for bad in [
            "",
            "h",
            "10",
            "0h",
            "5y",
            "-1h",
            "99999999999999999999d",
            "18446744073709551615s",
            "100000000000d",
            "31d",
            "2592001s",
        ] {
            let e = ttl(bad).expect_err(bad);
            assert!(e.downcast_ref::<crate::UsageError>().is_some(), "{bad}");
        }
    }
}
