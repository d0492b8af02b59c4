//! Repair: putting back the contents of registered paths that verification found
//! modified or missing, from another store or an export file. A replacement is restored
//! under a temporary name, checked against the recorded NAR hash, and only then swapped
//! in under the path's lock, so a failed repair leaves the path as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::format::export;
use crate::format::StorePath;
use crate::store::fs::tree::{self, remove as remove_tree};
use crate::store::gc::FileRemover;
use crate::store::local::verify::hash_path;
use crate::store::local::{LocalStore, PathLock};
use crate::store::{io_err, PathInfo, Result, Store, StoreError};

/// Where good copies come from.
pub enum RepairSource<'a> {
    Store(&'a dyn Store),
    ExportFile(PathBuf),
}

#[derive(Debug, Default)]
pub struct RepairReport {
    pub repaired: Vec<StorePath>,
    /// Paths that could not be repaired, with why.
    pub failed: Vec<(StorePath, String)>,
    pub bypassed_mount: bool,
}

/// Restores good copies of `infos` into temporary objects that `new_temp` names.
/// Returns the temp object for each path it found with the recorded hash. NARs are
/// streamed (a pipe from the dumping thread), never held whole in memory.
fn fetch(
    store: &LocalStore,
    source: &RepairSource,
    infos: &BTreeMap<StorePath, PathInfo>,
    new_temp: &dyn Fn() -> Result<PathBuf>,
) -> Result<BTreeMap<StorePath, PathBuf>> {
    let mut got = BTreeMap::new();
    match source {
        RepairSource::Store(src) => {
            for (p, info) in infos {
                let Some(sinfo) = src.path_info(p)? else { continue };
                if sinfo.nar_hash != info.nar_hash {
                    continue;
                }
                let tmp = new_temp()?;
                let from = src.real_path(p);
                if let Err(e) = stream_copy(&from, &tmp) {
                    let _ = remove_tree(&tmp);
                    return Err(e);
                }
                got.insert(p.clone(), tmp);
            }
        }
        RepairSource::ExportFile(file) => {
            let f = fs::File::open(file).map_err(io_err(file))?;
            let mut r = BufReader::new(f);
            let sd = store.config().store_dir.clone();
            loop {
                // The item's path comes after its NAR: restore every NAR, keep the wanted.
                let tmp = new_temp()?;
                let mut v = tree::Restorer::new(tmp.clone());
                let item = match export::read_item(&mut r, &sd, &mut v) {
                    Ok(Some(i)) => i,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = remove_tree(&tmp);
                        return Err(e.into());
                    }
                };
                match infos.get(&item.path) {
                    Some(info) if info.nar_hash == item.nar_hash && !got.contains_key(&item.path) => {
                        got.insert(item.path, tmp);
                    }
                    _ => {
                        let _ = remove_tree(&tmp);
                    }
                }
            }
        }
    }
    Ok(got)
}

/// `from`'s NAR restored at `to`, through a pipe.
fn stream_copy(from: &Path, to: &Path) -> Result<()> {
    let (mut reader, writer) = std::io::pipe().map_err(io_err(to))?;
    std::thread::scope(|s| {
        let dumper = s.spawn(move || tree::dump(from, writer).map(drop));
        let restored = tree::restore(&mut reader, to);
        drop(reader);
        let dumped = dumper.join().expect("NAR dump thread");
        // A dump error closes the pipe and fails the restore too; name the cause.
        dumped.map_err(io_err(from))?;
        restored.map_err(StoreError::from)
    })
}

