//! Putting new store objects into a store: `add` (NAR-ingest files from the file system)
//! and `import` (an export stream).
//!
//! Files are written under a dot-prefixed temporary name in the real store dir, moved to
//! their store path under the path's lock, and registered last, so a registered path
//! always has complete contents. An import is all or nothing: if any item fails, the
//! files of the stream's earlier items are removed again and nothing is registered.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::format::export;
use crate::format::hash::{HashAlgo, HashSink, HashingReader};
use crate::format::store_path::{validate_name, ContentAddress, FileIngestion};
use crate::format::StorePath;
use crate::store::fs::tree::{self, remove as remove_tree};
use crate::store::local::{LocalStore, PathLock, Registration};
use crate::store::{io_err, PathInfo, Result, StoreError};

/// What ingestion needs from a store. A local store answers from its own database; an
/// overlay store counts lower paths as valid and copies lower metadata up on register.
pub trait IngestTarget {
    /// The store whose real directory receives the files.
    fn local(&self) -> &LocalStore;
    /// Whether `path` is already present, so nothing needs writing. May cache what it
    /// learns (an overlay copies a lower closure up, as Nix does).
    fn is_present(&mut self, path: &StorePath) -> Result<bool>;
    /// The same question without writing anything (for imports, which must change
    /// nothing when they fail).
    fn is_present_quietly(&mut self, path: &StorePath) -> Result<bool> {
        self.is_present(path)
    }
    /// Removes unregistered leftovers at `path`'s real location before new files go there.
    fn remove_debris(&self, path: &StorePath) -> Result<()> {
        let dest = self.local().config().real.join(path.basename());
        remove_tree(&dest).map(drop).map_err(io_err(&dest))
    }
    /// Registers a batch whose files are in place, in one transaction.
    fn register(&mut self, batch: Vec<Registration>) -> Result<()>;
}

impl IngestTarget for LocalStore {
    fn local(&self) -> &LocalStore {
        self
    }
    fn is_present(&mut self, path: &StorePath) -> Result<bool> {
        self.db().is_valid(path)
    }
    fn register(&mut self, batch: Vec<Registration>) -> Result<()> {
        LocalStore::register(self, &batch)
    }
}

/// Removes a temporary object when dropped unless it was disarmed.
pub(crate) struct TempObject(Option<PathBuf>);

impl TempObject {
    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().expect("armed")
    }
}

impl Drop for TempObject {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = remove_tree(&p);
        }
    }
}

/// Moves `tmp` to the real path of `path`, replacing leftover unregistered files.
fn move_into_place(target: &dyn IngestTarget, tmp: &Path, path: &StorePath) -> Result<PathBuf> {
    let dest = target.local().config().real.join(path.basename());
    if fs::symlink_metadata(&dest).is_ok() {
        // Not registered (we hold its lock and checked validity), so it is debris.
        target.remove_debris(path)?;
    }
    fs::rename(tmp, &dest).map_err(io_err(&dest))?;
    Ok(dest)
}

/// `nix-store --add`: ingests `src` by NAR with SHA-256 as a `source` path named after
/// its file name. The files are copied and hashed in one pass.
pub fn add_path(target: &mut dyn IngestTarget, src: &Path) -> Result<StorePath> {
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StoreError::Other(format!("cannot add '{}': it has no usable file name", src.display())))?
        .to_string();
    validate_name(&name, &format!("<hash>-{name}"))?;
    fs::symlink_metadata(src).map_err(io_err(src))?;
    let store = target.local();
    let sd = store.config().store_dir.clone();
    let tmp = TempObject(Some(store.temp_name("add")?));
    let tmp_path = tmp.0.clone().expect("set");
    let progress = crate::progress::Task::new("add", "NAR bytes copied");
    let sink = tree::dump_copying(src, &tmp_path, progress.writer(HashSink::new(HashAlgo::Sha256))).map_err(io_err(src))?;
    let (nar_hash, nar_size) = sink.into_inner().finish();
    drop(progress);
    let path = sd.make_fixed_output_path(&name, FileIngestion::Recursive, &nar_hash, &BTreeSet::new(), false)?;
    store.add_temp_root(&path)?;
    let lock_file = store.lock_path_of(&path);
    let _lock = PathLock::acquire(&lock_file, true).map_err(io_err(&lock_file))?;
    if target.is_present(&path)? {
        return Ok(path);
    }
    let mut tmp = tmp;
    move_into_place(target, &tmp_path, &path)?;
    tmp.0 = None;
    let info = PathInfo {
        path: path.clone(),
        deriver: None,
        nar_hash,
        references: BTreeSet::new(),
        registration_time: 0,
        nar_size,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: Some(ContentAddress::Fixed(FileIngestion::Recursive, nar_hash)),
    };
    let drv_outputs = target.local().read_drv_outputs(&path, &target.local().real_path_of(&path))?;
    if let Err(e) = target.register(vec![Registration { info, drv_outputs }]) {
        let dest = target.local().real_path_of(&path);
        let _ = remove_tree(&dest);
        return Err(e);
    }
    Ok(path)
}

