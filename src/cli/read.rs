//! The commands that only read the store. They are a group of their own because they
//! share how the store is opened (`Session::open_to_read`: an existing local store as a
//! lone reader) and because a one-path query is over in one or two milliseconds, so
//! the parser builds only this group's subcommands when one of them is named.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use overlay_store::spec::StoreSpec;
use overlay_store::store::local::verify::{hash_path, modified_message};
use overlay_store::store::{Store, StoreError};

use super::output::PathInfoArgs;
use super::{out_err, output, paths, query, stdout, CliError, CliResult};

#[derive(Subcommand, Debug)]
pub enum ReadCommand {
    /// Write the NAR of a store path (or any file system path) to stdout.
    Dump { path: String },
    /// Write a `nix-store --export` stream of the given paths to stdout, dependencies first.
    Export {
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Show metadata of store paths, as `nix path-info`.
    PathInfo(PathInfoArgs),
    /// Query store paths, as `nix-store --query`.
    Query(query::QueryArgs),
    /// Print the store path whose hash part is HASH; exit 1 if there is none.
    PathFromHashPart { hash: String },
    /// Check the contents of the given paths against their recorded hashes.
    VerifyPath {
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

pub fn run(cmd: ReadCommand, store: &dyn Store, spec: &StoreSpec) -> CliResult {
    match cmd {
        ReadCommand::Dump { path } => {
            let real = match paths::resolve(store, &path) {
                Ok(sp) => store.real_path(&sp),
                Err(_) if std::path::Path::new(&path).exists() => PathBuf::from(&path),
                Err(e) => return Err(e),
            };
            let out =
                overlay_store::store::fs::tree::dump(&real, stdout()).map_err(|e| StoreError::Io { path: real.clone(), source: e })?;
            out.into_inner().map_err(|e| out_err(e.into_error()))?.flush().map_err(out_err)
        }
        ReadCommand::Export { paths } => {
            let sps = paths.iter().map(|p| paths::resolve(store, p)).collect::<CliResult<Vec<_>>>()?;
            let mut out = stdout();
            overlay_store::store::local::export_paths(store, &sps, &mut out)?;
            out.flush().map_err(out_err)
        }
        ReadCommand::PathInfo(args) => output::path_info(store, &args),
        ReadCommand::Query(args) => query::run(store, &args, spec),
        ReadCommand::PathFromHashPart { hash } => match store.path_from_hash_part(&hash)? {
            Some(p) => {
                println!("{}", store.store_dir().display(&p));
                Ok(())
            }
            None => Err(CliError::Failed(format!("there is no store path with hash part '{hash}'"))),
        },
        ReadCommand::VerifyPath { paths } => {
            let mut bad = false;
            for p in &paths {
                let sp = paths::resolve(store, p)?;
                let sd = store.store_dir().display(&sp);
                let info = store.path_info(&sp)?.ok_or_else(|| StoreError::NotValid(sd.clone()))?;
                let real = store.real_path(&sp);
                match hash_path(&real, info.nar_hash.algo()) {
                    Ok((h, _)) if h == info.nar_hash => {}
                    Ok((h, _)) => {
                        tracing::error!("{}", modified_message(&sd, &info, &h));
                        bad = true;
                    }
                    Err(e) => {
                        tracing::error!("path '{sd}' cannot be read: {e}");
                        bad = true;
                    }
                }
            }
            if bad {
                Err(CliError::Reported)
            } else {
                Ok(())
            }
        }
    }
}