/// Flushes a restored tree to disk before it is renamed into place.
fn sync_tree(path: &Path) -> Result<()> {
    let f = fs::File::open(path).map_err(io_err(path))?;
    // One syncfs covers every file of the tree (repairs are rare; precision is not needed).
    if unsafe { libc::syncfs(std::os::unix::io::AsRawFd::as_raw_fd(&f)) } != 0 {
        return Err(io_err(path)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// For an overlay: where the lower store's copies are, and where a replacement for a
/// broken lower copy goes (the upper layer, written past the mount, so the caller
/// remounts; `note_bypass` records that first, so a crash still ends in a remount).
pub struct LowerLayer<'a> {
    pub lower_real: &'a Path,
    pub upper_layer: &'a Path,
    pub note_bypass: &'a dyn Fn() -> std::io::Result<()>,
}

impl LowerLayer<'_> {
    fn has(&self, p: &StorePath) -> bool {
        crate::store::overlay::layers::Layers::new(self.upper_layer, self.lower_real).lower_has(p.basename())
    }

    fn temp_name(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.upper_layer.join(format!(".repair-{}-{n}", std::process::id()))
    }
}

/// Marks an upper directory opaque, so the merged view shows only it and none of the
/// broken lower copy's entries.
fn make_opaque(dir: &Path) -> Result<()> {
    if !fs::symlink_metadata(dir).map_err(io_err(dir))?.is_dir() {
        return Ok(());
    }
    let name = c"trusted.overlay.opaque";
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str())).map_err(|e| io_err(dir)(e.into()))?;
    // SAFETY: both strings are NUL-terminated and outlive the call.
    if unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) } != 0 {
        return Err(io_err(dir)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Replaces the files of each path with a good copy from `source`. In an overlay
/// (`lower`), a path whose files the lower store has is repaired by removing any upper
/// copy when the lower copy is intact, and otherwise by writing a good copy into the upper
/// layer over it; either way the caller remounts (`bypassed_mount`).
pub fn repair(
    store: &LocalStore,
    remover: &dyn FileRemover,
    lower: Option<&LowerLayer>,
    source: &RepairSource,
    paths: &BTreeSet<StorePath>,
) -> Result<RepairReport> {
    let mut infos = BTreeMap::new();
    for p in paths {
        let info = store.db().path_info(p)?.ok_or_else(|| StoreError::NotValid(store.config().store_dir.display(p)))?;
        infos.insert(p.clone(), info);
    }
    let mut report = RepairReport::default();
    let (in_lower, upper): (BTreeMap<_, _>, BTreeMap<_, _>) = infos.into_iter().partition(|(p, _)| lower.is_some_and(|l| l.has(p)));
    let mut broken_lower = BTreeMap::new();
    if let Some(lower) = lower {
        for (p, info) in in_lower {
            let lock_file = remover.lock_path_of(&p);
            let _lock = PathLock::acquire(&lock_file, true).map_err(io_err(&lock_file))?;
            let removed = remover.remove_files(&p).map_err(io_err(store.real_path_of(&p)))?;
            report.bypassed_mount |= removed.bypassed_mount;
            let lower_copy = lower.lower_real.join(p.basename());
            match hash_path(&lower_copy, info.nar_hash.algo()) {
                Ok((h, _)) if h == info.nar_hash => report.repaired.push(p),
                _ => {
                    broken_lower.insert(p, info);
                }
            }
        }
        let fetched = fetch(store, source, &broken_lower, &|| Ok(lower.temp_name()))?;
        for (p, info) in &broken_lower {
            let Some(tmp) = checked(fetched.get(p), info, &mut report, p)? else { continue };
            let lock_file = remover.lock_path_of(p);
            let _lock = PathLock::acquire(&lock_file, true).map_err(io_err(&lock_file))?;
            make_opaque(&tmp)?;
            sync_tree(&tmp)?;
            (lower.note_bypass)().map_err(io_err(lower.upper_layer))?;
            let dest = lower.upper_layer.join(p.basename());
            // A copy that appeared meanwhile (an upper file system can change under us)
            // is moved aside first: rename cannot replace a directory.
            if fs::symlink_metadata(&dest).is_ok() {
                remover.remove_files(p).map_err(io_err(&dest))?;
            }
            fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            report.bypassed_mount = true;
            report.repaired.push(p.clone());
        }
    }
    let infos = upper;
    let fetched = fetch(store, source, &infos, &|| store.temp_name("repair"))?;
    for (p, info) in &infos {
        let Some(tmp) = checked(fetched.get(p), info, &mut report, p)? else { continue };
        sync_tree(&tmp)?;
        let lock_file = remover.lock_path_of(p);
        let _lock = PathLock::acquire(&lock_file, true).map_err(io_err(&lock_file))?;
        let removed = remover.remove_files(p).map_err(io_err(store.real_path_of(p)))?;
        report.bypassed_mount |= removed.bypassed_mount;
        let dest = store.real_path_of(p);
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        report.repaired.push(p.clone());
    }
    Ok(report)
}

/// The fetched copy of `p` if there is one and it hashes to the recorded hash.
fn checked(tmp: Option<&PathBuf>, info: &PathInfo, report: &mut RepairReport, p: &StorePath) -> Result<Option<PathBuf>> {
    let Some(tmp) = tmp else {
        report.failed.push((p.clone(), "no copy with the recorded hash in the repair source".into()));
        return Ok(None);
    };
    let (h, _) = hash_path(tmp, info.nar_hash.algo()).map_err(io_err(tmp))?;
    if h != info.nar_hash {
        let _ = remove_tree(tmp);
        report.failed.push((p.clone(), "the repair source's copy does not match the recorded hash".into()));
        return Ok(None);
    }
    Ok(Some(tmp.clone()))
}