impl LocalStore {
    pub fn real_path_of(&self, path: &StorePath) -> PathBuf {
        self.config().real.join(path.basename())
    }
}

/// `nix-store --import`: reads an export stream and registers every new path in it, all
/// in one transaction. Returns every path of the stream, in stream order.
pub fn import(target: &mut dyn IngestTarget, input: &mut dyn Read) -> Result<Vec<StorePath>> {
    let sd = target.local().config().store_dir.clone();
    let mut all = Vec::new();
    let mut staging = Staging::new(target);
    let progress = crate::progress::Task::new("import", "paths read");
    loop {
        let tmp = TempObject(Some(staging.target.local().temp_name("import")?));
        let tmp_path = tmp.0.clone().expect("set");
        let mut restorer = tree::Restorer::new(tmp_path);
        let Some(item) = export::read_item(input, &sd, &mut restorer)? else {
            break;
        };
        all.push(item.path.clone());
        progress.advance(1, item.nar_size);
        staging.target.local().add_temp_root(&item.path)?;
        let info = PathInfo {
            path: item.path,
            deriver: item.deriver,
            nar_hash: item.nar_hash,
            references: item.references,
            registration_time: 0,
            nar_size: item.nar_size,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        };
        staging.staged.push((info, tmp));
    }
    staging.commit()?;
    Ok(all)
}

/// New store objects restored under temporary names, registered together by
/// [`Staging::commit`] or not at all (dropping it removes what was staged).
///
/// The commit locks the paths in sorted order (so two ingestions never wait on each
/// other in a cycle), moves them into place and registers them in one transaction; on
/// any error the files placed so far are removed while their locks are still held.
pub struct Staging<'t> {
    target: &'t mut dyn IngestTarget,
    staged: Vec<(PathInfo, TempObject)>,
}

