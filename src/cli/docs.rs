//! `completions SHELL` and `man DIR`: generated from the command tree itself, so they
//! never drift from what the parser accepts. Neither needs a store.

use std::io::Write;
use std::path::Path;

use super::{args, CliError, CliResult};

pub fn completions(shell: clap_complete::Shell) -> CliResult {
    let mut cmd = args::command_tree();
    // Into memory first: the generator panics on a write error (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "overlay-store", &mut script);
    let mut out = super::stdout();
    out.write_all(&script).and_then(|_| out.flush()).map_err(super::out_err)
}

/// `overlay-store.1` and `overlay-store-<command>.1` for every command (nested ones as
/// `overlay-store-policy-check.1`).
pub fn man_pages(dir: &Path) -> CliResult {
    std::fs::create_dir_all(dir).map_err(|e| CliError::Failed(format!("'{}': {e}", dir.display())))?;
    let cmd = args::command_tree();
    let mut written = 0;
    write_page(dir, &cmd, "overlay-store", &mut written)?;
    tracing::info!("wrote {written} man page(s) to '{}'", dir.display());
    Ok(())
}

fn write_page(dir: &Path, cmd: &clap::Command, name: &str, written: &mut usize) -> CliResult {
    // clap names are `&'static str` without its `string` feature; a few bytes per page
    // for a command that exits right after.
    let page = cmd.clone().name(&*Box::leak(name.to_string().into_boxed_str()));
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out).map_err(|e| CliError::Failed(format!("man page {name}: {e}")))?;
    let file = dir.join(format!("{name}.1"));
    std::fs::write(&file, out).map_err(|e| CliError::Failed(format!("'{}': {e}", file.display())))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(dir, sub, &format!("{name}-{}", sub.get_name()), written)?;
    }
    Ok(())
}
