//! Stores: the Nix local store, and (built on it) the local overlay store.
//!
//! [`Store`] is the read interface both present to the CLI and to policies; each store
//! type adds its own mutating operations.

pub mod daemon;
pub mod fs;
pub mod local;
pub mod overlay;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::format::export::ExportError;
use crate::format::hash::HashError;
use crate::format::nar::NarError;
use crate::format::store_path::{ContentAddressError, StorePathError};
use crate::format::{ContentAddress, DrvOutput, Hash, Realisation, StoreDir, StorePath};

/// The metadata of a valid store path, one row of `ValidPaths` plus its `Refs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub deriver: Option<StorePath>,
    pub nar_hash: Hash,
    pub references: BTreeSet<StorePath>,
    /// Seconds since the epoch; 0 means "now" when registering.
    pub registration_time: i64,
    pub nar_size: u64,
    pub ultimate: bool,
    pub sigs: BTreeSet<String>,
    pub ca: Option<ContentAddress>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("path '{0}' is not valid")]
    NotValid(String),
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    #[error("database '{path}': {source}")]
    Db { path: PathBuf, source: rusqlite::Error },
    #[error("'{path}': {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid-path entry for '{path}': {what}")]
    CorruptRow { path: String, what: String },
    #[error("'{0}' is corrupt")]
    CorruptSchemaFile(PathBuf),
    #[error("current Nix store schema is version {0}, but I only support 10")]
    SchemaVersion(u32),
    #[error("store '{0}' is read-only")]
    ReadOnly(String),
    #[error("cycle detected in the references of '{0}'")]
    Cycle(String),
    #[error("hash of path '{path}' has changed from '{expected}' to '{got}'!")]
    HashChanged { path: String, expected: String, got: String },
    #[error("{0}")]
    Nar(#[from] NarError),
    #[error("{0}")]
    Export(#[from] ExportError),
    #[error("{0}")]
    Hash(#[from] HashError),
    #[error("{0}")]
    ContentAddress(#[from] ContentAddressError),
    #[error("{0}")]
    Realisation(#[from] crate::format::realisation::RealisationError),
    #[error("derivation '{path}': {what}")]
    Derivation { path: String, what: String },
    #[error("{0}")]
    Mount(#[from] crate::store::overlay::MountError),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { path, source }
}

/// What every store answers about its paths. Lists come back sorted unless said otherwise.
pub trait Store {
    fn store_dir(&self) -> &StoreDir;
    /// Where the files of `path` are read (for an overlay: through the mount).
    fn real_path(&self, path: &StorePath) -> PathBuf;
    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>>;
    fn is_valid(&self, path: &StorePath) -> Result<bool> {
        Ok(self.path_info(path)?.is_some())
    }
    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>>;
    fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>>;
    /// The outputs a `.drv` declares with known paths (`DerivationOutputs`).
    fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>>;
    /// `derivation_outputs` of several `.drv`s, in the order given; stores that can
    /// answer them in one read (one snapshot, no lock per query) override this.
    fn derivation_outputs_of(&self, drvs: &[StorePath]) -> Result<Vec<BTreeMap<String, StorePath>>> {
        drvs.iter().map(|d| self.derivation_outputs(d)).collect()
    }
    fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>>;
    /// The realisation of a content-addressed derivation's output (`ca-derivations`).
    fn realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>>;
    /// The infos of the closure of `roots` under references, in no particular order.
    /// Fails with `NotValid` on an invalid root.
    fn closure(&self, roots: &[StorePath]) -> Result<Vec<PathInfo>>;
    /// Every path the store's database registers.
    fn all_paths(&self) -> Result<Vec<StorePath>>;
    /// The closure of `roots`, dependencies first (`query --requisites`).
    fn requisites(&self, roots: &[StorePath]) -> Result<Vec<StorePath>> {
        Ok(topo_sort(self.closure(roots)?)?.into_iter().map(|i| i.path).collect())
    }
}

/// Dependencies first over an index graph (`refs[i]`: what `i` refers to), ties broken by
/// path so the order is stable. Works on indices: no path is cloned or hashed.
pub fn topo_order(paths: &[StorePath], refs: &[Vec<u32>]) -> std::result::Result<Vec<u32>, u32> {
    let mut by_path: Vec<u32> = (0..paths.len() as u32).collect();
    by_path.sort_unstable_by(|&a, &b| paths[a as usize].cmp(&paths[b as usize]));
    topo_order_by(&by_path, refs)
}

/// Dependencies first, ties broken by position in `by_tie` (a permutation of the
/// indices); `Err` names an index on a cycle. Self-references are ignored.
pub fn topo_order_by(by_tie: &[u32], refs: &[Vec<u32>]) -> std::result::Result<Vec<u32>, u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = by_tie.len();
    let mut rank = vec![0u32; n];
    for (r, &i) in by_tie.iter().enumerate() {
        rank[i as usize] = r as u32;
    }
    let mut pending = vec![0u32; n];
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, rs) in refs.iter().enumerate() {
        for &r in rs {
            if r as usize != i {
                pending[i] += 1;
                dependents[r as usize].push(i as u32);
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<u32>> = (0..n).filter(|&i| pending[i] == 0).map(|i| Reverse(rank[i])).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(r)) = ready.pop() {
        let i = by_tie[r as usize];
        order.push(i);
        for &d in &dependents[i as usize] {
            pending[d as usize] -= 1;
            if pending[d as usize] == 0 {
                ready.push(Reverse(rank[d as usize]));
            }
        }
    }
    if order.len() != n {
        return Err((0..n as u32).find(|&i| pending[i as usize] > 0).expect("a path in a cycle"));
    }
    Ok(order)
}

/// Orders infos so that every path comes after its references (dependencies first);
/// ties broken by path, so the order is stable. Self-references are ignored.
pub fn topo_sort(infos: Vec<PathInfo>) -> Result<Vec<PathInfo>> {
    let index: BTreeMap<StorePath, usize> = infos.iter().enumerate().map(|(i, p)| (p.path.clone(), i)).collect();
    let mut pending: Vec<usize> = vec![0; infos.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); infos.len()];
    for (i, info) in infos.iter().enumerate() {
        for r in &info.references {
            if r == &info.path {
                continue;
            }
            if let Some(&j) = index.get(r) {
                pending[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut ready: BTreeSet<(StorePath, usize)> =
        (0..infos.len()).filter(|&i| pending[i] == 0).map(|i| (infos[i].path.clone(), i)).collect();
    let mut order = Vec::with_capacity(infos.len());
    while let Some((_, i)) = ready.pop_first() {
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.insert((infos[d].path.clone(), d));
            }
        }
    }
    if order.len() != infos.len() {
        let stuck = (0..infos.len()).find(|&i| pending[i] > 0).expect("some path is in a cycle");
        return Err(StoreError::Cycle(infos[stuck].path.to_string()));
    }
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    Ok(order.into_iter().map(|i| slots[i].take().expect("each index once")).collect())
}
