//! A `nix-daemon` as a lower store: its metadata read over the worker protocol when its
//! database is not ours to open. Only read operations are ever sent.
//!
//! Handshake (we speak protocol 1.34, Nix 2.8's, which daemons from 2.8 on accept):
//!
//! ```text
//! C→D u64 0x6e697863            D→C u64 0x6478696f, u64 daemon version
//! C→D u64 0x122, u64 0 (cpu affinity), u64 0 (reserve space)
//! D→C str(nix version) (minor ≥ 33), then log messages until STDERR_LAST
//! ```
//!
//! Each request is an opcode and its arguments; the daemon answers with log messages
//! and then `STDERR_LAST` and the result, or `STDERR_ERROR`. Closure walks pipeline
//! their path-info requests in bounded batches, so a 10,000-path closure costs a few
//! round trips per level of the graph, not one per path.

pub mod wire;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::format::{ContentAddress, DrvOutput, Hash, HashAlgo, Realisation, StoreDir, StorePath};
use crate::spec::StoreSpec;
use crate::store::{PathInfo, Result, Store, StoreError};

use wire::{read_bool, read_count, read_string, read_strings, read_u64, strip_ansi, write_string, write_u64, WireError};

const WORKER_MAGIC_1: u64 = 0x6e69_7863;
const WORKER_MAGIC_2: u64 = 0x6478_696f;
const CLIENT_VERSION: u64 = 0x122;

const STDERR_NEXT: u64 = 0x6f6c_6d67;
const STDERR_READ: u64 = 0x6461_7461;
const STDERR_WRITE: u64 = 0x6461_7416;
const STDERR_LAST: u64 = 0x616c_7473;
const STDERR_ERROR: u64 = 0x6378_7470;
const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
const STDERR_RESULT: u64 = 0x5253_4c54;

const OP_IS_VALID_PATH: u64 = 1;
const OP_QUERY_REFERRERS: u64 = 6;
const OP_QUERY_ALL_VALID_PATHS: u64 = 23;
const OP_QUERY_PATH_INFO: u64 = 26;
const OP_QUERY_PATH_FROM_HASH_PART: u64 = 29;
const OP_QUERY_VALID_DERIVERS: u64 = 33;
const OP_QUERY_DERIVATION_OUTPUT_MAP: u64 = 41;
const OP_QUERY_REALISATION: u64 = 43;

/// Path-info requests sent before reading their replies: small enough that requests and
/// replies fit in the sockets' buffers, so neither side blocks the other.
const PIPELINE: usize = 128;

#[derive(Debug)]
enum Failure {
    Wire(WireError),
    /// The daemon refused the request (the connection stays usable).
    Daemon(String),
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Self {
        Failure::Wire(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Wire(wire::map_io(e))
    }
}

struct Connection {
    r: BufReader<UnixStream>,
    w: BufWriter<UnixStream>,
    minor: u64,
}

impl Connection {
    fn open(socket: &Path, timeout: Duration) -> std::result::Result<Connection, Failure> {
        let s = crate::store::fs::socket::connect(socket)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut c = Connection { r: BufReader::new(s.try_clone()?), w: BufWriter::new(s), minor: 0 };
        write_u64(&mut c.w, WORKER_MAGIC_1)?;
        write_u64(&mut c.w, CLIENT_VERSION)?;
        c.w.flush()?;
        let magic = read_u64(&mut c.r)?;
        if magic != WORKER_MAGIC_2 {
            return Err(WireError::Malformed(format!("not a Nix daemon (magic {magic:#x})")).into());
        }
        let daemon_version = read_u64(&mut c.r)?;
        if daemon_version >> 8 != 1 || (daemon_version & 0xff) < 10 {
            return Err(
                WireError::Malformed(format!("unsupported protocol version {}.{}", daemon_version >> 8, daemon_version & 0xff)).into()
            );
        }
        c.minor = (daemon_version & 0xff).min(CLIENT_VERSION & 0xff);
        if c.minor >= 14 {
            write_u64(&mut c.w, 0)?;
        }
        if c.minor >= 11 {
            write_u64(&mut c.w, 0)?;
        }
        c.w.flush()?;
        if c.minor >= 33 {
            let v = read_string(&mut c.r)?;
            tracing::debug!("connected to nix-daemon {v} (protocol 1.{})", c.minor);
        }
        c.stderr_loop()?;
        Ok(c)
    }

