//! Shell completions and man pages, generated from the real command line
//! so they cannot drift from it (`docs/cli.md, "umbra completions"`). The
//! Debian package ships both (`docs/architecture.md, "The package"`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::output;

/// The program name the completions and pages are written for.
const BIN: &str = "umbra";

/// The main page's FILES and SEE ALSO sections, which clap cannot know.
const FILES_SECTION: &str = r#".SH FILES
.TP
\fI/etc/umbra/umbra.toml\fR
The config file (\fB\-\-config\fR, \fBUMBRA_CONFIG\fR). \fBumbra init\fR writes a commented one.
.TP
\fI/var/lib/umbra/\fR
The state directory: \fIidentity.key\fR (the node's secret key, mode 0600), the database, the graph cache, certificates.
.TP
\fI/run/umbra/control.sock\fR
The control socket the other commands talk to (mode 0660, group umbra).
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1); the project's docs/cli.md and docs/config.md.
"#;

/// Writes the completion script for `shell` on stdout.
pub(crate) fn completions(shell: Shell) -> Result<()> {
    let script = completion_script(shell);
    std::io::stdout()
        .lock()
        .write_all(&script)
        .context("writing the completion script")?;
    Ok(())
}

/// The completion script for `shell`.
fn completion_script(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut visible_command(), BIN, &mut script);
    script
}

/// The command line without its hidden commands, which clap_complete would
/// otherwise offer: the same global flags and visible subcommands.
fn visible_command() -> clap::Command {
    let cli = Cli::command();
    let mut cmd = clap::Command::new(BIN).version(env!("CARGO_PKG_VERSION"));
    if let Some(about) = cli.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd.args(cli.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Writes `umbra.1` and one page per visible subcommand (`umbra-init.1`,
/// `umbra-agreements-revoke.1`, …) into `dir`, creating it; prints each
/// path written.
pub(crate) fn manpages(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for path in write_pages(dir)? {
        output::line(&path.display().to_string())?;
    }
    Ok(())
}

/// The pages of [`manpages`], returning their paths, the main page first.
fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Building names each subcommand as its page does: `umbra-init`, with
    // the synopsis `umbra init`.
    cmd.build();
    let mut written = Vec::new();
    let mut todo = vec![cmd];
    while let Some(cmd) = todo.pop() {
        todo.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
        let man = clap_mangen::Man::new(cmd.clone());
        let path = dir.join(man.get_filename());
        let mut page = Vec::new();
        man.render(&mut page)?;
        if written.is_empty() {
            page.extend_from_slice(FILES_SECTION.as_bytes());
        }
        fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    written[1..].sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_visible_command_and_none_for_hidden_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pages = write_pages(dir.path()).expect("pages");
        let names: Vec<String> = pages
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect();
        for want in [
            "umbra.1",
            "umbra-init.1",
            "umbra-run.1",
            "umbra-completions.1",
            "umbra-agreements.1",
            "umbra-agreements-revoke.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("manpage")),
            "the hidden command got a page: {names:?}"
        );
        let main = fs::read_to_string(&pages[0]).expect("umbra.1");
        assert!(main.starts_with(".ie"), "not roff: {main:.80}");
        assert!(main.contains(".SH FILES") && main.contains("identity.key"));
        let init = fs::read_to_string(dir.path().join("umbra-init.1")).expect("umbra-init.1");
        assert!(init.contains("state\\-dir"), "{init}");
    }

    #[test]
    fn completions_name_every_visible_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = String::from_utf8(completion_script(shell)).expect("utf-8");
            for cmd in ["init", "run", "invite", "agreements", "completions"] {
                assert!(script.contains(cmd), "{shell}: no {cmd}");
            }
            assert!(
                !script.contains("manpage"),
                "{shell} offers the hidden command"
            );
        }
    }
}
