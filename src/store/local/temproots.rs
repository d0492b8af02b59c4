//! Temporary roots: how a running operation keeps the paths it is adding or using from
//! being collected, speaking Nix's protocol so stock Nix's GC respects ours and ours
//! respects stock Nix's clients.
//!
//! A process owns `temproots/<pid>` (mode 0600), holds an exclusive `flock` on it for its
//! lifetime, and appends `<full path>\0` per root. Before appending, it tries a shared
//! non-blocking lock on `gc.lock`: if a GC holds it, the process tells the GC over
//! `gc-socket/socket` (`<path>\n`, answered by the byte `1`), so a GC that already read
//! the files still learns of the root.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::format::{StoreDir, StorePath};
use crate::store::local::lock::{lock_open_file, unlock, FileLock, LockKind};

pub fn gc_lock_path(state: &Path) -> PathBuf {
    state.join("gc.lock")
}

pub fn gc_socket_path(state: &Path) -> PathBuf {
    state.join("gc-socket").join("socket")
}

/// This process's temporary roots file, created on first use.
pub struct TempRoots {
    state: PathBuf,
    store_dir: StoreDir,
    file: Option<FileLock>,
    /// `gc.lock`, kept open (as Nix does) so each root costs two flocks, not an open.
    gc_lock: Option<File>,
    socket: Option<UnixStream>,
}

impl TempRoots {
    pub fn new(state: &Path, store_dir: &StoreDir) -> TempRoots {
        TempRoots { state: state.to_path_buf(), store_dir: store_dir.clone(), file: None, gc_lock: None, socket: None }
    }

    fn open_file(&mut self) -> io::Result<&FileLock> {
        if self.file.is_none() {
            let dir = self.state.join("temproots");
            fs::create_dir_all(&dir)?;
            let path = dir.join(std::process::id().to_string());
            loop {
                let f = crate::store::local::lock::open_lock_file(&path, true)?;
                let lock = FileLock::from_file(f, &path, LockKind::Exclusive, true)?.expect("blocking lock");
                // Non-empty right after locking: a GC found it stale and deleted it.
                if lock.file().metadata()?.len() != 0 {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                self.file = Some(lock);
                break;
            }
        }
        Ok(self.file.as_ref().expect("just set"))
    }

    /// Protects `path` (by its hash part) until this process exits.
    pub fn add(&mut self, path: &StorePath) -> io::Result<()> {
        self.open_file()?;
        let full = self.store_dir.display(path);
        if self.gc_lock.is_none() {
            let p = gc_lock_path(&self.state);
            self.gc_lock = Some(crate::store::local::lock::open_lock_file(&p, true)?);
        }
        let gc_lock = self.gc_lock.as_ref().expect("just opened");
        // Held until the root is in the file, so no GC can start in between.
        let mut locked = false;
        loop {
            if lock_open_file(gc_lock, LockKind::Shared, false)? {
                locked = true;
                break;
            }
            // A GC is running: tell it directly.
            if self.socket.is_none() {
                match crate::store::fs::socket::connect(&gc_socket_path(&self.state)) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(3600)))?;
                        self.socket = Some(s);
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
                        // The GC is starting or just finished; try the lock again.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let sock = self.socket.as_mut().expect("connected");
            let sent = sock.write_all(format!("{full}\n").as_bytes()).and_then(|_| {
                let mut ack = [0u8; 1];
                sock.read_exact(&mut ack).map(|_| ack[0])
            });
            match sent {
                Ok(b'1') => break,
                Ok(_) | Err(_) => {
                    self.socket = None;
                    continue;
                }
            }
        }
        let lock = self.file.as_ref().expect("opened");
        let mut f: &File = lock.file();
        let written = f.write_all(format!("{full}\0").as_bytes());
        if locked {
            unlock(gc_lock)?;
        }
        written
    }
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        if let Some(lock) = self.file.take() {
            let _ = fs::remove_file(lock.path());
        }
    }
}
