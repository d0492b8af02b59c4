//! One client connection: the handshake, then requests until the client hangs up.
//!
//! Every request is an opcode and its arguments; the reply is any number of log frames,
//! then `STDERR_LAST` and the result, or `STDERR_ERROR`. An error while the arguments
//! are read (garbage, a bad path) ends the connection, as with `nix-daemon`; an error
//! while the store works on a request is reported and the connection goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::trust::{self, Peer, Trust};
use crate::format::hash::{Hash, HashAlgo};
use crate::format::{ContentAddress, DrvOutput, Realisation, StoreDir, StorePath};
use crate::spec::{StoreKind, StoreSpec};
use crate::store::daemon::wire::{self, read_bool, read_count, read_string, read_strings, read_u64, write_string, write_u64, WireError};
use crate::store::gc::{Collector, GcAction, GcOptions};
use crate::store::local::ingest::{self, NarUpload};
use crate::store::{Opened, PathInfo, StoreError};

const WORKER_MAGIC_1: u64 = 0x6e69_7863;
const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// Protocol 1.34, Nix 2.8's. Newer clients negotiate down to it (each side uses the
/// lower minor), so every client speaks this one dialect with us.
pub(super) const SERVER_VERSION: u64 = 0x122;
/// Clients older than 1.10 are dropped, as by nix-daemon.
const OLDEST_CLIENT: u64 = 0x10a;

const STDERR_NEXT: u64 = 0x6f6c_6d67;
const STDERR_LAST: u64 = 0x616c_7473;
const STDERR_ERROR: u64 = 0x6378_7470;

/// A client has this long to finish the handshake, and to send each part of a request
/// once it started one; between requests it may idle as long as it likes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest NAR accepted in one upload frame stream (a framed source reads in chunks, so
/// this bounds nothing in memory; it bounds a runaway client).
const MAX_FRAME: u64 = 1 << 24;

/// Opens the store a spec describes for one connection, with its policy.
pub(super) fn open_store(spec: &StoreSpec) -> Result<Opened, StoreError> {
    let policy: Box<dyn crate::store::overlay::OverlayPolicy> = match (&spec.policy, spec.kind) {
        (Some(file), StoreKind::LocalOverlay) => {
            Box::new(crate::policy::LuaPolicy::load(file, &spec.policy_limits, Some(spec)).map_err(|e| StoreError::Other(e.to_string()))?)
        }
        _ => Box::new(crate::store::overlay::NixPolicy),
    };
    Opened::open(spec, policy)
}

/// Why a request failed.
pub(super) enum Failure {
    /// Reported to the client with `STDERR_ERROR`; the connection goes on.
    Op(String),
    /// The connection cannot go on (a broken frame, a hung-up client).
    Wire(WireError),
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Self {
        Failure::Wire(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Wire(wire::map_io(e))
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Op(e.to_string())
    }
}

type OpResult<T = ()> = Result<T, Failure>;

/// Nix colours the values it interpolates into messages; its clients strip the
/// escapes when not writing to a terminal.
fn hl(s: &str) -> String {
    format!("\x1b[35;1m{s}\x1b[0m")
}

pub(super) struct Conn<'a> {
    pub(super) r: BufReader<UnixStream>,
    pub(super) w: BufWriter<UnixStream>,
    stream: UnixStream,
    pub(super) minor: u64,
    pub(super) spec: &'a StoreSpec,
    pub(super) trust: Trust,
    pub(super) store: Opened,
}

/// Serves one connection to its end; problems are logged, never raised.
pub(super) fn serve(stream: UnixStream, spec: &StoreSpec, over_limit: bool) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("a connection without peer credentials: {e}");
            return;
        }
    };
    let who = format!("pid {}, user {}", peer.pid, peer.user);
    match handshake(stream, spec, peer, over_limit) {
        Ok(Some(mut conn)) => {
            tracing::info!("accepted connection from {who}{}", if conn.trust == Trust::Trusted { " (trusted)" } else { "" });
            match conn.requests() {
                Ok(()) => tracing::debug!("connection from {who} closed"),
                Err(e) => tracing::info!("connection from {who} ended: {e}"),
            }
        }
        Ok(None) => {}
        Err(e) => tracing::info!("handshake with {who} failed: {e}"),
    }
}

