//! `copy --from`: filling a store (an overlay's upper layer) from binary caches.
//!
//! Three phases, so that a failure anywhere changes nothing:
//! 1. **Plan**: walk the closures of the requested paths through narinfos, stopping at
//!    paths the store already has (a lower path, an upper one). Every narinfo is checked
//!    before its references are followed: it names the path asked for, and it carries a
//!    signature by a trusted key (or is content-addressed, which its NAR proves).
//! 2. **Fetch**, in parallel: each NAR is streamed from the cache through its decoder
//!    into the store's real directory under a temporary name, its file hash and size,
//!    NAR hash and size checked on the way; a lying or runaway stream stops at the size
//!    the narinfo claims. Network failures are retried with backoff.
//! 3. **Register** the whole closure in one transaction, once every part verified.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayon::prelude::*;

use super::narinfo_cache::{Cached, NarinfoCache};
use super::transport::{Bounded, FetchFailure, Transport};
use super::{CacheError, Compression, Result};
use crate::format::hash::{Hasher, HashingReader};
use crate::format::narinfo::{narinfo_name, NarInfo, MAX_NARINFO_BYTES};
use crate::format::signing::{fingerprint, valid_signatures, PublicKey};
use crate::format::{StoreDir, StorePath};
use crate::store::fs::tree;
use crate::store::local::ingest::{IngestTarget, Staging};
use crate::store::PathInfo;

/// How substitution checks and fetches.
#[derive(Debug, Clone)]
pub struct SubstituteOptions {
    pub trusted_keys: Vec<PublicKey>,
    pub require_sigs: bool,
    /// Parallel downloads (`http-connections`).
    pub jobs: usize,
    /// Tries per file (`download-attempts`).
    pub attempts: u32,
    pub narinfo_cache: NarinfoCache,
}

/// One path fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: StorePath,
    pub cache: String,
    pub nar_size: u64,
    pub file_size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Fetched and registered, in the order they were planned.
    pub fetched: Vec<Fetched>,
    /// Paths of the closures the store already had (not fetched, not descended into).
    pub present: Vec<StorePath>,
}

