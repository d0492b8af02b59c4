//! `copy --to`: publishing store paths as a binary cache stock Nix substitutes from.
//!
//! NARs are dumped from the store's files, checked against the NAR hash the database
//! has (a damaged store must not publish), compressed in parallel into scratch files and
//! moved to `nar/<file hash>.nar<ext>`. Narinfos are written last, dependencies first,
//! so a reader never finds a narinfo whose NAR or references are not there yet.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::PathBuf;

use rayon::prelude::*;

use super::transport::{set_readable, Transport};
use super::{CacheError, Compression, Result};
use crate::format::hash::{HashAlgo, HashSink};
use crate::format::narinfo::{narinfo_name, CacheInfo, NarInfo};
use crate::format::signing::{fingerprint, SecretKey};
use crate::format::{StoreDir, StorePath};
use crate::store::{topo_sort, PathInfo, Store};

#[derive(Debug, Clone)]
pub struct PublishOptions {
    pub compression: Compression,
    /// Each published narinfo gets a signature by each of these.
    pub keys: Vec<SecretKey>,
    pub jobs: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Written to the cache, dependencies first.
    pub published: Vec<StorePath>,
    /// The cache had them already.
    pub present: Vec<StorePath>,
}

pub fn copy_to(store: &dyn Store, cache: &Transport, roots: &[StorePath], opts: &PublishOptions) -> Result<PublishReport> {
    let sd = store.store_dir().clone();
    ensure_cache_info(cache, &sd)?;
    let ordered = topo_sort(store.closure(roots)?)?;
    let mut report = PublishReport::default();
    let mut todo: Vec<(PathInfo, PathBuf)> = Vec::new();
    for info in ordered {
        if cache.exists(&narinfo_name(&info.path))? {
            report.present.push(info.path);
        } else {
            let real = store.real_path(&info.path);
            todo.push((info, real));
        }
    }
    let progress =
        crate::progress::Task::new("copy-to", "paths published").with_total(todo.len() as u64, todo.iter().map(|(i, _)| i.nar_size).sum());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .map_err(|e| CacheError::Store(crate::store::StoreError::Other(format!("cannot start compression threads: {e}"))))?;
    let nars: Vec<(String, crate::format::Hash, u64)> = pool.install(|| {
        todo.par_iter()
            .map(|(info, real)| {
                let r = write_nar(cache, &sd, info, real, opts.compression);
                if r.is_ok() {
                    progress.advance(1, info.nar_size);
                }
                r
            })
            .collect::<Result<Vec<_>>>()
    })?;
    for ((info, _), (url, file_hash, file_size)) in todo.into_iter().zip(nars) {
        let narinfo = narinfo_of(&sd, &info, &opts.keys, url, opts.compression, Some((file_hash, file_size)));
        cache.put(&narinfo_name(&info.path), narinfo.render(&sd).as_bytes())?;
        report.published.push(info.path);
    }
    Ok(report)
}

/// Writes `nix-cache-info` for a new cache; an existing one must be for our store dir.
fn ensure_cache_info(cache: &Transport, sd: &StoreDir) -> Result<()> {
    if super::cache_info(cache, sd)?.is_none() {
        let info = CacheInfo { store_dir: sd.as_str().to_string(), want_mass_query: false, priority: None };
        cache.put("nix-cache-info", info.render().as_bytes())?;
    }
    Ok(())
}

/// Writes to two sinks: the NAR's hash and the compressor.
struct Tee<A, B>(A, B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.1.flush()
    }
}

/// Dumps, checks and compresses one path's NAR into the cache: its URL, file hash, size.
fn write_nar(
    cache: &Transport,
    sd: &StoreDir,
    info: &PathInfo,
    real: &std::path::Path,
    compression: Compression,
) -> Result<(String, crate::format::Hash, u64)> {
    let fail =
        |what: String| CacheError::Write { cache: cache.url().base.clone(), key: format!("NAR of {}", sd.display(&info.path)), what };
    let (tmp_path, file) = cache.scratch_file()?;
    let cleanup = Scratch(Some(tmp_path.clone()));
    let file_sink = Tee(HashSink::new(HashAlgo::Sha256), io::BufWriter::with_capacity(1 << 16, file));
    let encoder = compression.encoder(file_sink).map_err(|e| fail(e.to_string()))?;
    let Tee(nar_hash, encoder) = crate::store::fs::tree::dump(real, Tee(HashSink::new(HashAlgo::Sha256), encoder))
        .map_err(|e| fail(format!("'{}': {e}", real.display())))?;
    let Tee(file_hash, file) = encoder.finish().map_err(|e| fail(e.to_string()))?;
    let file = file.into_inner().map_err(|e| fail(e.to_string()))?;
    file.sync_data().map_err(|e| fail(e.to_string()))?;
    set_readable(&file);
    let (nar_hash, nar_size) = nar_hash.finish();
    if nar_hash != info.nar_hash || nar_size != info.nar_size {
        return Err(fail(format!(
            "the files do not match the database (NAR hash {} and size {nar_size}, registered {} and {}); run `overlay-store verify --check-contents`",
            nar_hash.to_nix32_string(),
            info.nar_hash.to_nix32_string(),
            info.nar_size
        )));
    }
    let (file_hash, file_size) = file_hash.finish();
    let url = format!("nar/{}.nar{}", file_hash.to_nix32(), compression.extension());
    cache.put_file(&url, &tmp_path)?;
    std::mem::forget(cleanup);
    Ok((url, file_hash, file_size))
}

/// Removes a scratch file that did not make it into the cache.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The narinfo publishing `info` at `url`: its row's signatures plus one per key.
pub(super) fn narinfo_of(
    sd: &StoreDir,
    info: &PathInfo,
    keys: &[SecretKey],
    url: String,
    compression: Compression,
    file: Option<(crate::format::Hash, u64)>,
) -> NarInfo {
    let mut sigs = info.sigs.clone();
    sigs.extend(new_signatures(sd, info, keys));
    NarInfo {
        path: info.path.clone(),
        url,
        compression: compression.name().to_string(),
        file_hash: file.map(|f| f.0),
        file_size: file.map(|f| f.1),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        system: None,
        sigs,
        ca: info.ca.clone(),
    }
}

/// Signatures `keys` make for `info` that it does not have yet.
pub fn new_signatures(sd: &StoreDir, info: &PathInfo, keys: &[SecretKey]) -> BTreeSet<String> {
    let fp = fingerprint(sd, &info.path, &info.nar_hash, info.nar_size, &info.references);
    keys.iter().map(|k| k.sign(&fp)).filter(|s| !info.sigs.contains(s)).collect()
}
