//! Stores: the Nix local store, and (built on it) the local overlay store.
//!
//! [`Store`] is the read interface both present to the CLI and to policies; each store
//! type adds its own mutating operations.

pub mod daemon;
pub mod fs;
pub mod gc;
pub mod kill_point;
pub mod local;
pub mod opened;
pub mod overlay;
pub mod repair;
pub mod topo;

pub use opened::Opened;
pub use topo::topo_sort;

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

impl PathInfo {
    /// Whether the path is the one its content address names, given its references (a
    /// reference to itself counts as a self-reference). False without a content address.
    pub fn ca_names_path(&self, store_dir: &StoreDir) -> bool {
        let Some(ca) = &self.ca else { return false };
        let others: BTreeSet<StorePath> = self.references.iter().filter(|r| **r != self.path).cloned().collect();
        let self_ref = self.references.contains(&self.path);
        store_dir.make_path_from_ca(self.path.name(), ca, &others, self_ref).is_ok_and(|p| p == self.path)
    }
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
    /// The references of each of `paths`, in order (a path that is not valid has none).
    /// Stores that can read them in one pass override this.
    fn references_of(&self, paths: &[StorePath]) -> Result<Vec<BTreeSet<StorePath>>> {
        paths.iter().map(|p| Ok(self.path_info(p)?.map(|i| i.references).unwrap_or_default())).collect()
    }
    /// The references among `paths` themselves, as indices into `paths`; stores that
    /// can read them without whole rows override this.
    fn edges_within(&self, paths: &[StorePath]) -> Result<Vec<Vec<u32>>> {
        let index: std::collections::HashMap<&StorePath, u32> = paths.iter().enumerate().map(|(i, p)| (p, i as u32)).collect();
        Ok(self.references_of(paths)?.iter().map(|refs| refs.iter().filter_map(|r| index.get(r).copied()).collect()).collect())
    }
    /// A set of valid paths in the order `nix-store -q` prints lists: dependencies first,
    /// over the references inside the set.
    fn in_nix_order(&self, set: &BTreeSet<StorePath>) -> Result<Vec<StorePath>> {
        let paths: Vec<StorePath> = set.iter().cloned().collect();
        let edges = self.edges_within(&paths)?;
        let order = topo::topo_order(&paths, &edges).map_err(|i| StoreError::Cycle(paths[i as usize].to_string()))?;
        Ok(order.into_iter().map(|i| paths[i as usize].clone()).collect())
    }
    /// The closure of `roots`, dependencies first (`query --requisites`).
    fn requisites(&self, roots: &[StorePath]) -> Result<Vec<StorePath>> {
        Ok(topo_sort(self.closure(roots)?)?.into_iter().map(|i| i.path).collect())
    }
}
