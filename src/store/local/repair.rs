//! Repair: putting back the contents of registered paths that verification found
//! modified or missing, from another store or an export file. A replacement is restored
//! under a temporary name, checked against the recorded NAR hash, and only then swapped
//! in under the path's lock, so a failed repair leaves the path as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::format::export;
use crate::format::hash::HashAlgo;
use crate::format::nar::{self, NarError, NarVisitor};
use crate::format::StorePath;
use crate::store::local::canonicalise::remove_tree;
use crate::store::local::gc::FileRemover;
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

/// Restores into a temp name, created at the first node.
struct MaybeRestore {
    root: PathBuf,
    inner: Option<nar::reader::Restorer>,
}

impl MaybeRestore {
    fn v(&mut self) -> Option<&mut nar::reader::Restorer> {
        let root = self.root.clone();
        Some(self.inner.get_or_insert_with(|| nar::reader::Restorer::new(root)))
    }
}

impl NarVisitor for MaybeRestore {
    fn directory(&mut self, p: &Path) -> Result<(), NarError> {
        self.v().map_or(Ok(()), |v| v.directory(p))
    }
    fn directory_end(&mut self, p: &Path) -> Result<(), NarError> {
        self.v().map_or(Ok(()), |v| v.directory_end(p))
    }
    fn file(&mut self, p: &Path, x: bool, n: u64, c: &mut dyn Read) -> Result<(), NarError> {
        self.v().map_or(Ok(()), |v| v.file(p, x, n, c))
    }
    fn symlink(&mut self, p: &Path, t: &[u8]) -> Result<(), NarError> {
        self.v().map_or(Ok(()), |v| v.symlink(p, t))
    }
}

/// Restores good copies of `infos` into temporary objects in `store`'s real directory.
/// Returns the temp object for each path it found with the recorded hash.
fn fetch(store: &LocalStore, source: &RepairSource, infos: &BTreeMap<StorePath, PathInfo>) -> Result<BTreeMap<StorePath, PathBuf>> {
    let mut got = BTreeMap::new();
    match source {
        RepairSource::Store(src) => {
            for (p, info) in infos {
                let Some(sinfo) = src.path_info(p)? else { continue };
                if sinfo.nar_hash != info.nar_hash {
                    continue;
                }
                let tmp = store.temp_name("repair")?;
                let bytes = nar::dump_path(&src.real_path(p), Vec::new()).map_err(io_err(src.real_path(p)))?;
                if let Err(e) = nar::restore(&mut &bytes[..], &tmp) {
                    let _ = remove_tree(&tmp);
                    return Err(e.into());
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
                let tmp = store.temp_name("repair")?;
                let mut v = MaybeRestore { root: tmp.clone(), inner: None };
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

/// Replaces the files of each path with a good copy from `source`. For a path whose
/// files a lower layer also has (`in_lower`), the repair is removing the upper copy: the
/// caller remounts and the lower copy shows (it must itself be intact).
pub fn repair(
    store: &LocalStore,
    remover: &dyn FileRemover,
    in_lower: &dyn Fn(&StorePath) -> bool,
    source: &RepairSource,
    paths: &BTreeSet<StorePath>,
) -> Result<RepairReport> {
    let mut infos = BTreeMap::new();
    for p in paths {
        let info = store.db().path_info(p)?.ok_or_else(|| StoreError::NotValid(store.config().store_dir.display(p)))?;
        infos.insert(p.clone(), info);
    }
    let mut report = RepairReport::default();
    let (lower, upper): (BTreeMap<_, _>, BTreeMap<_, _>) = infos.into_iter().partition(|(p, _)| in_lower(p));
    for p in lower.keys() {
        let lock_file = remover.lock_path_of(p);
        let _lock = PathLock::acquire(&lock_file, true).map_err(io_err(&lock_file))?;
        let removed = remover.remove_files(p).map_err(io_err(store.real_path_of(p)))?;
        report.bypassed_mount |= removed.bypassed_mount;
        report.repaired.push(p.clone());
    }
    let infos = upper;
    let fetched = fetch(store, source, &infos)?;
    for (p, info) in &infos {
        let Some(tmp) = fetched.get(p) else {
            report.failed.push((p.clone(), "no copy with the recorded hash in the repair source".into()));
            continue;
        };
        let (h, _) = hash_path(tmp, HashAlgo::Sha256).map_err(io_err(tmp))?;
        if h != info.nar_hash {
            let _ = remove_tree(tmp);
            report.failed.push((p.clone(), "the repair source's copy does not match the recorded hash".into()));
            continue;
        }
        let lock_file = remover.lock_path_of(p);
        let _lock = PathLock::acquire(&lock_file, true).map_err(io_err(&lock_file))?;
        let removed = remover.remove_files(p).map_err(io_err(store.real_path_of(p)))?;
        report.bypassed_mount |= removed.bypassed_mount;
        let dest = store.real_path_of(p);
        fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        report.repaired.push(p.clone());
    }
    Ok(report)
}
