//! `gc.lock` held exclusively with `gc-socket/socket` served: what GC, optimise, pivot
//! and a remount hold, so no collection overlaps them while clients can still add
//! temporary roots (Nix's protocol; see `store::local::temproots`).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::store::local::lock::{FileLock, LockKind};
use crate::store::local::temproots::{gc_lock_path, gc_socket_path};
use crate::store::{io_err, Result};

/// Temporary roots announced over the GC socket while we run, and the paths whose
/// deletion is under way (an announcement for one of those waits until it is gone).
#[derive(Default)]
pub(super) struct Shared {
    pub(super) temp_roots: HashSet<String>,
    pub(super) pending: HashSet<String>,
}

pub(super) struct SocketServer {
    pub(super) shared: Arc<(Mutex<Shared>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Accepted connections, shut down when the GC ends (as Nix closes them), so a
    /// long-lived client reconnects to the next GC instead of talking to this one.
    clients: Arc<Mutex<Vec<(std::os::unix::net::UnixStream, std::thread::JoinHandle<()>)>>>,
}

impl SocketServer {
    fn start(state: &Path) -> io::Result<SocketServer> {
        let path = gc_socket_path(state);
        fs::create_dir_all(path.parent().expect("has a parent"))?;
        let _ = fs::remove_file(&path);
        let listener = crate::store::fs::socket::bind(&path)?;
        listener.set_nonblocking(true)?;
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Arc<Mutex<Vec<_>>> = Arc::default();
        let (sh, st, cl) = (shared.clone(), stop.clone(), clients.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let Ok(handle) = conn.try_clone() else { continue };
                        let sh = sh.clone();
                        let t = std::thread::spawn(move || serve_client(conn, sh));
                        cl.lock().expect("gc clients").push((handle, t));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(SocketServer { shared, stop, thread: Some(thread), clients })
    }
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Wake anyone waiting on a pending deletion, then close every connection. The
        // socket file stays: a client that finds it refuses connections retries, as
        // Nix's does (a missing file would make a Nix 2.8 client fail).
        {
            let (lock, cv) = &*self.shared;
            lock.lock().expect("gc socket state").pending.clear();
            cv.notify_all();
        }
        let clients = std::mem::take(&mut *self.clients.lock().expect("gc clients"));
        for (conn, t) in clients {
            let _ = conn.shutdown(std::net::Shutdown::Both);
            let _ = t.join();
        }
    }
}

/// `gc.lock` held exclusively with the GC socket served: what GC, optimise, pivot and a
/// remount hold so no collection overlaps them while clients can still add temp roots.
pub struct GcLock {
    pub(super) server: SocketServer,
    _lock: FileLock,
}

impl GcLock {
    pub fn acquire(state: &Path, notice: &mut dyn FnMut(&str)) -> Result<GcLock> {
        let lock_path = gc_lock_path(state);
        let lock = match FileLock::acquire(&lock_path, LockKind::Exclusive, false).map_err(io_err(&lock_path))? {
            Some(l) => l,
            None => {
                notice("waiting for the big garbage collector lock...");
                FileLock::acquire(&lock_path, LockKind::Exclusive, true).map_err(io_err(&lock_path))?.expect("blocking")
            }
        };
        let server = SocketServer::start(state).map_err(io_err(gc_socket_path(state)))?;
        Ok(GcLock { server, _lock: lock })
    }

    /// Whether a temporary root for this hash part was announced while we held the lock.
    pub fn announced(&self, hash_part: &str) -> bool {
        self.server.shared.0.lock().expect("gc socket state").temp_roots.contains(hash_part)
    }

    /// Marks paths (by hash part) as about to go, so a client announcing one from now on
    /// waits until [`GcLock::release`]; returns those announced already, which must stay.
    pub fn hold_back<'a>(&self, hash_parts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut s = self.server.shared.0.lock().expect("gc socket state");
        let mut announced = Vec::new();
        for h in hash_parts {
            if s.temp_roots.contains(h) {
                announced.push(h.to_string());
            } else {
                s.pending.insert(h.to_string());
            }
        }
        announced
    }

    /// Lets clients waiting on held-back paths go on (they then find them gone).
    pub fn release(&self) {
        let (lock, cv) = &*self.server.shared;
        lock.lock().expect("gc socket state").pending.clear();
        cv.notify_all();
    }
}

fn serve_client(conn: std::os::unix::net::UnixStream, shared: Arc<(Mutex<Shared>, Condvar)>) {
    use std::io::{BufRead, BufReader, Write};
    let _ = conn.set_nonblocking(false);
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let hash = Path::new(line.trim()).file_name().map(|n| n.to_string_lossy().chars().take(32).collect::<String>()).unwrap_or_default();
        let (lock, cv) = &*shared;
        let mut s = lock.lock().expect("gc socket state");
        while s.pending.contains(&hash) {
            s = cv.wait(s).expect("gc socket state");
        }
        s.temp_roots.insert(hash);
        drop(s);
        if writer.write_all(b"1").is_err() {
            return;
        }
    }
}
