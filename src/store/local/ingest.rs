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
use crate::format::hash::{HashAlgo, HashSink};
use crate::format::nar::{NarError, NarVisitor};
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
struct TempObject(Option<PathBuf>);

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
    let sink = tree::dump_copying(src, &tmp_path, HashSink::new(HashAlgo::Sha256)).map_err(io_err(src))?;
    let (nar_hash, nar_size) = sink.finish();
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

/// Restores a NAR into a temporary object, created lazily at the first node.
struct TempRestorer {
    root: PathBuf,
    inner: Option<Box<dyn NarVisitor>>,
}

impl NarVisitor for TempRestorer {
    fn directory(&mut self, p: &Path) -> Result<(), NarError> {
        self.visitor().directory(p)
    }
    fn directory_end(&mut self, p: &Path) -> Result<(), NarError> {
        self.visitor().directory_end(p)
    }
    fn file(&mut self, p: &Path, x: bool, n: u64, c: &mut dyn Read) -> Result<(), NarError> {
        self.visitor().file(p, x, n, c)
    }
    fn symlink(&mut self, p: &Path, t: &[u8]) -> Result<(), NarError> {
        self.visitor().symlink(p, t)
    }
}

impl TempRestorer {
    fn visitor(&mut self) -> &mut dyn NarVisitor {
        let root = self.root.clone();
        self.inner.get_or_insert_with(|| Box::new(tree::Restorer::new(root))).as_mut()
    }
}

/// `nix-store --import`: reads an export stream and registers every new path in it, all
/// in one transaction. Returns every path of the stream, in stream order.
///
/// Every item is first restored under a temporary name; then the paths are locked in
/// sorted order (so two imports never wait on each other in a cycle), moved into place
/// and registered. On any error the files placed so far are removed while their locks
/// are still held, and nothing is registered.
pub fn import(target: &mut dyn IngestTarget, input: &mut dyn Read) -> Result<Vec<StorePath>> {
    let sd = target.local().config().store_dir.clone();
    let mut all = Vec::new();
    let mut staged: Vec<(export::ExportItem, TempObject)> = Vec::new();
    loop {
        let tmp = TempObject(Some(target.local().temp_name("import")?));
        let tmp_path = tmp.0.clone().expect("set");
        let mut restorer = TempRestorer { root: tmp_path, inner: None };
        let Some(item) = export::read_item(input, &sd, &mut restorer)? else {
            break;
        };
        all.push(item.path.clone());
        target.local().add_temp_root(&item.path)?;
        staged.push((item, tmp));
    }
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
        let item = &staged[i].0;
        batch.push(Registration {
            info: PathInfo {
                path,
                deriver: item.deriver.clone(),
                nar_hash: item.nar_hash,
                references: item.references.clone(),
                registration_time: 0,
                nar_size: item.nar_size,
                ultimate: false,
                sigs: BTreeSet::new(),
                ca: None,
            },
            drv_outputs,
        });
    }
    if !batch.is_empty() {
        target.register(batch)?;
    }
    // Registered: the files are the store's now, not debris to clean up.
    placed.iter_mut().for_each(|p| drop(p.0.take()));
    drop(locks);
    Ok(all)
}