    fn fields(&mut self) -> std::result::Result<(), Failure> {
        let n = read_count(&mut self.r)?;
        for _ in 0..n {
            match read_u64(&mut self.r)? {
                0 => {
                    read_u64(&mut self.r)?;
                }
                1 => {
                    read_string(&mut self.r)?;
                }
                k => return Err(WireError::Malformed(format!("unknown field kind {k}")).into()),
            }
        }
        Ok(())
    }

    /// Reads log messages until `STDERR_LAST`; an error message becomes `Failure::Daemon`.
    fn stderr_loop(&mut self) -> std::result::Result<(), Failure> {
        loop {
            match read_u64(&mut self.r)? {
                STDERR_LAST => return Ok(()),
                STDERR_NEXT => {
                    let line = read_string(&mut self.r)?;
                    tracing::debug!("nix-daemon: {}", strip_ansi(line.trim_end()));
                }
                STDERR_WRITE => {
                    read_string(&mut self.r)?;
                }
                STDERR_READ => return Err(WireError::Malformed("the daemon asked for data on a read-only operation".into()).into()),
                STDERR_START_ACTIVITY => {
                    read_u64(&mut self.r)?;
                    read_u64(&mut self.r)?;
                    read_u64(&mut self.r)?;
                    read_string(&mut self.r)?;
                    self.fields()?;
                    read_u64(&mut self.r)?;
                }
                STDERR_STOP_ACTIVITY => {
                    read_u64(&mut self.r)?;
                }
                STDERR_RESULT => {
                    read_u64(&mut self.r)?;
                    read_u64(&mut self.r)?;
                    self.fields()?;
                }
                STDERR_ERROR => {
                    let msg = if self.minor >= 26 {
                        read_string(&mut self.r)?;
                        read_u64(&mut self.r)?;
                        read_string(&mut self.r)?;
                        let msg = read_string(&mut self.r)?;
                        if read_u64(&mut self.r)? != 0 {
                            return Err(WireError::Malformed("an error with a position (not sent by read operations)".into()).into());
                        }
                        let traces = read_count(&mut self.r)?;
                        for _ in 0..traces {
                            read_u64(&mut self.r)?;
                            read_string(&mut self.r)?;
                        }
                        msg
                    } else {
                        let msg = read_string(&mut self.r)?;
                        read_u64(&mut self.r)?;
                        msg
                    };
                    return Err(Failure::Daemon(strip_ansi(&msg)));
                }
                other => return Err(WireError::Malformed(format!("unknown message {other:#x}")).into()),
            }
        }
    }
}

/// A read-only view of the store a `nix-daemon` serves.
pub struct DaemonStore {
    socket: PathBuf,
    real: PathBuf,
    store_dir: StoreDir,
    timeout: Duration,
    conn: RefCell<Option<Connection>>,
}

impl DaemonStore {
    pub fn open(spec: &StoreSpec) -> Result<DaemonStore> {
        let socket = spec.socket.clone().unwrap_or_else(|| PathBuf::from(crate::spec::DEFAULT_DAEMON_SOCKET));
        let store = DaemonStore {
            socket,
            real: spec.real.clone(),
            store_dir: StoreDir::new(&spec.store_dir.to_string_lossy()),
            timeout: Duration::from_secs(spec.timeout_secs),
            conn: RefCell::new(None),
        };
        store.with(|c| Ok(c.minor))?;
        Ok(store)
    }

    fn error(&self, f: Failure) -> StoreError {
        match f {
            Failure::Daemon(m) => StoreError::Other(format!("nix-daemon at '{}': {m}", self.socket.display())),
            Failure::Wire(WireError::Io(e)) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                StoreError::Other(format!("cannot connect to nix-daemon at '{}': {e} (is the daemon running?)", self.socket.display()))
            }
            Failure::Wire(e) => StoreError::Other(format!("nix-daemon at '{}': {e}", self.socket.display())),
        }
    }

