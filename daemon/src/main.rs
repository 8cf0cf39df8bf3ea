//! `umbra`: the daemon and its command line (`docs/cli.md`).

mod agreement;
mod apps;
mod assets;
mod cli;
mod control;
mod datapath;
mod db;
mod demo;
mod dns;
mod doctor;
mod events;
mod links;
mod metrics;
mod output;
mod portmap;
mod run;
mod state_dir;
mod vital;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for bad usage or bad config (`docs/cli.md, "Exit codes"`).
const EXIT_USAGE: u8 = 2;
/// Exit code for any other failure.
const EXIT_FAILURE: u8 = 1;

/// An error that should exit with code 2 (bad usage or bad config).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.is_daemon());
    match cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear sentence on stderr, no backtrace (`docs/cli.md, "Output"`).
            eprintln!("umbra: {e:#}");
            let usage = e.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}

/// Logs go to stderr (journald reads it) through tracing, filtered by
/// `RUST_LOG`; the daemon defaults to `info`, the other commands to `warn`.
fn init_logging(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
