//! Canonical store-object modes for the generators (the library's own walks do this on
//! directory descriptors while they write; generated trees are written here first).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

fn mtime_one(path: &Path) -> io::Result<()> {
    let one = TimeSpec::new(1, 0);
    utimensat(None, path, &one, &one, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

pub fn canonicalise_file(path: &Path, executable: bool) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(if executable { 0o555 } else { 0o444 }))?;
    mtime_one(path)
}

pub fn canonicalise_dir(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o555))?;
    mtime_one(path)
}

pub fn canonicalise_symlink(path: &Path) -> io::Result<()> {
    mtime_one(path)
}

/// Removes a tree whatever its modes (the library's walk, which never follows links).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    overlay_store::store::fs::tree::remove(path).map(drop)
}