/// The server's half of the handshake. `None` when the client was turned away (it
/// got an error frame saying why).
fn handshake(stream: UnixStream, spec: &StoreSpec, peer: Peer, over_limit: bool) -> Result<Option<Conn<'_>>, WireError> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(WireError::Io)?;
    let mut r = BufReader::new(stream.try_clone().map_err(WireError::Io)?);
    let mut w = BufWriter::new(stream.try_clone().map_err(WireError::Io)?);
    if read_u64(&mut r)? != WORKER_MAGIC_1 {
        return Err(WireError::Malformed("not a Nix client (bad magic)".into()));
    }
    write_u64(&mut w, WORKER_MAGIC_2)?;
    write_u64(&mut w, SERVER_VERSION)?;
    w.flush()?;
    let client = read_u64(&mut r)?;
    if client < OLDEST_CLIENT || client >> 8 != 1 {
        return Err(WireError::Malformed(format!("unsupported client protocol version {}.{}", client >> 8, client & 0xff)));
    }
    let minor = (client & 0xff).min(SERVER_VERSION & 0xff);
    if minor >= 14 && read_u64(&mut r)? != 0 {
        // Obsolete CPU affinity, ignored.
        read_u64(&mut r)?;
    }
    if minor >= 11 {
        read_u64(&mut r)?; // obsolete reserveSpace
    }
    if minor >= 33 {
        write_string(&mut w, &format!("{} (overlay-store {})", NIX_VERSION, env!("CARGO_PKG_VERSION")))?;
    }
    let trust = trust::decide(&spec.serve, &peer);
    let refusal = if trust == Trust::Refused {
        Some(format!("user '{}' is not allowed to connect to the Nix daemon", peer.user))
    } else if over_limit {
        Some(format!("the store server has reached its limit of {} connections; try again later", spec.serve.max_connections))
    } else {
        None
    };
    if let Some(msg) = refusal {
        tracing::warn!("refused a connection from pid {}: {msg}", peer.pid);
        write_error(&mut w, minor, &msg)?;
        w.flush()?;
        return Ok(None);
    }
    let store = match open_store(spec) {
        Ok(s) => s,
        Err(e) => {
            write_error(&mut w, minor, &format!("cannot open the store: {e}"))?;
            w.flush()?;
            return Ok(None);
        }
    };
    write_u64(&mut w, STDERR_LAST)?;
    w.flush()?;
    Ok(Some(Conn { r, w, stream, minor, spec, trust, store }))
}

/// The Nix version whose behaviour we answer with.
const NIX_VERSION: &str = "2.8.0";

fn write_error(w: &mut impl Write, minor: u64, msg: &str) -> io::Result<()> {
    write_u64(w, STDERR_ERROR)?;
    if minor >= 26 {
        write_string(w, "Error")?;
        write_u64(w, 0)?; // level: error
        write_string(w, "Error")?;
        write_string(w, msg)?;
        write_u64(w, 0)?; // no position
        write_u64(w, 0) // no traces
    } else {
        write_string(w, msg)?;
        write_u64(w, 1) // exit status
    }
}

