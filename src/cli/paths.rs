//! Turning command-line arguments into store paths, as `followLinksToStorePath` does:
//! a logical store path (or a path inside one), a symlink to one (`result`), or a path
//! under the store's real directory.

use std::path::{Path, PathBuf};

use overlay_store::format::StorePath;
use overlay_store::store::Store;

use super::{CliError, CliResult};

pub fn resolve(store: &dyn Store, arg: &str) -> CliResult<StorePath> {
    let sd = store.store_dir();
    if let Ok(p) = sd.parse_path_prefix(arg) {
        return Ok(p);
    }
    let mut cur = PathBuf::from(arg);
    for _ in 0..40 {
        let s = cur.to_string_lossy().to_string();
        if let Ok(p) = sd.parse_path_prefix(&s) {
            return Ok(p);
        }
        let real_dir = store.real_path(&dummy()).parent().map(Path::to_path_buf);
        if let Some(real_dir) = real_dir {
            if let Ok(rest) = cur.strip_prefix(&real_dir) {
                if let Some(first) = rest.components().next() {
                    let base = first.as_os_str().to_string_lossy();
                    return StorePath::from_basename(&base).map_err(|e| CliError::Failed(e.to_string()));
                }
            }
        }
        match std::fs::read_link(&cur) {
            Ok(target) => {
                cur = if target.is_absolute() { target } else { cur.parent().unwrap_or(Path::new("/")).join(target) };
            }
            Err(_) => break,
        }
    }
    Err(CliError::Failed(format!("path '{arg}' is not in the Nix store")))
}

/// Any store path; only its parent directory is used, to find the real store dir.
fn dummy() -> StorePath {
    StorePath::from_basename("00000000000000000000000000000000-x").expect("valid")
}
