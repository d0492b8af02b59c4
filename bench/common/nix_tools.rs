//! Finding Nix and the environment both benches run it in: an empty
//! `build-users-group` (no build users as root in a chroot store), `nix-command`
//! enabled, and `HOME` and caches inside the scratch directory.

// Each bench uses a different part of this.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Whether an environment variable is set to something other than empty or `0`.
pub fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// A program on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `nix-store` on `PATH` and what `--version` says, unless `no_nix_flag` is set (then
/// the bench runs as if Nix were not installed).
pub fn find_nix_store(no_nix_flag: &str) -> Option<(PathBuf, String)> {
    if env_flag(no_nix_flag) {
        return None;
    }
    let nix_store = find_program("nix-store")?;
    let out = std::process::Command::new(&nix_store).arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some((nix_store, version))
}

/// The environment every Nix process of a bench gets, with `home` as its `HOME`.
pub fn environment(home: &Path) -> Vec<(OsString, OsString)> {
    vec![
        ("NIX_CONFIG".into(), "build-users-group = \nexperimental-features = nix-command".into()),
        ("HOME".into(), home.into()),
        ("XDG_CACHE_HOME".into(), home.join(".cache").into()),
        ("NIX_REMOTE".into(), "".into()),
    ]
}