    /// Runs `f` on the connection, opening it if needed. A protocol failure drops the
    /// connection (its state is unknown); a refused request keeps it.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> std::result::Result<T, Failure>) -> Result<T> {
        let mut slot = self.conn.borrow_mut();
        if slot.is_none() {
            *slot = Some(Connection::open(&self.socket, self.timeout).map_err(|e| self.error(e))?);
        }
        let r = f(slot.as_mut().expect("just opened"));
        if let Err(Failure::Wire(_)) = &r {
            *slot = None;
        }
        r.map_err(|e| self.error(e))
    }

    fn parse(&self, s: &str) -> std::result::Result<StorePath, Failure> {
        self.store_dir.parse_path(s).map_err(|e| Failure::Wire(WireError::Malformed(e.to_string())))
    }

    fn read_path_info(&self, c: &mut Connection, path: &StorePath) -> std::result::Result<Option<PathInfo>, Failure> {
        c.stderr_loop()?;
        if c.minor >= 17 && !read_bool(&mut c.r)? {
            return Ok(None);
        }
        let deriver = read_string(&mut c.r)?;
        let hash = read_string(&mut c.r)?;
        let references = read_strings(&mut c.r)?;
        let registration_time = read_u64(&mut c.r)? as i64;
        let nar_size = read_u64(&mut c.r)?;
        let (mut ultimate, mut sigs, mut ca) = (false, Vec::new(), String::new());
        if c.minor >= 16 {
            ultimate = read_bool(&mut c.r)?;
            sigs = read_strings(&mut c.r)?;
            ca = read_string(&mut c.r)?;
        }
        let bad = |what: String| Failure::Wire(WireError::Malformed(what));
        Ok(Some(PathInfo {
            path: path.clone(),
            deriver: if deriver.is_empty() { None } else { Some(self.parse(&deriver)?) },
            nar_hash: Hash::parse_digest(HashAlgo::Sha256, &hash).map_err(|e| bad(format!("the hash of '{path}': {e}")))?,
            references: references.iter().map(|r| self.parse(r)).collect::<std::result::Result<_, _>>()?,
            registration_time,
            nar_size,
            ultimate,
            sigs: sigs.into_iter().collect(),
            ca: if ca.is_empty() { None } else { Some(ContentAddress::parse(&ca).map_err(|e| bad(e.to_string()))?) },
        }))
    }

    /// Path infos of many paths, pipelined in batches. The daemon answers every request
    /// of a batch even after refusing one, so after an error the rest of the batch's
    /// replies are drained before the error is returned: read against later requests
    /// they would be taken for other paths' metadata. If draining fails too, the
    /// connection is dropped.
    pub fn path_infos(&self, paths: &[StorePath]) -> Result<Vec<Option<PathInfo>>> {
        self.with(|c| {
            let mut out = Vec::with_capacity(paths.len());
            for chunk in paths.chunks(PIPELINE) {
                for p in chunk {
                    write_u64(&mut c.w, OP_QUERY_PATH_INFO)?;
                    write_string(&mut c.w, &self.store_dir.display(p))?;
                }
                c.w.flush()?;
                let mut first_error = None;
                for p in chunk {
                    match self.read_path_info(c, p) {
                        Ok(info) if first_error.is_none() => out.push(info),
                        Ok(_) => {}
                        Err(Failure::Daemon(m)) => {
                            first_error.get_or_insert(Failure::Daemon(m));
                        }
                        // The stream's state is unknown: `with` drops the connection.
                        Err(wire) => return Err(wire),
                    }
                }
                if let Some(e) = first_error {
                    return Err(e);
                }
            }
            Ok(out)
        })
    }

    fn simple_paths(&self, op: u64, arg: &str) -> Result<BTreeSet<StorePath>> {
        self.with(|c| {
            write_u64(&mut c.w, op)?;
            write_string(&mut c.w, arg)?;
            c.w.flush()?;
            c.stderr_loop()?;
            read_strings(&mut c.r)?.iter().map(|s| self.parse(s)).collect()
        })
    }
}