impl Conn<'_> {
    fn requests(&mut self) -> Result<(), WireError> {
        loop {
            self.stream.set_read_timeout(None).map_err(WireError::Io)?;
            let op = match read_u64(&mut self.r) {
                Ok(op) => op,
                Err(WireError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            self.stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(WireError::Io)?;
            match self.op(op) {
                Ok(()) => {}
                Err(Failure::Op(msg)) => {
                    write_error(&mut self.w, self.minor, &msg)?;
                }
                Err(Failure::Wire(e)) => {
                    // Tell the client when it can still hear it, then hang up.
                    let _ = write_error(&mut self.w, self.minor, &e.to_string());
                    let _ = self.w.flush();
                    return Err(e);
                }
            }
            self.w.flush().map_err(wire::map_io)?;
        }
    }

    pub(super) fn store_dir(&self) -> StoreDir {
        self.store.store().store_dir().clone()
    }

    /// Reads a store path argument; one outside the store ends the connection.
    pub(super) fn read_path(&mut self) -> OpResult<StorePath> {
        let s = read_string(&mut self.r)?;
        self.parse_path(&s).map_err(Failure::Wire)
    }

    fn parse_path(&self, s: &str) -> Result<StorePath, WireError> {
        self.store_dir().parse_path(s).map_err(|_| WireError::Malformed(format!("path '{}' is not in the Nix store", hl(s))))
    }

    fn read_paths(&mut self) -> OpResult<Vec<StorePath>> {
        let items = read_strings(&mut self.r)?;
        items.iter().map(|s| self.parse_path(s).map_err(Failure::Wire)).collect()
    }

    /// `STDERR_LAST`: the request succeeded; its result follows.
    pub(super) fn last(&mut self) -> io::Result<()> {
        write_u64(&mut self.w, STDERR_LAST)
    }

    /// A log line for the client (it prints it on its stderr).
    pub(super) fn log(&mut self, line: &str) -> io::Result<()> {
        write_u64(&mut self.w, STDERR_NEXT)?;
        write_string(&mut self.w, &format!("{line}\n"))?;
        self.w.flush()
    }

    fn write_path_set<'p>(&mut self, paths: impl IntoIterator<Item = &'p StorePath>) -> io::Result<()> {
        let sd = self.store_dir();
        let mut items: Vec<String> = paths.into_iter().map(|p| sd.display(p)).collect();
        items.sort();
        items.dedup();
        wire::write_strings(&mut self.w, items.iter().map(String::as_str))
    }

    /// The unkeyed part of a path's info, as QueryPathInfo and AddToStore reply it.
    fn write_info(&mut self, info: &PathInfo) -> io::Result<()> {
        let sd = self.store_dir();
        write_string(&mut self.w, &info.deriver.as_ref().map(|d| sd.display(d)).unwrap_or_default())?;
        write_string(&mut self.w, &info.nar_hash.to_base16())?;
        self.write_path_set(&info.references)?;
        write_u64(&mut self.w, info.registration_time.max(0) as u64)?;
        write_u64(&mut self.w, info.nar_size)?;
        write_u64(&mut self.w, info.ultimate as u64)?;
        wire::write_strings(&mut self.w, info.sigs.iter().map(String::as_str))?;
        write_string(&mut self.w, &info.ca.as_ref().map(|c| c.to_string()).unwrap_or_default())
    }

    /// Reads a path's info as clients send it for uploads (path first).
    fn read_info(&mut self) -> OpResult<PathInfo> {
        let path = self.read_path()?;
        let deriver = read_string(&mut self.r)?;
        let deriver = if deriver.is_empty() { None } else { Some(self.parse_path(&deriver)?) };
        let hash = read_string(&mut self.r)?;
        let nar_hash = Hash::parse_digest(HashAlgo::Sha256, hash.strip_prefix("sha256:").unwrap_or(&hash))
            .map_err(|e| Failure::Wire(WireError::Malformed(format!("NAR hash '{hash}': {e}"))))?;
        let references: BTreeSet<StorePath> = self.read_paths()?.into_iter().collect();
        let registration_time = read_u64(&mut self.r)? as i64;
        let nar_size = read_u64(&mut self.r)?;
        let ultimate = read_bool(&mut self.r)?;
        let sigs: BTreeSet<String> = read_strings(&mut self.r)?.into_iter().collect();
        let ca = read_string(&mut self.r)?;
        let ca = if ca.is_empty() {
            None
        } else {
            Some(ContentAddress::parse(&ca).map_err(|e| Failure::Wire(WireError::Malformed(format!("content address '{ca}': {e}"))))?)
        };
        Ok(PathInfo { path, deriver, nar_hash, references, registration_time, nar_size, ultimate, sigs, ca })
    }

    fn require_trusted(&self, what: &str) -> OpResult {
        if self.trust == Trust::Trusted {
            Ok(())
        } else {
            Err(Failure::Op(format!("you are not privileged to {what}")))
        }
    }

    fn op(&mut self, op: u64) -> OpResult {
        match op {
            op::IS_VALID_PATH => {
                let p = self.read_path()?;
                let valid = self.store.store().is_valid(&p)?;
                self.last()?;
                write_u64(&mut self.w, valid as u64)?;
            }
            op::QUERY_VALID_PATHS => {
                let paths = self.read_paths()?;
                if self.minor >= 27 {
                    read_bool(&mut self.r)?; // substitute: we have no substituters
                }
                let mut valid = Vec::new();
                for p in paths {
                    if self.store.store().is_valid(&p)? {
                        valid.push(p);
                    }
                }
                self.last()?;
                self.write_path_set(&valid)?;
            }
            op::QUERY_PATH_INFO => {
                let p = self.read_path()?;
                let info = self.store.store().path_info(&p)?;
                self.last()?;
                match info {
                    Some(info) => {
                        write_u64(&mut self.w, 1)?;
                        self.write_info(&info)?;
                    }
                    None => write_u64(&mut self.w, 0)?,
                }
            }
            op::QUERY_REFERRERS => {
                let p = self.read_path()?;
                let r = self.store.store().referrers(&p)?;
                self.last()?;
                self.write_path_set(&r)?;
            }
            op::QUERY_VALID_DERIVERS => {
                let p = self.read_path()?;
                let d = self.store.store().valid_derivers(&p)?;
                self.last()?;
                self.write_path_set(&d)?;
            }
            op::QUERY_DERIVATION_OUTPUTS => {
                let p = self.read_path()?;
                let outs = self.store.store().derivation_outputs(&p)?;
                self.last()?;
                self.write_path_set(outs.values())?;
            }
            op::QUERY_DERIVATION_OUTPUT_MAP => {
                let p = self.read_path()?;
                if !self.store.store().is_valid(&p)? {
                    return Err(Failure::Op(format!("path '{}' is not valid", hl(&self.store_dir().display(&p)))));
                }
                let outs = self.derivation_output_map(&p)?;
                self.last()?;
                write_u64(&mut self.w, outs.len() as u64)?;
                let sd = self.store_dir();
                for (name, path) in outs {
                    write_string(&mut self.w, &name)?;
                    write_string(&mut self.w, &path.map(|p| sd.display(&p)).unwrap_or_default())?;
                }
            }
            op::QUERY_ALL_VALID_PATHS => {
                let all = self.store.store().all_paths()?;
                self.last()?;
                self.write_path_set(&all)?;
            }
            op::QUERY_PATH_FROM_HASH_PART => {
                let hash_part = read_string(&mut self.r)?;
                if crate::format::store_path::validate_hash_part(&hash_part).is_err() {
                    return Err(Failure::Op("invalid hash part".into()));
                }
                let p = self.store.store().path_from_hash_part(&hash_part)?;
                self.last()?;
                let shown = p.map(|p| self.store_dir().display(&p)).unwrap_or_default();
                write_string(&mut self.w, &shown)?;
            }
            op::QUERY_SUBSTITUTABLE_PATHS => {
                self.read_paths()?;
                self.last()?;
                write_u64(&mut self.w, 0)?;
            }
            op::QUERY_SUBSTITUTABLE_PATH_INFO => {
                self.read_path()?;
                self.last()?;
                write_u64(&mut self.w, 0)?;
            }
            op::QUERY_SUBSTITUTABLE_PATH_INFOS => {
                if self.minor < 22 {
                    self.read_paths()?;
                } else {
                    let n = read_count(&mut self.r)?;
                    for _ in 0..n {
                        self.read_path()?;
                        read_string(&mut self.r)?;
                    }
                }
                self.last()?;
                write_u64(&mut self.w, 0)?;
            }
            op::QUERY_MISSING => {
                let targets = read_strings(&mut self.r)?;
                let missing = super::build::query_missing(self, &targets)?;
                self.last()?;
                self.write_path_set(&missing.will_build)?;
                write_u64(&mut self.w, 0)?; // willSubstitute: no substituters
                self.write_path_set(&missing.unknown)?;
                write_u64(&mut self.w, 0)?; // downloadSize
                write_u64(&mut self.w, 0)?; // narSize
            }
            op::SET_OPTIONS => {
                self.set_options()?;
                self.last()?;
            }
            op::ADD_TEMP_ROOT => {
                let p = self.read_path()?;
                self.store.registry().add_temp_root(&p)?;
                self.last()?;
                write_u64(&mut self.w, 1)?;
            }
            op::ADD_INDIRECT_ROOT => {
                let link = read_string(&mut self.r)?;
                self.add_indirect_root(&link)?;
                self.last()?;
                write_u64(&mut self.w, 1)?;
            }
            op::SYNC_WITH_GC => {
                self.last()?;
                write_u64(&mut self.w, 1)?;
            }
            op::FIND_ROOTS => {
                let mut roots = self.find_roots()?;
                if self.trust != Trust::Trusted {
                    // Other users' processes are nobody else's business, as with nix-daemon.
                    for links in roots.values_mut() {
                        let censored = links.iter().any(|l| l.starts_with('{'));
                        links.retain(|l| !l.starts_with('{'));
                        if censored {
                            links.insert("{censored}".into());
                        }
                    }
                }
                self.last()?;
                let n: usize = roots.values().map(|l| l.len()).sum();
                write_u64(&mut self.w, n as u64)?;
                let sd = self.store_dir();
                for (path, links) in roots {
                    for link in links {
                        write_string(&mut self.w, &link)?;
                        write_string(&mut self.w, &sd.display(&path))?;
                    }
                }
            }
            op::COLLECT_GARBAGE => self.collect_garbage()?,
            op::NAR_FROM_PATH => {
                let p = self.read_path()?;
                if !self.store.store().is_valid(&p)? {
                    return Err(Failure::Op(format!("path '{}' is not valid", hl(&self.store_dir().display(&p)))));
                }
                let real = self.store.store().real_path(&p);
                // The NAR follows STDERR_LAST on the connection itself.
                self.last()?;
                crate::store::fs::tree::dump(&real, &mut self.w).map_err(|e| Failure::Wire(WireError::Io(e)))?;
            }
            op::ENSURE_PATH => {
                let p = self.read_path()?;
                if !self.store.store().is_valid(&p)? {
                    return Err(Failure::Op(format!(
                        "path '{}' is not valid, and this store has no substituters",
                        hl(&self.store_dir().display(&p))
                    )));
                }
                self.last()?;
                write_u64(&mut self.w, 1)?;
            }
            op::ADD_TO_STORE => self.add_to_store()?,
            op::ADD_TEXT_TO_STORE => {
                let name = read_string(&mut self.r)?;
                let text = wire::read_bytes(&mut self.r, MAX_TEXT)?;
                let refs: BTreeSet<StorePath> = self.read_paths()?.into_iter().collect();
                let info = ingest::add_ca(self.store.ingest(), &name, ingest::CaMethod::Text, &refs, &mut &text[..])?;
                self.last()?;
                let shown = self.store_dir().display(&info.path);
                write_string(&mut self.w, &shown)?;
            }
            op::ADD_TO_STORE_NAR => {
                let info = self.read_info()?;
                let _repair = read_bool(&mut self.r)?;
                let _dont_check_sigs = read_bool(&mut self.r)?;
                if self.minor < 23 {
                    return Err(Failure::Wire(WireError::Malformed("NAR uploads need protocol 1.23 or newer".into())));
                }
                if let Err(refused) = self.check_upload(&info) {
                    // The NAR is on its way regardless: read it, so the next request parses.
                    FramedReader::new(&mut self.r).drain()?;
                    return Err(refused);
                }
                let mut framed = FramedReader::new(&mut self.r);
                let result = ingest::add_nars(self.store.ingest(), vec![NarUpload { info }], &mut framed);
                let drained = framed.drain();
                result?;
                drained?;
                self.last()?;
            }
            op::ADD_MULTIPLE_TO_STORE => {
                let _repair = read_bool(&mut self.r)?;
                let _dont_check_sigs = read_bool(&mut self.r)?;
                self.add_multiple()?;
                self.last()?;
            }
            op::BUILD_PATHS => {
                let targets = read_strings(&mut self.r)?;
                if self.minor >= 15 {
                    read_u64(&mut self.r)?; // build mode: normal builds only
                }
                let results = super::build::build(self, &targets)?;
                if let Some(failed) = results.iter().find(|r| !r.ok()) {
                    return Err(Failure::Op(failed.error.clone()));
                }
                self.last()?;
                write_u64(&mut self.w, 1)?;
            }
            op::BUILD_PATHS_WITH_RESULTS => {
                let targets = read_strings(&mut self.r)?;
                read_u64(&mut self.r)?; // build mode
                let results = super::build::build(self, &targets)?;
                self.last()?;
                write_u64(&mut self.w, results.len() as u64)?;
                for r in &results {
                    write_string(&mut self.w, &r.target)?;
                    super::build::write_result(&mut self.w, self.minor, r)?;
                }
            }
            op::BUILD_DERIVATION => {
                let result = super::build::build_derivation(self)?;
                self.last()?;
                super::build::write_result(&mut self.w, self.minor, &result)?;
            }
            op::OPTIMISE_STORE => {
                self.last_after(|c| match &mut c.store {
                    Opened::Overlay(o) => {
                        let mut notice = |_: &str| {};
                        o.optimise(&mut notice).map(drop)
                    }
                    // A local store has no lower copies to drop; Nix's hard-linking is not done here.
                    Opened::Local(_) => Ok(()),
                })?;
                write_u64(&mut self.w, 1)?;
            }
            op::VERIFY_STORE => {
                let check_contents = read_bool(&mut self.r)?;
                let repair = read_bool(&mut self.r)?;
                if repair {
                    self.require_trusted("repair paths")?;
                    return Err(Failure::Op(
                        "repairing through the daemon is not supported; run `overlay-store verify --repair` on the server".into(),
                    ));
                }
                let errors = self.verify(check_contents)?;
                self.last()?;
                write_u64(&mut self.w, errors as u64)?;
            }
            op::ADD_SIGNATURES => {
                let p = self.read_path()?;
                let sigs = read_strings(&mut self.r)?;
                self.require_trusted("add signatures")?;
                if !self.store.store().is_valid(&p)? {
                    return Err(Failure::Op(format!("path '{}' is not valid", hl(&self.store_dir().display(&p)))));
                }
                self.store.registry().db().add_signatures(&p, &sigs)?;
                self.last()?;
                write_u64(&mut self.w, 1)?;
            }
            op::QUERY_REALISATION => {
                let id = read_string(&mut self.r)?;
                let id = DrvOutput::parse(&id).map_err(|e| Failure::Wire(WireError::Malformed(e.to_string())))?;
                let r = self.store.store().realisation(&id)?;
                self.last()?;
                match r {
                    None => write_u64(&mut self.w, 0)?,
                    Some(r) => {
                        write_u64(&mut self.w, 1)?;
                        if self.minor < 31 {
                            let shown = self.store_dir().display(&r.out_path);
                            write_string(&mut self.w, &shown)?;
                        } else {
                            write_string(&mut self.w, &r.to_json().to_string())?;
                        }
                    }
                }
            }
            op::REGISTER_DRV_OUTPUT => {
                let realisation = if self.minor < 31 {
                    let id = read_string(&mut self.r)?;
                    let out = self.read_path()?;
                    let id = DrvOutput::parse(&id).map_err(|e| Failure::Wire(WireError::Malformed(e.to_string())))?;
                    Realisation { id, out_path: out, signatures: BTreeSet::new(), dependent: BTreeMap::new() }
                } else {
                    let text = read_string(&mut self.r)?;
                    let json: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| Failure::Wire(WireError::Malformed(format!("realisation: {e}"))))?;
                    Realisation::from_json(&json).map_err(|e| Failure::Wire(WireError::Malformed(e.to_string())))?
                };
                self.require_trusted("register realisations")?;
                self.store.register_realisations(&[realisation])?;
                self.last()?;
            }
            other => {
                return Err(Failure::Wire(WireError::Malformed(format!("invalid operation {other}"))));
            }
        }
        Ok(())
    }

    /// Runs `f`, then `STDERR_LAST`.
    fn last_after(&mut self, f: impl FnOnce(&mut Self) -> crate::store::Result<()>) -> OpResult {
        f(self)?;
        self.last()?;
        Ok(())
    }

    fn derivation_output_map(&self, drv: &StorePath) -> OpResult<BTreeMap<String, Option<StorePath>>> {
        let known = self.store.store().derivation_outputs(drv)?;
        let mut all: BTreeMap<String, Option<StorePath>> = known.into_iter().map(|(k, v)| (k, Some(v))).collect();
        // Outputs a .drv declares without a known path (floating CA) are listed empty.
        if let Ok(text) = std::fs::read(self.store.store().real_path(drv)) {
            if let Ok(outputs) = crate::format::derivation::parse_outputs(&text) {
                for o in outputs {
                    all.entry(o.name).or_insert(None);
                }
            }
        }
        Ok(all)
    }

    fn set_options(&mut self) -> OpResult {
        let r = &mut self.r;
        let _keep_failed = read_u64(r)?;
        let _keep_going = read_u64(r)?;
        let _try_fallback = read_u64(r)?;
        let _verbosity = read_u64(r)?;
        let _max_build_jobs = read_u64(r)?;
        let _max_silent_time = read_u64(r)?;
        read_u64(r)?; // obsolete useBuildHook
        let _verbose_build = read_u64(r)?;
        read_u64(r)?; // obsolete logType
        read_u64(r)?; // obsolete printBuildTrace
        let _build_cores = read_u64(r)?;
        let _use_substitutes = read_u64(r)?;
        if self.minor >= 12 {
            let n = read_count(r)?;
            for _ in 0..n {
                let name = read_string(r)?;
                let _value = read_string(r)?;
                tracing::debug!("client setting '{name}' ignored");
            }
        }
        Ok(())
    }

    /// `auto/<hash of the link>` in the store's gcroots, pointing at the client's link,
    /// as Nix records indirect roots.
    fn add_indirect_root(&mut self, link: &str) -> OpResult {
        if !link.starts_with('/') {
            return Err(Failure::Op(format!("indirect root '{}' is not an absolute path", hl(link))));
        }
        let state = &self.spec.state;
        let digest = Hash::new(HashAlgo::Sha1, &sha1_of(link.as_bytes()));
        let auto = state.join("gcroots").join("auto");
        std::fs::create_dir_all(&auto).map_err(|e| Failure::Op(format!("creating '{}': {e}", auto.display())))?;
        let root = auto.join(digest.to_nix32());
        let tmp = auto.join(format!(".tmp-{}-{}", std::process::id(), digest.to_nix32()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(link, &tmp)
            .and_then(|_| std::fs::rename(&tmp, &root))
            .map_err(|e| Failure::Op(format!("creating indirect root '{}': {e}", root.display())))
    }

    fn find_roots(&mut self) -> OpResult<crate::store::local::roots::Roots> {
        let opts = GcOptions { action: GcAction::Collect, max_freed: None, dry_run: true, keep_derivations: true, keep_outputs: false };
        let mut notice = |_: &str| {};
        let report = Collector { target: self.store.gc_target(), notice: &mut notice }.run(&opts)?;
        Ok(report.roots)
    }

    fn collect_garbage(&mut self) -> OpResult {
        let action = read_u64(&mut self.r)?;
        let paths = self.read_paths()?;
        let ignore_liveness = read_bool(&mut self.r)?;
        let max_freed = read_u64(&mut self.r)?;
        for _ in 0..3 {
            read_u64(&mut self.r)?; // obsolete
        }
        if ignore_liveness {
            return Err(Failure::Op("you are not allowed to ignore liveness".into()));
        }
        // Stricter than nix-daemon, which lets any allowed user collect: on a shared
        // overlay, deleting is for trusted users.
        if matches!(action, GC_DELETE_DEAD | GC_DELETE_SPECIFIC) {
            self.require_trusted("delete store paths (only trusted users may collect garbage on this store)")?;
        }
        let (gc_action, dry_run, return_live) = match action {
            GC_RETURN_LIVE => (GcAction::Collect, true, true),
            GC_RETURN_DEAD => (GcAction::Collect, true, false),
            GC_DELETE_DEAD => (GcAction::Collect, false, false),
            GC_DELETE_SPECIFIC => (GcAction::DeleteSpecific(paths), false, false),
            other => return Err(Failure::Wire(WireError::Malformed(format!("unknown GC action {other}")))),
        };
        let opts = GcOptions {
            action: gc_action,
            max_freed: (max_freed != u64::MAX && max_freed != 0).then_some(max_freed),
            dry_run,
            keep_derivations: self.spec.gc.keep_derivations,
            keep_outputs: self.spec.gc.keep_outputs,
        };
        let report = {
            let mut lines: Vec<String> = Vec::new();
            let mut notice = |m: &str| lines.push(m.to_string());
            let report = Collector { target: self.store.gc_target(), notice: &mut notice }.run(&opts);
            for l in lines {
                self.log(&l)?;
            }
            report?
        };
        self.last()?;
        let sd = self.store_dir();
        let listed: Vec<String> = if dry_run {
            let set = if return_live { &report.live } else { &report.dead };
            set.iter().map(|p| sd.display(p)).collect()
        } else {
            report.deleted.iter().map(|p| sd.display(p)).chain(report.garbage.iter().cloned()).collect()
        };
        wire::write_strings(&mut self.w, listed.iter().map(String::as_str))?;
        write_u64(&mut self.w, report.bytes_freed)?;
        write_u64(&mut self.w, 0)?; // obsolete
        Ok(())
    }

    fn verify(&mut self, check_contents: bool) -> OpResult<bool> {
        let infos = self.store.registry().db().all_infos()?;
        let mut lines: Vec<String> = Vec::new();
        let (report, _fixes) = {
            let mut notice = |m: &str| lines.push(m.to_string());
            let mut v = crate::store::local::verify::Verifier { store: self.store.store(), check_contents, notice: &mut notice };
            v.run(infos, None)?
        };
        for l in lines.iter().chain(report.messages.iter()) {
            self.log(l)?;
        }
        Ok(report.errors > 0)
    }

    /// Untrusted clients may add only what proves itself: content-addressed paths whose
    /// address matches their name. (Signature checking is not implemented, so signed
    /// input-addressed paths are refused too.)
    fn check_upload(&self, info: &PathInfo) -> OpResult {
        if self.trust == Trust::Trusted {
            return Ok(());
        }
        let sd = self.store_dir();
        if proves_itself(&sd, info) {
            Ok(())
        } else {
            Err(Failure::Op(format!("cannot add path '{}' because it lacks a signature by a trusted key", hl(&sd.display(&info.path)))))
        }
    }

    /// AddToStore, protocol 1.25 form: name, content-address method, references, repair,
    /// then the data (a NAR or the flat contents) as a framed stream.
    fn add_to_store(&mut self) -> OpResult {
        if self.minor < 25 {
            return Err(Failure::Wire(WireError::Malformed("AddToStore needs protocol 1.25 or newer".into())));
        }
        let name = read_string(&mut self.r)?;
        let method = read_string(&mut self.r)?;
        let refs: BTreeSet<StorePath> = self.read_paths()?.into_iter().collect();
        let _repair = read_bool(&mut self.r)?;
        let method = ingest::CaMethod::parse(&method)
            .ok_or_else(|| Failure::Wire(WireError::Malformed(format!("content-address method '{method}'"))))?;
        let mut framed = FramedReader::new(&mut self.r);
        let result = ingest::add_ca(self.store.ingest(), &name, method, &refs, &mut framed);
        let drained = framed.drain();
        drained?;
        let info = result?;
        self.last()?;
        let shown = self.store_dir().display(&info.path);
        write_string(&mut self.w, &shown)?;
        self.write_info(&info)?;
        Ok(())
    }

    /// AddMultipleToStore: a framed stream holding a count, then per path its info and
    /// its NAR. All of them are registered in one transaction, or none.
    fn add_multiple(&mut self) -> OpResult {
        let mut framed = FramedReader::new(&mut self.r);
        let n = read_count(&mut framed)?;
        let mut uploads = Vec::new();
        let result = (|| -> OpResult<()> {
            // Infos interleave with NARs, so each NAR is read (restored) as its info arrives.
            let store = &mut self.store;
            let trust = self.trust;
            let sd = store.store().store_dir().clone();
            let mut staged = ingest::Staging::new(store.ingest());
            for _ in 0..n {
                let info = read_info_from(&mut framed, &sd)?;
                if trust != Trust::Trusted {
                    if !proves_itself(&sd, &info) {
                        return Err(Failure::Op(format!(
                            "cannot add path '{}' because it lacks a signature by a trusted key",
                            hl(&sd.display(&info.path))
                        )));
                    }
                }
                staged.stage(info.clone(), &mut framed)?;
                uploads.push(info.path);
            }
            staged.commit()?;
            Ok(())
        })();
        let drained = framed.drain();
        result?;
        drained?;
        Ok(())
    }
}

/// A path's info inside an AddMultipleToStore stream (the same fields as AddToStoreNar).
fn read_info_from(r: &mut impl Read, sd: &StoreDir) -> OpResult<PathInfo> {
    let bad = |what: String| Failure::Wire(WireError::Malformed(what));
    let path = read_string(r)?;
    let path = sd.parse_path(&path).map_err(|_| bad(format!("path '{path}' is not in the Nix store")))?;
    let deriver = read_string(r)?;
    let deriver = if deriver.is_empty() { None } else { Some(sd.parse_path(&deriver).map_err(|e| bad(e.to_string()))?) };
    let hash = read_string(r)?;
    let nar_hash =
        Hash::parse_digest(HashAlgo::Sha256, hash.strip_prefix("sha256:").unwrap_or(&hash)).map_err(|e| bad(format!("NAR hash: {e}")))?;
    let mut references = BTreeSet::new();
    for s in read_strings(r)? {
        references.insert(sd.parse_path(&s).map_err(|e| bad(e.to_string()))?);
    }
    let registration_time = read_u64(r)? as i64;
    let nar_size = read_u64(r)?;
    let ultimate = read_bool(r)?;
    let sigs: BTreeSet<String> = read_strings(r)?.into_iter().collect();
    let ca = read_string(r)?;
    let ca = if ca.is_empty() { None } else { Some(ContentAddress::parse(&ca).map_err(|e| bad(e.to_string()))?) };
    Ok(PathInfo { path, deriver, nar_hash, references, registration_time, nar_size, ultimate, sigs, ca })
}

/// Whether a path's name is what its content address and references make it.
fn proves_itself(sd: &StoreDir, info: &PathInfo) -> bool {
    let Some(ca) = &info.ca else { return false };
    let self_ref = info.references.contains(&info.path);
    let others: BTreeSet<StorePath> = info.references.iter().filter(|r| **r != info.path).cloned().collect();
    sd.make_path_from_ca(info.path.name(), ca, &others, self_ref).is_ok_and(|p| p == info.path)
}

fn sha1_of(data: &[u8]) -> Vec<u8> {
    use sha1::Digest;
    sha1::Sha1::digest(data).to_vec()
}

/// Longest text AddTextToStore accepts (a `.drv` is far smaller).
const MAX_TEXT: u64 = 8 << 20;

/// Reads a framed stream (`u64 length` then that many bytes, until a zero length) as
/// one byte stream. Whatever the consumer leaves unread is drained, so the connection
/// stays in step after a failed upload.
pub(super) struct FramedReader<'r, R: Read> {
    inner: &'r mut R,
    left: u64,
    done: bool,
}