impl<'t> Staging<'t> {
    pub fn new(target: &'t mut dyn IngestTarget) -> Staging<'t> {
        Staging { target, staged: Vec::new() }
    }

    /// Restores the NAR of `info.path` read from `nar` (exactly one NAR; the stream may
    /// go on), checking it against the NAR hash and size `info` claims.
    pub fn stage(&mut self, info: PathInfo, nar: &mut dyn Read) -> Result<()> {
        let sd = self.target.local().config().store_dir.clone();
        let tmp = TempObject(Some(self.target.local().temp_name("upload")?));
        let mut restorer = tree::Restorer::new(tmp.0.clone().expect("set"));
        let mut hashing = HashingReader::new(nar, info.nar_hash.algo());
        crate::format::nar::parse(&mut hashing, &mut restorer)?;
        let (got, size) = hashing.finish();
        if got != info.nar_hash {
            return Err(StoreError::Other(format!(
                "hash mismatch importing path '{}';\n  specified: {}\n  got:       {}",
                sd.display(&info.path),
                info.nar_hash.to_nix32_string(),
                got.to_nix32_string()
            )));
        }
        if size != info.nar_size {
            return Err(StoreError::Other(format!(
                "size mismatch importing path '{}';\n  specified: {}\n  got:       {size}",
                sd.display(&info.path),
                info.nar_size
            )));
        }
        if let Some(ca) = &info.ca {
            check_content_address(&sd, &info, ca, tmp.0.as_deref().expect("set"))?;
        }
        self.target.local().add_temp_root(&info.path)?;
        self.staged.push((info, tmp));
        Ok(())
    }

    /// A temporary name in the real store directory for an object a caller restores
    /// itself (in parallel, say) and then [`adopt`](Self::adopt)s; removed if dropped.
    pub(crate) fn reserve(&self, what: &str) -> Result<TempObject> {
        Ok(TempObject(Some(self.target.local().temp_name(what)?)))
    }

    /// Stages an object a caller restored at `tmp` and already checked against the NAR
    /// hash and size `info` claims; its content address is checked here.
    pub(crate) fn adopt(&mut self, info: PathInfo, tmp: TempObject) -> Result<()> {
        let sd = self.target.local().config().store_dir.clone();
        if let Some(ca) = &info.ca {
            check_content_address(&sd, &info, ca, tmp.path())?;
        }
        self.target.local().add_temp_root(&info.path)?;
        self.staged.push((info, tmp));
        Ok(())
    }

    /// Whether `path` is already in the store, changing nothing.
    pub fn is_present(&mut self, path: &StorePath) -> Result<bool> {
        self.target.is_present_quietly(path)
    }

    pub fn store_dir(&self) -> crate::format::StoreDir {
        self.target.local().config().store_dir.clone()
    }

    pub fn commit(mut self) -> Result<()> {
        let target = &mut *self.target;
        let staged = &mut self.staged;
        let mut order: Vec<usize> = (0..staged.len()).collect();
        order.sort_by(|&a, &b| staged[a].0.path.cmp(&staged[b].0.path));
        order.dedup_by(|a, b| staged[*a].0.path == staged[*b].0.path);
        // Declared before `placed`, so on an early return the placed files go first.
        let mut locks = Vec::new();
        let mut placed: Vec<TempObject> = Vec::new();
        let mut batch = Vec::new();
        for &i in &order {
            let path = staged[i].0.path.clone();
            let lock_file = target.local().lock_path_of(&path);
            locks.push(PathLock::acquire(&lock_file, true).map_err(io_err(&lock_file))?);
            if target.is_present_quietly(&path)? {
                continue;
            }
            let tmp_path = staged[i].1 .0.clone().expect("staged");
            let dest = move_into_place(target, &tmp_path, &path)?;
            staged[i].1 .0 = None;
            placed.push(TempObject(Some(dest.clone())));
            let drv_outputs = target.local().read_drv_outputs(&path, &dest)?;
            batch.push(Registration { info: staged[i].0.clone(), drv_outputs });
        }
        if !batch.is_empty() {
            target.register(batch)?;
        }
        // Registered: the files are the store's now, not debris to clean up.
        placed.iter_mut().for_each(|p| drop(p.0.take()));
        drop(locks);
        Ok(())
    }
}

/// A claimed content address must be the content's: its hash recomputed from the
/// restored object, and the path the one that address names ("ca hash mismatch" in Nix).
fn check_content_address(sd: &crate::format::StoreDir, info: &PathInfo, ca: &ContentAddress, restored: &Path) -> Result<()> {
    let (recursive, claimed) = match ca {
        ContentAddress::Text(h) => (false, h),
        ContentAddress::Fixed(m, h) => (*m == FileIngestion::Recursive, h),
    };
    let got = tree::content_hash(restored, recursive, claimed.algo()).map_err(io_err(restored))?;
    if got != *claimed || !info.ca_names_path(sd) {
        return Err(StoreError::Other(format!(
            "ca hash mismatch importing path '{}';\n  specified: {}\n  got:       {}",
            sd.display(&info.path),
            claimed.to_nix32_string(),
            got.to_nix32_string()
        )));
    }
    Ok(())
}

/// One path of a NAR upload (`AddToStoreNar`): its claimed info; the NAR follows.
pub struct NarUpload {
    pub info: PathInfo,
}

/// Adds paths whose NARs follow each other on `nars`, all in one transaction.
pub fn add_nars(target: &mut dyn IngestTarget, uploads: Vec<NarUpload>, nars: &mut dyn Read) -> Result<()> {
    let mut staging = Staging::new(target);
    for u in uploads {
        staging.stage(u.info, nars)?;
    }
    staging.commit()
}

/// How `add_ca` hashes what it is given (the content-address method of a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaMethod {
    /// The data is the text of the file (`text:sha256`), a `.drv` for instance.
    Text,
    /// The data is a file's contents, hashed as they are (`fixed:<algo>`).
    Flat(HashAlgo),
    /// The data is a NAR, hashed as a NAR (`fixed:r:<algo>`).
    Recursive(HashAlgo),
}