impl Store for DaemonStore {
    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn real_path(&self, path: &StorePath) -> PathBuf {
        self.real.join(path.basename())
    }

    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        Ok(self.path_infos(std::slice::from_ref(path))?.pop().flatten())
    }

    fn is_valid(&self, path: &StorePath) -> Result<bool> {
        self.with(|c| {
            write_u64(&mut c.w, OP_IS_VALID_PATH)?;
            write_string(&mut c.w, &self.store_dir.display(path))?;
            c.w.flush()?;
            c.stderr_loop()?;
            Ok(read_bool(&mut c.r)?)
        })
    }

    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.simple_paths(OP_QUERY_REFERRERS, &self.store_dir.display(path))
    }

    fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.simple_paths(OP_QUERY_VALID_DERIVERS, &self.store_dir.display(path))
    }

    fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        self.with(|c| {
            write_u64(&mut c.w, OP_QUERY_DERIVATION_OUTPUT_MAP)?;
            write_string(&mut c.w, &self.store_dir.display(drv))?;
            c.w.flush()?;
            c.stderr_loop()?;
            let n = read_count(&mut c.r)?;
            let mut m = BTreeMap::new();
            for _ in 0..n {
                let name = read_string(&mut c.r)?;
                let p = read_string(&mut c.r)?;
                if !p.is_empty() {
                    m.insert(name, self.parse(&p)?);
                }
            }
            Ok(m)
        })
    }

    fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        crate::format::store_path::validate_hash_part(hash_part)?;
        self.with(|c| {
            write_u64(&mut c.w, OP_QUERY_PATH_FROM_HASH_PART)?;
            write_string(&mut c.w, hash_part)?;
            c.w.flush()?;
            c.stderr_loop()?;
            let s = read_string(&mut c.r)?;
            if s.is_empty() {
                Ok(None)
            } else {
                Ok(Some(self.parse(&s)?))
            }
        })
    }

    /// The daemon answers with a set of at most one: realisations as JSON strings
    /// (protocol ≥ 1.31), or only the output path before that.
    fn realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>> {
        self.with(|c| {
            if c.minor < 27 {
                // Older daemons do not know the operation (and would drop the
                // connection); like Nix's client, treat it as "none".
                tracing::warn!("the nix-daemon (protocol 1.{}) cannot answer realisation queries", c.minor);
                return Ok(None);
            }
            write_u64(&mut c.w, OP_QUERY_REALISATION)?;
            write_string(&mut c.w, &id.to_string())?;
            c.w.flush()?;
            c.stderr_loop()?;
            let items = read_strings(&mut c.r)?;
            let bad = |what: String| Failure::Wire(WireError::Malformed(what));
            let Some(item) = items.first() else { return Ok(None) };
            if c.minor < 31 {
                return Ok(Some(Realisation {
                    id: id.clone(),
                    out_path: self.parse(item)?,
                    signatures: BTreeSet::new(),
                    dependent: BTreeMap::new(),
                }));
            }
            let v: serde_json::Value = serde_json::from_str(item).map_err(|e| bad(format!("realisation of '{id}': {e}")))?;
            let r = Realisation::from_json(&v).map_err(|e| bad(format!("realisation of '{id}': {e}")))?;
            if r.id != *id {
                return Err(bad(format!("asked for the realisation of '{id}', got one of '{}'", r.id)));
            }
            Ok(Some(r))
        })
    }

    /// Breadth first, one pipelined batch of path-info requests per level.
    fn closure(&self, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
        let mut seen: HashSet<StorePath> = roots.iter().cloned().collect();
        let mut frontier: Vec<StorePath> = seen.iter().cloned().collect();
        let mut out = Vec::new();
        while !frontier.is_empty() {
            let infos = self.path_infos(&frontier)?;
            let mut next = Vec::new();
            for (p, info) in frontier.iter().zip(infos) {
                let info = info.ok_or_else(|| StoreError::NotValid(self.store_dir.display(p)))?;
                for r in &info.references {
                    if seen.insert(r.clone()) {
                        next.push(r.clone());
                    }
                }
                out.push(info);
            }
            frontier = next;
        }
        Ok(out)
    }

    fn all_paths(&self) -> Result<Vec<StorePath>> {
        self.with(|c| {
            write_u64(&mut c.w, OP_QUERY_ALL_VALID_PATHS)?;
            c.w.flush()?;
            c.stderr_loop()?;
            read_strings(&mut c.r)?.iter().map(|s| self.parse(s)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn path(i: usize) -> StorePath {
        StorePath::from_basename(&format!("{i:032}-p")).unwrap()
    }

    /// A daemon that answers path-info requests with `narSize = 1000 + i` for path `i`,
    /// but refuses its request numbered `fail_at`. It serves one connection: a client
    /// that reconnected would time out.
    fn fake_daemon(socket: &Path, fail_at: usize) -> std::thread::JoinHandle<()> {
        let listener = crate::store::fs::socket::bind(socket).unwrap();
        std::thread::spawn(move || {
            let mut served = 0;
            for conn in listener.incoming().take(1) {
                let mut c = conn.unwrap();
                let mut r = c.try_clone().unwrap();
                let (_, _) = (read_u64(&mut r).unwrap(), read_u64(&mut r).unwrap());
                write_u64(&mut c, WORKER_MAGIC_2).unwrap();
                write_u64(&mut c, CLIENT_VERSION).unwrap();
                let (_, _) = (read_u64(&mut r).unwrap(), read_u64(&mut r).unwrap());
                write_string(&mut c, "fake").unwrap();
                write_u64(&mut c, STDERR_LAST).unwrap();
                let mut k = 0;
                while let Ok(op) = read_u64(&mut r) {
                    assert_eq!(op, OP_QUERY_PATH_INFO);
                    let p = read_string(&mut r).unwrap();
                    let i: usize = p["/nix/store/".len()..][..32].parse().unwrap();
                    let mut reply = Vec::new();
                    if k == fail_at {
                        write_u64(&mut reply, STDERR_ERROR).unwrap();
                        write_string(&mut reply, "Error").unwrap();
                        write_u64(&mut reply, 0).unwrap();
                        write_string(&mut reply, "Error").unwrap();
                        write_string(&mut reply, &format!("refusing '{p}'")).unwrap();
                        write_u64(&mut reply, 0).unwrap();
                        write_u64(&mut reply, 0).unwrap();
                    } else {
                        write_u64(&mut reply, STDERR_LAST).unwrap();
                        write_u64(&mut reply, 1).unwrap();
                        write_string(&mut reply, "").unwrap();
                        write_string(&mut reply, &"ab".repeat(32)).unwrap();
                        write_u64(&mut reply, 0).unwrap();
                        write_u64(&mut reply, 0).unwrap();
                        write_u64(&mut reply, 1000 + i as u64).unwrap();
                        write_u64(&mut reply, 0).unwrap();
                        write_u64(&mut reply, 0).unwrap();
                        write_string(&mut reply, "").unwrap();
                    }
                    c.write_all(&reply).unwrap();
                    k += 1;
                    served += 1;
                }
            }
            assert!(served > 0);
        })
    }

    #[test]
    fn an_error_mid_pipeline_does_not_shift_later_replies() {
        for fail_at in [0, 3, 9] {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("daemon.sock");
            let daemon = fake_daemon(&socket, fail_at);
            let store = DaemonStore {
                socket,
                real: dir.path().join("store"),
                store_dir: StoreDir::new("/nix/store"),
                timeout: Duration::from_secs(5),
                conn: RefCell::new(None),
            };
            let batch: Vec<StorePath> = (0..10).map(path).collect();
            let err = store.path_infos(&batch).unwrap_err().to_string();
            assert!(err.contains("refusing"), "{err}");
            // Every later answer belongs to its own request.
            for i in [4usize, 5, 11] {
                let info = store.path_info(&path(i)).unwrap().unwrap();
                assert_eq!(info.nar_size, 1000 + i as u64, "after a failure at {fail_at}");
            }
            let infos = store.path_infos(&[path(20), path(21)]).unwrap();
            assert_eq!(infos.iter().map(|i| i.as_ref().unwrap().nar_size).collect::<Vec<_>>(), vec![1020, 1021]);
            drop(store);
            daemon.join().unwrap();
        }
    }
}