/// Fetches the parts of the closures of `roots` that `target` lacks from `caches`
/// (tried in order), and registers them all in one transaction.
pub fn copy_from(target: &mut dyn IngestTarget, caches: &[Transport], roots: &[StorePath], opts: &SubstituteOptions) -> Result<Report> {
    let mut staging = Staging::new(target);
    let sd = staging.store_dir();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.clamp(1, 64))
        .thread_name(|i| format!("substitute-{i}"))
        .build()
        .map_err(|e| CacheError::Store(crate::store::StoreError::Other(format!("cannot start download threads: {e}"))))?;
    let mut usable = Vec::new();
    let mut first_error = None;
    for (i, cache) in caches.iter().enumerate() {
        match super::cache_info(cache, &sd) {
            Ok(_) => usable.push(i),
            Err(e) if caches.len() > 1 => {
                tracing::warn!("{e}; not using this substituter");
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if usable.is_empty() {
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    let caches: Vec<&Transport> = usable.iter().map(|&i| &caches[i]).collect();
    let caches = &caches[..];
    let (plan, present) = plan(&mut staging, caches, roots, opts, &pool, &sd)?;
    let progress =
        crate::progress::Task::new("copy-from", "paths fetched").with_total(plan.len() as u64, plan.iter().map(|(_, i)| i.nar_size).sum());

    let slots = plan.iter().map(|_| staging.reserve("substitute")).collect::<crate::store::Result<Vec<_>>>()?;
    let sizes: Vec<u64> = pool.install(|| {
        plan.par_iter()
            .zip(slots.par_iter())
            .map(|((ci, info), slot)| {
                let size = fetch_nar(&caches[*ci], info, slot.path(), opts.attempts, &sd)?;
                progress.advance(1, info.nar_size);
                Ok(size)
            })
            .collect::<Result<Vec<u64>>>()
    })?;

    let mut report = Report { fetched: Vec::new(), present };
    for (((ci, info), slot), file_size) in plan.into_iter().zip(slots).zip(sizes) {
        report.fetched.push(Fetched { path: info.path.clone(), cache: caches[ci].url().base.clone(), nar_size: info.nar_size, file_size });
        let info = PathInfo {
            path: info.path,
            deriver: info.deriver,
            nar_hash: info.nar_hash,
            references: info.references,
            registration_time: 0,
            nar_size: info.nar_size,
            ultimate: false,
            sigs: info.sigs,
            ca: info.ca,
        };
        let (shown, cache) = (sd.display(&info.path), caches[ci].url().base.clone());
        staging.adopt(info, slot).map_err(|e| CacheError::Nar { cache, path: shown, what: e.to_string() })?;
    }
    staging.commit()?;
    Ok(report)
}

impl SubstituteOptions {
    /// The spec's `[binary-caches]` settings; the narinfo cache is in the store's state.
    pub fn from_spec(spec: &crate::spec::StoreSpec) -> SubstituteOptions {
        let c = &spec.caches;
        SubstituteOptions {
            trusted_keys: super::trusted_keys(c),
            require_sigs: c.require_sigs,
            jobs: c.http_connections as usize,
            attempts: c.download_attempts as u32,
            narinfo_cache: NarinfoCache::new(
                Some(spec.state.join("narinfo-cache")),
                c.narinfo_cache_positive_ttl,
                c.narinfo_cache_negative_ttl,
            ),
        }
    }
}

/// The spec's `substituters` as transports.
pub fn substituters(spec: &crate::spec::StoreSpec) -> Result<Vec<Transport>> {
    let opts = super::TransportOptions { stall_timeout_secs: spec.caches.stalled_download_timeout };
    spec.caches.substituters.iter().map(|u| Ok(Transport::new(super::CacheUrl::parse(u)?, opts))).collect()
}

/// Substitutes the closures of `roots` from the spec's `substituters` (what `serve` does
/// for a client asking for a path it lacks). `Ok(None)` when there are none.
pub fn from_spec(target: &mut dyn IngestTarget, spec: &crate::spec::StoreSpec, roots: &[StorePath]) -> Result<Option<Report>> {
    if spec.caches.substituters.is_empty() {
        return Ok(None);
    }
    let caches = substituters(spec)?;
    copy_from(target, &caches, roots, &SubstituteOptions::from_spec(spec)).map(Some)
}

/// What substituting each of `roots` would fetch: the missing part of its closure, with
/// NAR and file sizes (`QueryMissing`'s `willSubstitute`). A root whose closure the
/// substituters cannot supply (or that is refused) is left out: it is unknown.
pub fn available(target: &mut dyn IngestTarget, spec: &crate::spec::StoreSpec, roots: &[StorePath]) -> Vec<(StorePath, u64, u64)> {
    let Ok(caches) = substituters(spec) else { return Vec::new() };
    if caches.is_empty() {
        return Vec::new();
    }
    let caches: Vec<&Transport> = caches.iter().collect();
    let opts = SubstituteOptions::from_spec(spec);
    let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(opts.jobs.clamp(1, 64)).build() else { return Vec::new() };
    let mut staging = Staging::new(target);
    let sd = staging.store_dir();
    let mut out: Vec<(StorePath, u64, u64)> = Vec::new();
    for root in roots {
        if let Ok((plan, _)) = plan(&mut staging, &caches, std::slice::from_ref(root), &opts, &pool, &sd) {
            for (_, i) in plan {
                if !out.iter().any(|(p, _, _)| *p == i.path) {
                    out.push((i.path.clone(), i.nar_size, i.file_size.unwrap_or(i.nar_size)));
                }
            }
        }
    }
    out
}

type Plan = Vec<(usize, NarInfo)>;

fn plan(
    staging: &mut Staging,
    caches: &[&Transport],
    roots: &[StorePath],
    opts: &SubstituteOptions,
    pool: &rayon::ThreadPool,
    sd: &StoreDir,
) -> Result<(Plan, Vec<StorePath>)> {
    let mut seen: HashSet<StorePath> = roots.iter().cloned().collect();
    let mut frontier: Vec<StorePath> = roots.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let mut planned = Vec::new();
    let mut present = Vec::new();
    while !frontier.is_empty() {
        let mut wanted = Vec::new();
        for p in frontier.drain(..) {
            if staging.is_present(&p)? {
                present.push(p);
            } else {
                wanted.push(p);
            }
        }
        let found: Vec<(usize, NarInfo)> =
            pool.install(|| wanted.par_iter().map(|p| find_narinfo(caches, p, opts, sd)).collect::<Result<Vec<_>>>())?;
        for (ci, info) in found {
            for r in &info.references {
                if seen.insert(r.clone()) {
                    frontier.push(r.clone());
                }
            }
            planned.push((ci, info));
        }
    }
    Ok((planned, present))
}

/// The first cache's checked narinfo for `path`. A cache whose narinfo is unusable
/// (unsigned, malformed, for another path) is skipped with a warning, as Nix does, and
/// its error is reported only if no later cache has a good one.
fn find_narinfo(caches: &[&Transport], path: &StorePath, opts: &SubstituteOptions, sd: &StoreDir) -> Result<(usize, NarInfo)> {
    let key = narinfo_name(path);
    let mut first_error = None;
    for (ci, cache) in caches.iter().enumerate() {
        let base = &cache.url().base;
        let (text, fresh) = match opts.narinfo_cache.lookup(base, path.hash_part()) {
            Cached::Narinfo(t) => (Some(t), false),
            Cached::Missing => (None, false),
            Cached::Unknown => {
                let fetched = with_retries(opts.attempts, || cache.get_text(&key, MAX_NARINFO_BYTES as u64));
                match fetched {
                    Ok(t) => (t, true),
                    Err(f) => {
                        let e = CacheError::Narinfo { cache: base.clone(), path: sd.display(path), what: f.what };
                        if caches.len() > 1 {
                            tracing::warn!("{e}; trying the next substituter");
                        }
                        first_error.get_or_insert(e);
                        continue;
                    }
                }
            }
        };
        let Some(text) = text else {
            if fresh {
                opts.narinfo_cache.remember(base, path.hash_part(), None);
            }
            continue;
        };
        match check_narinfo(&text, path, opts, sd, base) {
            Ok(info) => {
                // Only a narinfo that parsed and names the path is worth remembering.
                if fresh {
                    opts.narinfo_cache.remember(base, path.hash_part(), Some(&text));
                }
                return Ok((ci, info));
            }
            Err(e) => {
                if caches.len() > 1 {
                    tracing::warn!("{e}; trying the next substituter");
                }
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| CacheError::Missing {
        path: sd.display(path),
        caches: caches.iter().map(|c| c.url().base.clone()).collect::<Vec<_>>().join(", "),
    }))
}

fn check_narinfo(text: &str, path: &StorePath, opts: &SubstituteOptions, sd: &StoreDir, base: &str) -> Result<NarInfo> {
    let bad = |what: String| CacheError::Narinfo { cache: base.to_string(), path: sd.display(path), what };
    let info = NarInfo::parse(text, sd).map_err(|e| bad(e.to_string()))?;
    if info.path != *path {
        return Err(bad(format!("it describes '{}' instead", sd.display(&info.path))));
    }
    if Compression::parse(&info.compression).is_none() {
        return Err(bad(format!("compression '{}' is not supported (none, xz, zstd, bzip2)", info.compression)));
    }
    check_trust(&info, opts, sd).map_err(|what| CacheError::Untrusted { cache: base.to_string(), path: sd.display(path), what })?;
    Ok(info)
}

/// Signed by a trusted key, or content-addressed (the NAR is checked against the
/// address when it arrives), or signatures are not required.
fn check_trust(info: &NarInfo, opts: &SubstituteOptions, sd: &StoreDir) -> std::result::Result<(), String> {
    if !opts.require_sigs {
        return Ok(());
    }
    let as_path = PathInfo {
        path: info.path.clone(),
        deriver: None,
        nar_hash: info.nar_hash,
        references: info.references.clone(),
        registration_time: 0,
        nar_size: info.nar_size,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: info.ca.clone(),
    };
    if as_path.ca_names_path(sd) {
        return Ok(());
    }
    let fp = fingerprint(sd, &info.path, &info.nar_hash, info.nar_size, &info.references);
    if valid_signatures(&opts.trusted_keys, &fp, &info.sigs) > 0 {
        return Ok(());
    }
    let keys: Vec<&str> = opts.trusted_keys.iter().map(|k| k.name.as_str()).collect();
    Err(if info.sigs.is_empty() {
        "it is not signed, and require-sigs is on".to_string()
    } else if keys.is_empty() {
        "no trusted-public-keys are configured to check its signatures with".to_string()
    } else {
        format!("none of its signatures is a valid one by a trusted key ({})", keys.join(", "))
    })
}

fn with_retries<T>(attempts: u32, mut f: impl FnMut() -> std::result::Result<T, FetchFailure>) -> std::result::Result<T, FetchFailure> {
    let mut delay = Duration::from_millis(250);
    let mut tries = 1;
    loop {
        match f() {
            Err(e) if e.transient && tries < attempts.max(1) => {
                tracing::warn!("{}; retrying in {} ms", e.what, delay.as_millis());
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(8));
                tries += 1;
            }
            r => return r,
        }
    }
}

/// Downloads and restores the NAR of `info` at `dest`; the compressed size.
fn fetch_nar(cache: &Transport, info: &NarInfo, dest: &std::path::Path, attempts: u32, sd: &StoreDir) -> Result<u64> {
    let nar_err = |what: String| CacheError::Nar { cache: cache.url().base.clone(), path: sd.display(&info.path), what };
    with_retries(attempts, || {
        let _ = tree::remove(dest);
        download(cache, info, dest)
    })
    .map_err(|f| nar_err(f.what))
}

/// What the raw (compressed) stream saw: its hash and length, and whether the transport
/// failed (which makes the whole download worth another try).
struct RawState {
    hasher: Option<Hasher>,
    len: u64,
}

struct RawCounter {
    inner: Box<dyn Read + Send>,
    state: Arc<Mutex<RawState>>,
    transport_failed: Arc<AtomicBool>,
}

impl Read for RawCounter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                let mut s = self.state.lock().expect("not poisoned");
                if let Some(h) = &mut s.hasher {
                    h.update(&buf[..n]);
                }
                s.len += n as u64;
                drop(s);
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::InvalidData {
                    self.transport_failed.store(true, Ordering::Relaxed);
                }
                Err(e)
            }
        }
    }
}

