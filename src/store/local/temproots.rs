//! Temporary roots: how a running operation keeps the paths it is adding or using from
//! being collected, speaking Nix's protocol so stock Nix's GC respects ours and ours
//! respects stock Nix's clients.
//!
//! A process owns `temproots/<pid>` (mode 0600), holds an exclusive `flock` on it for its
//! lifetime, and appends `<full path>\0` per root. Before appending, it tries a shared
//! non-blocking lock on `gc.lock`: if a GC holds it, the process tells the GC over
//! `gc-socket/socket` (`<path>\n`, answered by the byte `1`), so a GC that already read
//! the files still learns of the root.
//!
//! One process has one such file per state directory, however many store objects it
//! opens (a server opens one per connection): [`TempRoots`] is a handle on the shared
//! file that remembers what it added, and dropping it takes its roots out again, so a
//! closed connection stops protecting what only it used.

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

/// This process's temporary roots file for one state directory, created on first use.
struct RootsFile {
    state: PathBuf,
    store_dir: StoreDir,
    file: Option<FileLock>,
    /// `gc.lock`, kept open (as Nix does) so each root costs two flocks, not an open.
    gc_lock: Option<File>,
    socket: Option<UnixStream>,
    /// How many handles hold each root (full path), so the file can be rewritten
    /// without a root once nobody holds it.
    held: std::collections::HashMap<String, usize>,
}

type Shared = std::sync::Arc<std::sync::Mutex<RootsFile>>;

/// The process's roots files, by state directory.
fn registry() -> &'static std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<std::sync::Mutex<RootsFile>>>> {
    static FILES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Weak<std::sync::Mutex<RootsFile>>>>> =
        std::sync::OnceLock::new();
    FILES.get_or_init(Default::default)
}

/// A handle on this process's temporary roots for a state directory.
pub struct TempRoots {
    file: Shared,
    /// Roots this handle added (full paths), released when it is dropped.
    mine: std::collections::HashMap<String, usize>,
}

impl TempRoots {
    pub fn new(state: &Path, store_dir: &StoreDir) -> TempRoots {
        let mut files = registry().lock().expect("temp roots registry");
        files.retain(|_, w| w.strong_count() > 0);
        let file = match files.get(state).and_then(|w| w.upgrade()) {
            Some(f) => f,
            None => {
                let f = std::sync::Arc::new(std::sync::Mutex::new(RootsFile {
                    state: state.to_path_buf(),
                    store_dir: store_dir.clone(),
                    file: None,
                    gc_lock: None,
                    socket: None,
                    held: Default::default(),
                }));
                files.insert(state.to_path_buf(), std::sync::Arc::downgrade(&f));
                f
            }
        };
        TempRoots { file, mine: Default::default() }
    }

    /// Protects `path` (by its hash part) until this handle is dropped.
    pub fn add(&mut self, path: &StorePath) -> io::Result<()> {
        let mut file = self.file.lock().expect("temp roots file");
        let full = file.add(path)?;
        *self.mine.entry(full).or_default() += 1;
        Ok(())
    }
}

impl Drop for TempRoots {
    fn drop(&mut self) {
        if self.mine.is_empty() {
            return;
        }
        let mut file = self.file.lock().expect("temp roots file");
        if let Err(e) = file.release(&self.mine) {
            tracing::warn!("could not take temporary roots out of this process's roots file: {e} (they stay until it exits)");
        }
    }
}

impl RootsFile {
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
                // Locked, but no longer the file at that name (an earlier owner in this
                // process removed it meanwhile): roots written to it would be seen by no GC.
                use std::os::unix::fs::MetadataExt;
                let (held, named) = (lock.file().metadata()?, fs::symlink_metadata(&path));
                if !named.is_ok_and(|n| n.dev() == held.dev() && n.ino() == held.ino()) {
                    continue;
                }
                self.file = Some(lock);
                break;
            }
        }
        Ok(self.file.as_ref().expect("just set"))
    }

    /// Appends `path` to the file (telling a running GC); returns its full path.
    fn add(&mut self, path: &StorePath) -> io::Result<String> {
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
        written?;
        // Counted once it is in the file, so a failed add leaves nothing to release.
        *self.held.entry(full.clone()).or_default() += 1;
        Ok(full)
    }

    /// Drops a handle's roots; those nobody holds any more leave the file, which is
    /// rewritten under a shared `gc.lock` so no GC reads it half-written.
    fn release(&mut self, roots: &std::collections::HashMap<String, usize>) -> io::Result<()> {
        let mut gone = false;
        for (root, n) in roots {
            if let Some(count) = self.held.get_mut(root) {
                *count = count.saturating_sub(*n);
                if *count == 0 {
                    self.held.remove(root);
                    gone = true;
                }
            }
        }
        let (Some(lock), true) = (self.file.as_ref(), gone) else { return Ok(()) };
        let gc_lock = match &self.gc_lock {
            Some(l) => l,
            None => return Ok(()),
        };
        // Not while a GC runs (it holds gc.lock, and waiting here would hold up every
        // other connection's roots): the roots no one holds stay until a later release
        // or the process's exit. A stale root only keeps a path a little longer.
        if !lock_open_file(gc_lock, LockKind::Shared, false)? {
            return Ok(());
        }
        let mut text = String::new();
        for root in self.held.keys() {
            text.push_str(root);
            text.push('\0');
        }
        let mut f: &File = lock.file();
        let result = f.set_len(0).and_then(|_| {
            use std::io::Seek;
            f.seek(io::SeekFrom::Start(0))?;
            f.write_all(text.as_bytes())
        });
        unlock(gc_lock)?;
        result
    }
}

impl Drop for RootsFile {
    fn drop(&mut self) {
        if let Some(lock) = self.file.take() {
            let _ = fs::remove_file(lock.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(n: u8) -> StorePath {
        StorePath::new([n; 20], &format!("p{n}")).unwrap()
    }

    /// Two store objects in one process (two served connections) share the roots file
    /// without blocking each other, and each one's roots go when it does.
    #[test]
    fn handles_share_one_file_and_take_their_roots_with_them() {
        let t = tempfile::tempdir().unwrap();
        let sd = StoreDir::new("/nix/store");
        let file = t.path().join("temproots").join(std::process::id().to_string());
        let read = || fs::read_to_string(&file).unwrap_or_default();
        let mut a = TempRoots::new(t.path(), &sd);
        let mut b = TempRoots::new(t.path(), &sd);
        a.add(&path(1)).unwrap();
        b.add(&path(2)).unwrap();
        b.add(&path(1)).unwrap();
        for n in [1, 2] {
            assert!(read().contains(&sd.display(&path(n))), "{:?}", read());
        }
        drop(b);
        assert!(read().contains(&sd.display(&path(1))), "a still holds p1: {:?}", read());
        assert!(!read().contains(&sd.display(&path(2))), "nobody holds p2: {:?}", read());
        drop(a);
        assert!(!file.exists(), "the last handle removes the file");
    }
}
