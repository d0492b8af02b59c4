//! `realisation info` and `realisation add`: the `ca-derivations` mapping from a
//! derivation output to the path it was built to, in the JSON of `nix realisation info`.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use overlay_store::format::{DrvOutput, Realisation};
use overlay_store::store::StoreError;

use super::{out_err, stdout, CliError, CliResult, Opened};

#[derive(Subcommand, Debug)]
pub enum RealisationCommand {
    /// Print the realisations of derivation outputs.
    ///
    /// IDs are `sha256:<hash modulo>!<output>`, as `nix realisation info` prints them.
    /// One `ID PATH` line each, or Nix's JSON list with --json. On an overlay the upper
    /// database answers first, then the lower store. Exit 1 naming the ids not found.
    Info {
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Register realisations given as `nix realisation info --json` prints them.
    ///
    /// Read from FILE or stdin (a list or one object), all in one transaction. Their
    /// output paths must be valid; on an overlay, lower metadata they need (output
    /// closures, realisations they depend on) is copied up first.
    Add {
        /// JSON file (default: stdin).
        file: Option<PathBuf>,
    },
}

impl RealisationCommand {
    pub fn only_reads(&self) -> bool {
        matches!(self, RealisationCommand::Info { .. })
    }
}

pub fn run(cmd: RealisationCommand, opened: &mut Opened) -> CliResult {
    match cmd {
        RealisationCommand::Info { json, ids } => {
            let ids: Vec<DrvOutput> =
                ids.iter().map(|i| DrvOutput::parse(i)).collect::<Result<_, _>>().map_err(|e| CliError::Usage(e.to_string()))?;
            let store = opened.store();
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for id in ids {
                match store.realisation(&id)? {
                    Some(r) => found.push(r),
                    None => missing.push(id.to_string()),
                }
            }
            let mut out = stdout();
            if json {
                let list = serde_json::Value::Array(found.iter().map(Realisation::to_json).collect());
                writeln!(out, "{list}").map_err(out_err)?;
            } else {
                for r in &found {
                    writeln!(out, "{} {}", r.id, store.store_dir().display(&r.out_path)).map_err(out_err)?;
                }
            }
            out.flush().map_err(out_err)?;
            match missing.len() {
                0 => Ok(()),
                _ => Err(CliError::Failed(format!("no realisation of {} in this store", quoted(&missing)))),
            }
        }
        RealisationCommand::Add { file } => {
            let mut text = String::new();
            let source = match &file {
                Some(f) => {
                    text = std::fs::read_to_string(f).map_err(|e| StoreError::Io { path: f.clone(), source: e })?;
                    f.display().to_string()
                }
                None => {
                    std::io::stdin().read_to_string(&mut text).map_err(|e| StoreError::Io { path: "<stdin>".into(), source: e })?;
                    "<stdin>".to_string()
                }
            };
            let batch = Realisation::list_from_json(&text).map_err(|e| CliError::Usage(format!("{source}: {e}")))?;
            opened.register_realisations(&batch)?;
            let store = opened.store();
            let mut out = stdout();
            for r in &batch {
                writeln!(out, "{} {}", r.id, store.store_dir().display(&r.out_path)).map_err(out_err)?;
            }
            out.flush().map_err(out_err)
        }
    }
}

fn quoted(ids: &[String]) -> String {
    ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", ")
}
