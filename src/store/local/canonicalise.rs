//! Store objects' files are normalised as Nix leaves them: read-only (0444, or 0555 when
//! executable; directories 0555) with mtime 1, so that a NAR of them is reproducible and
//! accidental writes fail.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

fn set_mtime_one(path: &Path) -> io::Result<()> {
    let one = TimeSpec::new(1, 0);
    utimensat(None, path, &one, &one, UtimensatFlags::NoFollowSymlink).map_err(io::Error::from)
}

pub fn canonicalise_file(path: &Path, executable: bool) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(if executable { 0o555 } else { 0o444 }))?;
    set_mtime_one(path)
}

pub fn canonicalise_dir(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o555))?;
    set_mtime_one(path)
}

pub fn canonicalise_symlink(path: &Path) -> io::Result<()> {
    set_mtime_one(path)
}

/// Makes a tree writable again so it can be deleted (store directories are 0555).
pub fn make_deletable(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        if meta.permissions().mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        }
        for entry in fs::read_dir(path)? {
            make_deletable(&entry?.path())?;
        }
    }
    Ok(())
}

/// Removes a file system object whatever its modes, never following symlinks.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => {
            make_deletable(path)?;
            fs::remove_dir_all(path)
        }
        Ok(_) => fs::remove_file(path),
    }
}