impl CaMethod {
    /// `text:sha256`, `fixed:<algo>`, `fixed:r:<algo>`, as the worker protocol names them.
    pub fn parse(s: &str) -> Option<CaMethod> {
        if s == "text:sha256" {
            return Some(CaMethod::Text);
        }
        let rest = s.strip_prefix("fixed:")?;
        match rest.strip_prefix("r:") {
            Some(algo) => HashAlgo::parse(algo).ok().map(CaMethod::Recursive),
            None => HashAlgo::parse(rest).ok().map(CaMethod::Flat),
        }
    }
}

/// Adds a content-addressed object whose data comes from `data` (a NAR for
/// `Recursive`, the file's bytes otherwise) with the given references; returns its info.
pub fn add_ca(
    target: &mut dyn IngestTarget,
    name: &str,
    method: CaMethod,
    refs: &BTreeSet<StorePath>,
    data: &mut dyn Read,
) -> Result<PathInfo> {
    validate_name(name, &format!("<hash>-{name}"))?;
    let store = target.local();
    let sd = store.config().store_dir.clone();
    let tmp = TempObject(Some(store.temp_name("add")?));
    let tmp_path = tmp.0.clone().expect("set");
    let (path, ca) = match method {
        CaMethod::Recursive(algo) => {
            let mut restorer = tree::Restorer::new(tmp_path.clone());
            let mut hashing = HashingReader::new(data, algo);
            crate::format::nar::parse(&mut hashing, &mut restorer)?;
            let (hash, _) = hashing.finish();
            (
                sd.make_fixed_output_path(name, FileIngestion::Recursive, &hash, refs, false)?,
                ContentAddress::Fixed(FileIngestion::Recursive, hash),
            )
        }
        CaMethod::Flat(_) | CaMethod::Text => {
            let algo = if let CaMethod::Flat(a) = method { a } else { HashAlgo::Sha256 };
            let (parent, file_name) = crate::store::fs::Dir::parent_of(&tmp_path).map_err(io_err(&tmp_path))?;
            let mut file = parent.create_file(&file_name, 0o644).map_err(io_err(&tmp_path))?;
            let mut hashing = HashingReader::new(data, algo);
            std::io::copy(&mut hashing, &mut file).map_err(io_err(&tmp_path))?;
            crate::store::fs::dir::set_file_mode_mtime(&file, 0o444, 1).map_err(io_err(&tmp_path))?;
            let (hash, _) = hashing.finish();
            if method == CaMethod::Text {
                (sd.make_text_path(name, &hash, refs)?, ContentAddress::Text(hash))
            } else {
                if !refs.is_empty() {
                    return Err(StoreError::Other(format!("a flat content-addressed path ('{name}') cannot have references")));
                }
                (
                    sd.make_fixed_output_path(name, FileIngestion::Flat, &hash, refs, false)?,
                    ContentAddress::Fixed(FileIngestion::Flat, hash),
                )
            }
        }
    };
    let (nar_hash, nar_size) = tree::dump(&tmp_path, HashSink::new(HashAlgo::Sha256)).map_err(io_err(&tmp_path))?.finish();
    let info = PathInfo {
        path,
        deriver: None,
        nar_hash,
        references: refs.clone(),
        registration_time: 0,
        nar_size,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: Some(ca),
    };
    store.add_temp_root(&info.path)?;
    let mut staging = Staging::new(target);
    staging.staged.push((info.clone(), tmp));
    staging.commit()?;
    Ok(info)
}
