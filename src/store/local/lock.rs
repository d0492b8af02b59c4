//! Nix's lock files, with the same `flock(2)` locks Nix takes, so our processes and
//! stock Nix exclude each other.
//!
//! - `db/big-lock`: shared while a store is open, exclusive for schema changes.
//! - `<real store dir>/<basename>.lock`: exclusive while one path is being added. The
//!   holder deletes it when done and writes `d` into it, so a waiter that wins the lock
//!   on an unlinked file sees a non-empty file, knows it is stale and retries.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

fn flock(file: &File, kind: LockKind, wait: bool) -> io::Result<bool> {
    let mut op = match kind {
        LockKind::Shared => libc::LOCK_SH,
        LockKind::Exclusive => libc::LOCK_EX,
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Takes a lock on a file the caller keeps open (and releases with `unlock`).
pub fn lock_open_file(file: &File, kind: LockKind, wait: bool) -> io::Result<bool> {
    flock(file, kind, wait)
}

pub fn unlock(file: &File) -> io::Result<()> {
    // SAFETY: flock on a file descriptor the caller owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A held `flock`; released when dropped (closing the descriptor releases it).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Opens (creating, mode 0600) and locks `path`, waiting if `wait`.
    pub fn acquire(path: &Path, kind: LockKind, wait: bool) -> io::Result<Option<FileLock>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        Ok(flock(&file, kind, wait)?.then(|| FileLock { file, path: path.to_path_buf() }))
    }

    /// Locks an already open file.
    pub fn from_file(file: File, path: &Path, kind: LockKind, wait: bool) -> io::Result<Option<FileLock>> {
        Ok(flock(&file, kind, wait)?.then(|| FileLock { file, path: path.to_path_buf() }))
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the mode of a held lock (Nix upgrades the big lock for schema changes).
    pub fn relock(&self, kind: LockKind, wait: bool) -> io::Result<bool> {
        flock(&self.file, kind, wait)
    }
}

/// An exclusive per-path lock (`<path>.lock`), deleted when released.
#[derive(Debug)]
pub struct PathLock {
    lock: Option<FileLock>,
}

impl PathLock {
    pub fn acquire(lock_path: &Path, wait: bool) -> io::Result<Option<PathLock>> {
        loop {
            let Some(lock) = FileLock::acquire(lock_path, LockKind::Exclusive, wait)? else {
                return Ok(None);
            };
            // A previous holder deleted the file after we opened it: ours is stale.
            if lock.file.metadata()?.len() != 0 {
                continue;
            }
            return Ok(Some(PathLock { lock: Some(lock) }));
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            let _ = std::fs::remove_file(&lock.path);
            let _ = (&lock.file).write_all(b"d");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("big-lock");
        let a = FileLock::acquire(&p, LockKind::Shared, false).unwrap().unwrap();
        let _b = FileLock::acquire(&p, LockKind::Shared, false).unwrap().unwrap();
        assert!(FileLock::acquire(&p, LockKind::Exclusive, false).unwrap().is_none());
        drop(a);
        drop(_b);
        assert!(FileLock::acquire(&p, LockKind::Exclusive, false).unwrap().is_some());
    }

    #[test]
    fn path_lock_is_deleted_and_exclusive() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.lock");
        let l = PathLock::acquire(&p, false).unwrap().unwrap();
        assert!(PathLock::acquire(&p, false).unwrap().is_none());
        drop(l);
        assert!(!p.exists());
        assert!(PathLock::acquire(&p, false).unwrap().is_some());
    }
}
