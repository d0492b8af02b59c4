//! One client connection: the handshake, then requests until the client hangs up.
//!
//! Every request is an opcode and its arguments; the reply is any number of log frames,
//! then `STDERR_LAST` and the result, or `STDERR_ERROR`. An error while the arguments
//! are read (garbage, a bad path) ends the connection, as with `nix-daemon`; an error
//! while the store works on a request is reported and the connection goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::handlers::check_upload;
use super::protocol::*;
use super::trust::{self, Peer, Trust};

use crate::format::{DrvOutput, Realisation, StoreDir, StorePath};
use crate::spec::{StoreKind, StoreSpec};
use crate::store::daemon::wire::{self, read_bool, read_string, read_u64, write_string, write_u64, WireError};
use crate::store::local::ingest::{self, NarUpload};
use crate::store::{Opened, PathInfo, StoreError};

/// A client has this long to finish the handshake, and to send each part of a request
/// once it started one; between requests it may idle as long as it likes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

impl Conn<'_> {
    /// Fetches `path`'s closure from the spec's `substituters`: `Ok(false)` when there
    /// are none, the cache's refusal as a message otherwise.
    pub(super) fn substitute(&mut self, path: &StorePath) -> Result<bool, String> {
        match crate::cache::substitute::from_spec(self.store.ingest(), self.spec, std::slice::from_ref(path)) {
            Ok(None) => Ok(false),
            Ok(Some(report)) => {
                tracing::info!("substituted {} path(s) for '{}'", report.fetched.len(), self.store_dir().display(path));
                Ok(true)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

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

pub(super) type OpResult<T = ()> = Result<T, Failure>;

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

    pub(super) fn parse_path(&self, s: &str) -> Result<StorePath, WireError> {
        self.store_dir().parse_path(s).map_err(|_| WireError::Malformed(format!("path '{}' is not in the Nix store", hl(s))))
    }

    pub(super) fn read_paths(&mut self) -> OpResult<Vec<StorePath>> {
        let items = read_string_list(&mut self.r)?;
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

    pub(super) fn write_path_set<'p>(&mut self, paths: impl IntoIterator<Item = &'p StorePath>) -> io::Result<()> {
        let sd = self.store_dir();
        let mut items: Vec<String> = paths.into_iter().map(|p| sd.display(p)).collect();
        items.sort();
        items.dedup();
        wire::write_strings(&mut self.w, items.iter().map(String::as_str))
    }

    /// The unkeyed part of a path's info, as QueryPathInfo and AddToStore reply it.
    pub(super) fn write_info(&mut self, info: &PathInfo) -> io::Result<()> {
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
    pub(super) fn read_info(&mut self) -> OpResult<PathInfo> {
        let sd = self.store_dir();
        Ok(read_info_from(&mut self.r, &sd)?)
    }

    pub(super) fn require_trusted(&self, what: &str) -> OpResult {
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
                    let n = read_map_count(&mut self.r)?;
                    for _ in 0..n {
                        self.read_path()?;
                        read_string(&mut self.r)?;
                    }
                }
                self.last()?;
                write_u64(&mut self.w, 0)?;
            }
            op::QUERY_MISSING => {
                let targets = read_string_list(&mut self.r)?;
                let mut missing = super::build::query_missing(self, &targets)?;
                let unknown: Vec<StorePath> = missing.unknown.iter().cloned().collect();
                let substitutable = crate::cache::substitute::available(self.store.ingest(), self.spec, &unknown);
                let mut will_substitute = BTreeSet::new();
                let (mut download, mut nar) = (0u64, 0u64);
                for (p, nar_size, file_size) in substitutable {
                    missing.unknown.remove(&p);
                    will_substitute.insert(p);
                    nar += nar_size;
                    download += file_size;
                }
                self.last()?;
                self.write_path_set(&missing.will_build)?;
                self.write_path_set(&will_substitute)?;
                self.write_path_set(&missing.unknown)?;
                write_u64(&mut self.w, download)?;
                write_u64(&mut self.w, nar)?;
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
                        // Temporary roots (`{temp:PID}`) and runtime roots (`/proc/PID/…`).
                        let private = |l: &String| l.starts_with('{') || l.starts_with("/proc/");
                        let censored = links.iter().any(private);
                        links.retain(|l| !private(l));
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
                    match self.substitute(&p) {
                        Ok(true) => {}
                        Ok(false) => {
                            return Err(Failure::Op(format!(
                                "path '{}' is not valid, and this store has no substituters",
                                hl(&self.store_dir().display(&p))
                            )))
                        }
                        Err(e) => return Err(Failure::Op(e)),
                    }
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
                let mut info = self.read_info()?;
                let _repair = read_bool(&mut self.r)?;
                let _dont_check_sigs = read_bool(&mut self.r)?;
                if self.minor < 23 {
                    return Err(Failure::Wire(WireError::Malformed("NAR uploads need protocol 1.23 or newer".into())));
                }
                if let Err(refused) = check_upload(self.trust, &self.store_dir(), &mut info) {
                    // The NAR is on its way regardless: read it, so the next request parses.
                    FramedReader::new(&mut self.r).drain()?;
                    return Err(refused);
                }
                let mut framed = FramedReader::new(&mut self.r);
                let result = ingest::add_nars(self.store.ingest(), vec![NarUpload { info }], &mut framed);
                // A broken stream ends the connection (whatever the store said): check it first.
                framed.drain()?;
                result?;
                self.last()?;
            }
            op::ADD_MULTIPLE_TO_STORE => {
                let _repair = read_bool(&mut self.r)?;
                let _dont_check_sigs = read_bool(&mut self.r)?;
                self.add_multiple()?;
                self.last()?;
            }
            op::BUILD_PATHS => {
                let targets = read_string_list(&mut self.r)?;
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
                let targets = read_string_list(&mut self.r)?;
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
                let sigs = read_string_list(&mut self.r)?;
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
}