fn download(cache: &Transport, info: &NarInfo, dest: &std::path::Path) -> std::result::Result<u64, FetchFailure> {
    let permanent = |what: String| FetchFailure { transient: false, what };
    let compression = Compression::parse(&info.compression).expect("checked when planned");
    // Without a FileSize, allow what any sane compressor could produce from the NAR.
    let max_file = info.file_size.unwrap_or(info.nar_size.saturating_mul(2).saturating_add(1 << 20));
    let raw = cache.get(&info.url, max_file)?.ok_or_else(|| permanent(format!("'{}' is missing from the cache", info.url)))?;
    let state = Arc::new(Mutex::new(RawState { hasher: info.file_hash.map(|h| Hasher::new(h.algo())), len: 0 }));
    let transport_failed = Arc::new(AtomicBool::new(false));
    let outcome = {
        let counter = RawCounter { inner: raw, state: state.clone(), transport_failed: transport_failed.clone() };
        let counter: Box<dyn Read + Send + '_> = Box::new(counter);
        let decoded = compression.decoder(counter).map_err(|e| permanent(format!("cannot start the {} decoder: {e}", compression.name())));
        decoded.and_then(|decoded| {
            let mut bounded = Bounded { inner: decoded, left: info.nar_size, what: "the NAR is longer than its narinfo says" };
            let mut hashing = HashingReader::new(&mut bounded, info.nar_hash.algo());
            let mut restorer = tree::Restorer::new(dest.to_path_buf());
            let parsed = crate::format::nar::parse(&mut hashing, &mut restorer);
            let (got, size) = hashing.finish();
            parsed.map_err(|e| FetchFailure { transient: false, what: e.to_string() })?;
            let mut rest = [0u8; 1];
            match bounded.read(&mut rest) {
                Ok(0) => {}
                Ok(_) => return Err(permanent("data follows the NAR".into())),
                Err(e) => return Err(permanent(format!("after the NAR: {e}"))),
            }
            if size != info.nar_size {
                return Err(permanent(format!("NAR size mismatch: the narinfo says {}, got {size}", info.nar_size)));
            }
            if got != info.nar_hash {
                return Err(permanent(format!(
                    "NAR hash mismatch: the narinfo says {}, got {}",
                    info.nar_hash.to_nix32_string(),
                    got.to_nix32_string()
                )));
            }
            Ok(())
        })
    };
    if let Err(mut e) = outcome {
        e.transient = transport_failed.load(Ordering::Relaxed);
        return Err(e);
    }
    let state = Arc::try_unwrap(state).ok().expect("the reader is gone").into_inner().expect("not poisoned");
    if let Some(expected) = info.file_size {
        if state.len != expected {
            return Err(permanent(format!("file size mismatch: the narinfo says {expected}, got {}", state.len)));
        }
    }
    if let (Some(expected), Some(h)) = (info.file_hash, state.hasher) {
        let got = h.finish();
        if got != expected {
            return Err(permanent(format!(
                "file hash mismatch: the narinfo says {}, got {}",
                expected.to_nix32_string(),
                got.to_nix32_string()
            )));
        }
    }
    Ok(state.len)
}
