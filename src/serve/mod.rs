//! `serve`: the store behind a Unix socket speaking the Nix worker protocol, server side,
//! so stock Nix (`--store unix://…`, `NIX_REMOTE`) uses an overlay safely: every request
//! goes through the same engine as the CLI (copy-up, upper-only writes, upper-only GC,
//! the Lua policy).
//!
//! Like `nix-daemon`, each connection has a store of its own (here a thread with its own
//! store object and temp roots), so one client's failure never reaches another; the
//! database and Nix's locks keep concurrent writers safe.

mod build;
mod connection;
mod handlers;
mod protocol;
pub mod trust;

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::spec::{StoreKind, StoreSpec};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("socket '{path}': {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("another server is already listening on '{0}' (stop it, or give another --socket)")]
    InUse(PathBuf),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The socket a spec serves on by default, where Nix clients look for a daemon of a
/// store with that state directory.
pub fn default_socket(spec: &StoreSpec) -> PathBuf {
    spec.state.join("daemon-socket").join("socket")
}

pub struct Server {
    spec: Arc<StoreSpec>,
    listener: UnixListener,
    socket: PathBuf,
    /// Whether we made the socket file (and so remove it when we stop).
    owns_socket: bool,
}

impl Server {
    /// Listens on `socket` (else the spec's `[serve] socket`, else the default), or on
    /// the socket systemd passed (`LISTEN_FDS`). The store is opened once first, so a
    /// broken spec or an unmounted overlay fails here, not at the first client.
    pub fn bind(spec: StoreSpec, socket: Option<PathBuf>) -> Result<Server, ServeError> {
        if spec.kind == StoreKind::Daemon {
            return Err(ServeError::Config("serve needs a local or local-overlay store, not a daemon store".into()));
        }
        drop(connection::open_store(&spec)?);
        let socket = socket.or_else(|| spec.serve.socket.clone()).unwrap_or_else(|| default_socket(&spec));
        if let Some(listener) = systemd_listener() {
            return Ok(Server { spec: Arc::new(spec), listener, socket, owns_socket: false });
        }
        let err = |source| ServeError::Socket { path: socket.clone(), source };
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        if std::fs::symlink_metadata(&socket).is_ok() {
            if crate::store::fs::socket::connect(&socket).is_ok() {
                return Err(ServeError::InUse(socket));
            }
            // A stale socket from a server that died.
            std::fs::remove_file(&socket).map_err(err)?;
        }
        let listener = crate::store::fs::socket::bind(&socket).map_err(err)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(spec.serve.socket_mode)).map_err(err)?;
        Ok(Server { spec: Arc::new(spec), listener, socket, owns_socket: true })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Serves until `stop` is set, then closes every connection (an operation under
    /// way finishes writing its reply) and returns.
    pub fn run(self, stop: &AtomicBool) -> Result<(), ServeError> {
        let err = |source| ServeError::Socket { path: self.socket.clone(), source };
        self.listener.set_nonblocking(true).map_err(err)?;
        // Woken by a client at once (a sleeping poll loop would add its interval to
        // every connection), and at least every 100 ms to see `stop`.
        let wait_for_client = || {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            use std::os::fd::AsFd;
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(100u8));
        };
        let active = Arc::new(AtomicUsize::new(0));
        let clients: Arc<Mutex<Vec<(UnixStream, std::thread::JoinHandle<()>)>>> = Arc::default();
        while !stop.load(Ordering::Relaxed) {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_for_client();
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let _ = stream.set_nonblocking(false);
            let (Ok(handle), Ok(own)) = (stream.try_clone(), stream.try_clone()) else {
                tracing::warn!("turning a connection away: cannot duplicate its socket (out of file descriptors?)");
                continue;
            };
            let now = active.load(Ordering::SeqCst) as u64;
            let over_limit = now >= self.spec.serve.max_connections;
            // A few over the limit are told why (in a thread, with the handshake's
            // timeout); past that a flood is cut off at once, threadless.
            if now >= self.spec.serve.max_connections + OVER_LIMIT_REPLIES {
                let _ = handle.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let spec = self.spec.clone();
            // Counted while its thread runs, however the thread ends (a panic included).
            let slot = Slot::take(&active);
            let spawned = std::thread::Builder::new().name("serve-connection".into()).spawn(move || {
                let _slot = slot;
                connection::serve(stream, &spec, over_limit);
                // The server keeps a handle to every connection (to close it at stop):
                // hang up explicitly, so the client sees the end now.
                let _ = own.shutdown(std::net::Shutdown::Both);
            });
            let thread = match spawned {
                Ok(t) => t,
                Err(e) => {
                    // The slot went back when the closure was dropped unrun.
                    tracing::warn!("turning a connection away: cannot start a thread for it: {e}");
                    let _ = handle.shutdown(std::net::Shutdown::Both);
                    continue;
                }
            };
            let mut list = clients.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|(_, t)| !t.is_finished());
            list.push((handle, thread));
        }
        tracing::info!("stopping: closing {} connection(s)", active.load(Ordering::SeqCst));
        let list = std::mem::take(&mut *clients.lock().unwrap_or_else(|p| p.into_inner()));
        for (conn, _) in &list {
            let _ = conn.shutdown(std::net::Shutdown::Read);
        }
        for (_, t) in list {
            let _ = t.join();
        }
        if self.owns_socket {
            let _ = std::fs::remove_file(&self.socket);
        }
        Ok(())
    }
}

/// Connections past `max-connections` that still get a refusal message.
const OVER_LIMIT_REPLIES: u64 = 16;

/// One counted connection: taken when it is accepted, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>) -> Slot {
        count.fetch_add(1, Ordering::SeqCst);
        Slot(count.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The listening socket systemd passed us (`LISTEN_PID` is us, `LISTEN_FDS` ≥ 1: fd 3).
fn systemd_listener() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    // Not for the builder and other children.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    // SAFETY: systemd hands fd 3 to this process to own, and nothing else uses it.
    let fd = unsafe { OwnedFd::from_raw_fd(3) };
    let _ = nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&fd), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    Some(UnixListener::from(fd))
}

