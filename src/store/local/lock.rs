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

/// Opens a lock file without following a symlink, blocking on a FIFO or leaking the
/// descriptor to children, and refuses anything but a regular file: lock files live in
/// the store directory, where anyone who can add paths can also plant entries, and a
/// holder writes into its lock file.
pub fn open_lock_file(path: &Path, create: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(not_a_lock_file(path));
    }
    Ok(file)
}

fn not_a_lock_file(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("lock file '{}' is not a regular file", path.display()))
}

/// Whether `open_lock_file` failed because something else than a regular file is there
/// (a symlink gives ELOOP, a directory EISDIR).
fn is_planted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData || matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EISDIR))
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
        let file = open_lock_file(path, true)?;
        Ok(flock(&file, kind, wait)?.then(|| FileLock { file, path: path.to_path_buf() }))
    }

    /// As [`FileLock::acquire`] with waiting, but the lock is on the file that is at
    /// `path` once it is held: a holder that removed the file while we waited (a pivot
    /// journal's recovery does) leaves us a lock on nothing, so we take it again.
    pub fn acquire_current(path: &Path, kind: LockKind) -> io::Result<FileLock> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let lock = FileLock::acquire(path, kind, true)?.expect("waited for");
            let held = lock.file.metadata()?;
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == held.dev() && m.ino() == held.ino()) {
                return Ok(lock);
            }
        }
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
    /// A symlink, FIFO, directory or device planted at `lock_path` is garbage: it is
    /// removed (never followed) and a real lock file made in its place.
    pub fn acquire(lock_path: &Path, wait: bool) -> io::Result<Option<PathLock>> {
        let mut planted = 0;
        loop {
            let lock = match FileLock::acquire(lock_path, LockKind::Exclusive, wait) {
                Ok(Some(lock)) => lock,
                Ok(None) => return Ok(None),
                Err(e) if is_planted(&e) && planted < 3 => {
                    planted += 1;
                    crate::store::fs::tree::remove(lock_path)?;
                    continue;
                }
                Err(e) => return Err(e),
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

    /// A planted symlink is never written through; a FIFO never blocks; both are
    /// replaced by a real lock file.
    #[test]
    fn planted_lock_entries_are_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = t.path().join("a.lock");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let l = PathLock::acquire(&link, true).unwrap().unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_file());
        drop(l);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let fifo = t.path().join("b.lock");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(open_lock_file(&fifo, false).is_err());
        drop(PathLock::acquire(&fifo, true).unwrap().unwrap());
        assert!(!fifo.exists());
        std::fs::create_dir(t.path().join("c.lock")).unwrap();
        drop(PathLock::acquire(&t.path().join("c.lock"), false).unwrap().unwrap());
        // A shared lock file (big-lock, gc.lock) that is not a regular file is refused.
        std::os::unix::fs::symlink(&victim, t.path().join("gc.lock")).unwrap();
        assert!(FileLock::acquire(&t.path().join("gc.lock"), LockKind::Exclusive, false).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
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