impl<'r, R: Read> FramedReader<'r, R> {
    pub(super) fn new(inner: &'r mut R) -> Self {
        FramedReader { inner, left: 0, done: false }
    }

    /// Reads to the end of the stream.
    pub(super) fn drain(mut self) -> Result<(), WireError> {
        io::copy(&mut self, &mut io::sink()).map_err(wire::map_io)?;
        Ok(())
    }
}

impl<R: Read> Read for FramedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            if self.done {
                return Ok(0);
            }
            let mut len = [0u8; 8];
            self.inner.read_exact(&mut len)?;
            let len = u64::from_le_bytes(len);
            if len == 0 {
                self.done = true;
                return Ok(0);
            }
            if len > MAX_FRAME {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
            }
            self.left = len;
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

const GC_RETURN_LIVE: u64 = 0;
const GC_RETURN_DEAD: u64 = 1;
const GC_DELETE_DEAD: u64 = 2;
const GC_DELETE_SPECIFIC: u64 = 3;

/// Operation codes (Nix's `WorkerOp`).
mod op {
    pub const IS_VALID_PATH: u64 = 1;
    pub const QUERY_REFERRERS: u64 = 6;
    pub const ADD_TO_STORE: u64 = 7;
    pub const ADD_TEXT_TO_STORE: u64 = 8;
    pub const BUILD_PATHS: u64 = 9;
    pub const ENSURE_PATH: u64 = 10;
    pub const ADD_TEMP_ROOT: u64 = 11;
    pub const ADD_INDIRECT_ROOT: u64 = 12;
    pub const SYNC_WITH_GC: u64 = 13;
    pub const FIND_ROOTS: u64 = 14;
    pub const SET_OPTIONS: u64 = 19;
    pub const COLLECT_GARBAGE: u64 = 20;
    pub const QUERY_SUBSTITUTABLE_PATH_INFO: u64 = 21;
    pub const QUERY_DERIVATION_OUTPUTS: u64 = 22;
    pub const QUERY_ALL_VALID_PATHS: u64 = 23;
    pub const QUERY_PATH_INFO: u64 = 26;
    pub const QUERY_PATH_FROM_HASH_PART: u64 = 29;
    pub const QUERY_SUBSTITUTABLE_PATH_INFOS: u64 = 30;
    pub const QUERY_VALID_PATHS: u64 = 31;
    pub const QUERY_SUBSTITUTABLE_PATHS: u64 = 32;
    pub const QUERY_VALID_DERIVERS: u64 = 33;
    pub const OPTIMISE_STORE: u64 = 34;
    pub const VERIFY_STORE: u64 = 35;
    pub const BUILD_DERIVATION: u64 = 36;
    pub const ADD_SIGNATURES: u64 = 37;
    pub const NAR_FROM_PATH: u64 = 38;
    pub const ADD_TO_STORE_NAR: u64 = 39;
    pub const QUERY_MISSING: u64 = 40;
    pub const QUERY_DERIVATION_OUTPUT_MAP: u64 = 41;
    pub const REGISTER_DRV_OUTPUT: u64 = 42;
    pub const QUERY_REALISATION: u64 = 43;
    pub const ADD_MULTIPLE_TO_STORE: u64 = 44;
    pub const BUILD_PATHS_WITH_RESULTS: u64 = 46;
}