/// Serves one connection whose client sends `input` (from the magic on) and then hangs
/// up; returns every byte the server answered. For fuzzing the server with hostile
/// clients and for tests; not a way to use the store.
#[doc(hidden)]
pub fn replay(spec: &StoreSpec, input: Vec<u8>) -> Vec<u8> {
    use std::io::{Read, Write};
    let (client, server) = UnixStream::pair().expect("socketpair");
    let reader = client.try_clone().expect("clone");
    let answers = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&reader).read_to_end(&mut out);
        out
    });
    let sender = std::thread::spawn(move || {
        let _ = (&client).write_all(&input);
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    connection::serve(server, spec, false);
    let _ = sender.join();
    answers.join().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64s(ns: &[u64]) -> Vec<u8> {
        ns.iter().flat_map(|n| n.to_le_bytes()).collect()
    }

    fn string(s: &str) -> Vec<u8> {
        let mut v = u64s(&[s.len() as u64]);
        v.extend_from_slice(s.as_bytes());
        v.resize(v.len() + (8 - s.len() % 8) % 8, 0);
        v
    }

    /// The handshake's answer: magic, our version, the version string, STDERR_LAST.
    fn greeting_len(answer: &[u8]) -> usize {
        let vlen = u64::from_le_bytes(answer[16..24].try_into().unwrap()) as usize;
        24 + vlen + (8 - vlen % 8) % 8 + 8
    }

    #[test]
    fn a_query_is_answered_and_a_bad_path_ends_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::from_uri(&format!("local?root={}", dir.path().display())).unwrap();
        let mut input = u64s(&[0x6e69_7863, 0x122, 0, 0, 1]);
        input.extend(string("/nix/store/00000000000000000000000000000000-nope"));
        input.extend(u64s(&[1]));
        input.extend(string("/etc/passwd"));
        // Never read: the connection ends at the bad path.
        input.extend(u64s(&[1]));
        input.extend(string("/nix/store/00000000000000000000000000000000-nope"));
        let answer = replay(&spec, input);
        assert_eq!(&answer[..16], &u64s(&[0x6478_696f, 0x122])[..]);
        let rest = &answer[greeting_len(&answer)..];
        // IsValidPath: STDERR_LAST, false.
        assert_eq!(&rest[..16], &u64s(&[0x616c_7473, 0])[..]);
        // Then one error frame naming the path, and nothing more.
        assert_eq!(&rest[16..24], &u64s(&[0x6378_7470])[..]);
        let text = String::from_utf8_lossy(&rest[24..]);
        assert!(text.contains("is not in the Nix store"), "{text}");
        assert_eq!(text.matches("Error").count(), 2, "exactly one error frame: {text}");
    }

    /// A newer client (1.38 here) is answered in 1.34: no feature lists, no trust byte.
    #[test]
    fn newer_clients_negotiate_down() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::from_uri(&format!("local?root={}", dir.path().display())).unwrap();
        let mut input = u64s(&[0x6e69_7863, 0x126, 0, 0, 1]);
        input.extend(string("/nix/store/00000000000000000000000000000000-nope"));
        let answer = replay(&spec, input);
        assert_eq!(&answer[8..16], &u64s(&[0x122])[..]);
        let rest = &answer[greeting_len(&answer)..];
        assert_eq!(rest, &u64s(&[0x616c_7473, 0])[..], "IsValidPath answered as 1.34 answers it");
    }

    #[test]
    fn garbage_and_truncation_cost_only_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::from_uri(&format!("local?root={}", dir.path().display())).unwrap();
        assert!(replay(&spec, b"GET / HTTP/1.1\r\n\r\n".to_vec()).is_empty(), "no answer to a non-Nix client");
        // A huge count, a truncated frame stream, an unknown op.
        for tail in [u64s(&[31, u64::MAX]), u64s(&[39]), u64s(&[44, 0, 0, 100, 1, 2]), u64s(&[9999])] {
            let mut input = u64s(&[0x6e69_7863, 0x122, 0, 0]);
            input.extend(tail);
            let answer = replay(&spec, input);
            assert!(answer.len() >= greeting_len(&answer));
        }
    }
}
