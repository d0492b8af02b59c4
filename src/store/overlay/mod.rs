//! The local overlay store: a local store whose store directory is an OverlayFS mount of
//! a read-only lower store and a writable upper layer, plus a lower store it reads
//! through. Each operation differs from the local store in one way:
//!
//! - path info, validity, hash parts: the upper database first, then the lower store;
//! - referrers and valid derivers: the union of both;
//! - registering: copy up the lower metadata of every referenced lower path and its
//!   closure first, in the same transaction, so the upper database is closure-complete
//!   at every commit (stock Nix opened on it as a plain local store finds nothing missing);
//! - a validity query of a lower path caches its closure upper, as Nix does.
//!
//! The lower store is never written: its database is opened read-only and read live.

pub mod copy_up;
pub mod delete;
pub mod layers;
pub mod lower_stamp;
pub mod mount;
pub mod mountinfo;
pub mod pivot;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::format::{DrvOutput, Realisation, StoreDir, StorePath};
use crate::spec::{StoreKind, StoreSpec};
use crate::store::gc::{DeadPath, GcChoice};
use crate::store::local::ingest::IngestTarget;
use crate::store::local::{LocalConfig, LocalStore, Registration};
use crate::store::{io_err, PathInfo, Result, Store, StoreError};

pub use mount::{MountError, MountPlan, MountState};

/// Why lower metadata is being copied into the upper database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyUpReason {
    /// A path being registered refers to it: always copied.
    Reference,
    /// A validity query found it in the lower store: Nix caches it; a policy may decline.
    Query,
}

impl CopyUpReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyUpReason::Reference => "reference",
            CopyUpReason::Query => "query",
        }
    }
}

/// Engine decisions a policy may customise; every default is Nix's behaviour. The engine
/// stays the guard: whatever a policy answers, live paths are kept and closures stay
/// complete. Each call gets the store, for read-only queries.
pub trait OverlayPolicy {
    /// Whether to cache the closure of a lower path found by a validity query.
    fn copy_up(&self, _store: &OverlayStore, _info: &PathInfo, _reason: CopyUpReason) -> bool {
        true
    }
    /// Extra GC roots.
    fn gc_roots(&self, _store: &OverlayStore) -> Result<Vec<StorePath>> {
        Ok(Vec::new())
    }
    /// Which dead paths to delete (`in_lower[i]`: whether `dead[i]` has lower files), and
    /// why others are kept (for `gc --dry-run`).
    fn gc(&self, _store: &OverlayStore, dead: Vec<DeadPath>, _in_lower: &[bool]) -> Result<GcChoice> {
        Ok(GcChoice { delete: dead.into_iter().map(|d| d.path).collect(), reasons: BTreeMap::new() })
    }
    /// Remounts the store itself; `Ok(false)` leaves it to `remount-hook` or the built-in remount.
    fn remount(&self, _store: &OverlayStore, _reason: &str) -> Result<bool> {
        Ok(false)
    }
    /// For a pivot: per affected path (with whether it is live), "copy" or "drop";
    /// `None` for the default plan.
    fn pivot(&self, _store: &OverlayStore, _affected: &[(StorePath, bool)]) -> Option<BTreeMap<StorePath, String>> {
        None
    }
    /// Problems the policy had (a hook that failed and fell back to the safe default).
    fn failures(&self) -> Vec<PolicyFailure> {
        Vec::new()
    }
}

/// A hook that failed; `changed_outcome` is true when the safe default changed what the
/// command did (GC kept everything, a remount fell back), which makes the command fail.
#[derive(Debug, Clone)]
pub struct PolicyFailure {
    pub hook: String,
    pub message: String,
    pub changed_outcome: bool,
}

/// Nix's behaviour.
pub struct NixPolicy;
impl OverlayPolicy for NixPolicy {}

#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Check the mount (when the spec asks for it).
    pub check_mount: bool,
    /// Open without writing anything (used for an overlay that is another's lower store).
    pub read_only: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { check_mount: true, read_only: false }
    }
}

pub struct OverlayStore {
    upper: LocalStore,
    lower: Box<dyn Store>,
    plan: MountPlan,
    upper_layer: PathBuf,
    remount_hook: Option<PathBuf>,
    read_only: bool,
    policy: Box<dyn OverlayPolicy>,
}

/// Opens the store a `lower-store` spec describes, never for writing.
pub fn open_lower(spec: &StoreSpec) -> Result<Box<dyn Store>> {
    match spec.kind {
        StoreKind::Local => {
            let mut config = LocalConfig::from_spec(spec);
            config.read_only = true;
            Ok(Box::new(LocalStore::open(config)?))
        }
        StoreKind::LocalOverlay => Ok(Box::new(OverlayStore::open(spec, OpenOptions { check_mount: true, read_only: true })?)),
        StoreKind::Daemon => Ok(Box::new(crate::store::daemon::DaemonStore::open(spec)?)),
    }
}

fn lower_spec(spec: &StoreSpec) -> Result<&StoreSpec> {
    spec.lower_store.as_deref().ok_or_else(|| StoreError::Other("a local overlay store needs a lower-store".into()))
}

fn upper_layer(spec: &StoreSpec) -> Result<PathBuf> {
    spec.upper_layer.clone().ok_or_else(|| StoreError::Other("a local overlay store needs upper-layer".into()))
}

/// The mount an overlay spec describes.
pub fn mount_plan(spec: &StoreSpec) -> Result<MountPlan> {
    let lower = lower_spec(spec)?;
    Ok(MountPlan {
        real: spec.real.clone(),
        lowerdir: lower.real.clone(),
        lower_db: (lower.kind == StoreKind::Local).then(|| LocalConfig::from_spec(lower).db_path()),
        stamp_file: Some(lower_stamp::stamp_path(&spec.state)),
        spec_arg: spec.files.first().map(|f| format!("-c '{}'", f.display())),
        upperdir: upper_layer(spec)?,
        workdir: spec.mount.as_ref().map(|m| m.workdir.clone()),
        options: spec.mount.as_ref().map(|m| m.options.clone()).unwrap_or_default(),
    })
}

/// Creates what the mount needs (upper layer, workdir, mount point) and the upper
/// store's state and database. Needs no mount; idempotent.
pub fn init(spec: &StoreSpec) -> Result<()> {
    let plan = mount_plan(spec)?;
    for d in [Some(&plan.upperdir), plan.workdir.as_ref(), Some(&plan.real)].into_iter().flatten() {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let mut config = LocalConfig::from_spec(spec);
    config.create_links_dir = plan.state().map(|s| s == MountState::Correct).unwrap_or(false);
    LocalStore::open(config)?;
    Ok(())
}

impl OverlayStore {
    pub fn open(spec: &StoreSpec, opts: OpenOptions) -> Result<OverlayStore> {
        Self::open_with_policy(spec, opts, Box::new(NixPolicy))
    }

    /// Opens with a policy in place from the start (it may be asked to remount at once,
    /// to finish what a crashed operation left).
    pub fn open_with_policy(spec: &StoreSpec, opts: OpenOptions, policy: Box<dyn OverlayPolicy>) -> Result<OverlayStore> {
        let plan = mount_plan(spec)?;
        let lower = open_lower(lower_spec(spec)?)?;
        if !opts.read_only && !spec.read_only {
            OverlayStore::recover_pivot(spec, &plan, &upper_layer(spec)?)?;
        }
        if opts.check_mount && spec.check_mount {
            plan.check()?;
        }
        let mounted = plan.state().map(|s| s == MountState::Correct).unwrap_or(false);
        let read_only = opts.read_only || spec.read_only;
        let mut config = LocalConfig::from_spec(spec);
        config.read_only = read_only;
        config.create_links_dir = mounted;
        let upper = LocalStore::open(config)?;
        let store = OverlayStore {
            upper,
            lower,
            plan,
            upper_layer: upper_layer(spec)?,
            remount_hook: spec.remount_hook.clone(),
            read_only,
            policy,
        };
        if mounted {
            store.recover_pending_remount()?;
        }
        Ok(store)
    }

    pub fn set_policy(&mut self, policy: Box<dyn OverlayPolicy>) {
        self.policy = policy;
    }

    pub fn policy(&self) -> &dyn OverlayPolicy {
        self.policy.as_ref()
    }

    pub fn upper(&self) -> &LocalStore {
        &self.upper
    }

    pub fn upper_mut(&mut self) -> &mut LocalStore {
        &mut self.upper
    }

    pub fn lower(&self) -> &dyn Store {
        self.lower.as_ref()
    }

    pub fn plan(&self) -> &MountPlan {
        &self.plan
    }

    pub fn upper_layer(&self) -> &Path {
        &self.upper_layer
    }

    /// The two directories, to ask which layer holds a path.
    pub fn layers(&self) -> layers::Layers {
        layers::Layers::new(&self.upper_layer, &self.plan.lowerdir)
    }

    /// Where a path's files are in the upper layer itself (not through the mount).
    pub fn upper_layer_path(&self, path: &StorePath) -> PathBuf {
        self.upper_layer.join(path.basename())
    }

    /// Copies the lower metadata of `paths` and their closures into the upper database
    /// (what is not there yet), in one transaction. Returns how many rows were copied.
    pub fn copy_up(&self, paths: &[StorePath]) -> Result<usize> {
        if self.read_only {
            return Ok(0);
        }
        let n = copy_up::register_with_lower_closures(&self.upper, self.lower.as_ref(), paths.iter().cloned(), Vec::new())?;
        if n > 0 {
            tracing::debug!("copied up the metadata of {n} lower paths");
        }
        Ok(n)
    }
}

impl OverlayStore {
    /// Registers realisations in the upper database. What they need from the lower
    /// store is copied up first, in the same transaction: the realisations they depend
    /// on that only the lower store has (transitively), and the closures of all their
    /// output paths (copy-up reason "realisation": always done).
    pub fn register_realisations(&self, batch: &[Realisation]) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.plan.real.display().to_string()));
        }
        self.upper.check_ca_schema()?;
        // What the lower store must supply is found before the write transaction (a
        // daemon lower may be slow), then written with the batch in one transaction.
        let upper = self.upper.db();
        let mut all: Vec<Realisation> = Vec::new();
        let mut known: BTreeSet<DrvOutput> = batch.iter().map(|r| r.id.clone()).collect();
        let mut queue: Vec<DrvOutput> = batch.iter().flat_map(|r| r.dependent.keys().cloned()).collect();
        while let Some(id) = queue.pop() {
            if !known.insert(id.clone()) || upper.realisation(&id)?.is_some() {
                continue;
            }
            if let Some(r) = self.lower.realisation(&id)? {
                queue.extend(r.dependent.keys().cloned());
                all.push(r);
            }
            // Missing in both: register_realisations names it.
        }
        all.extend(batch.iter().cloned());
        let wanted: BTreeSet<StorePath> = all.iter().map(|r| r.out_path.clone()).collect();
        let n = copy_up::register_with_lower_closures_then(&self.upper, self.lower.as_ref(), wanted, Vec::new(), || {
            upper.register_realisations(&all).map(|_| ())
        })?;
        if n > 0 {
            tracing::debug!("copied up the metadata of {n} lower paths for realisations");
        }
        self.upper.note_ca_schema()
    }
}

impl Store for OverlayStore {
    fn store_dir(&self) -> &StoreDir {
        self.upper.store_dir()
    }

    fn real_path(&self, path: &StorePath) -> PathBuf {
        self.upper.real_path(path)
    }

    /// The upper rows' references in one pass, the lower store's for the rest.
    fn references_of(&self, paths: &[StorePath]) -> Result<Vec<std::collections::BTreeSet<StorePath>>> {
        let db = self.upper.db();
        let in_upper = db.valid_flags(&paths.iter().collect::<Vec<_>>())?;
        let mut out = db.references_of_paths(paths)?;
        let lower_paths: Vec<StorePath> = paths.iter().zip(&in_upper).filter(|(_, u)| !**u).map(|(p, _)| p.clone()).collect();
        let mut from_lower = self.lower.references_of(&lower_paths)?.into_iter();
        for (slot, up) in out.iter_mut().zip(&in_upper) {
            if !up {
                *slot = from_lower.next().unwrap_or_default();
            }
        }
        Ok(out)
    }

    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        match self.upper.path_info(path)? {
            Some(i) => Ok(Some(i)),
            None => self.lower.path_info(path),
        }
    }

    fn is_valid(&self, path: &StorePath) -> Result<bool> {
        if self.upper.is_valid(path)? {
            return Ok(true);
        }
        let Some(info) = self.lower.path_info(path)? else {
            return Ok(false);
        };
        if !self.read_only && self.policy.copy_up(self, &info, CopyUpReason::Query) {
            self.copy_up(std::slice::from_ref(path))?;
        }
        Ok(true)
    }

    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let mut all = self.upper.referrers(path)?;
        all.extend(self.lower.referrers(path)?);
        Ok(all)
    }

    fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        let mut all = self.upper.valid_derivers(path)?;
        all.extend(self.lower.valid_derivers(path)?);
        Ok(all)
    }

    fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        if self.upper.db().is_valid(drv)? {
            self.upper.derivation_outputs(drv)
        } else {
            self.lower.derivation_outputs(drv)
        }
    }

    fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        match self.upper.path_from_hash_part(hash_part)? {
            Some(p) => Ok(Some(p)),
            None => self.lower.path_from_hash_part(hash_part),
        }
    }

    fn realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>> {
        match self.upper.realisation(id)? {
            Some(r) => Ok(Some(r)),
            None => self.lower.realisation(id),
        }
    }

    fn closure(&self, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
        // The upper database is closure-complete: a path found there brings its whole
        // closure; the rest comes from the lower store.
        let (mut infos, missing) = self.upper.db().closure(roots)?;
        if !missing.is_empty() {
            let have: BTreeSet<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
            infos.extend(self.lower.closure(&missing)?.into_iter().filter(|i| !have.contains(&i.path)));
        }
        Ok(infos)
    }

    fn all_paths(&self) -> Result<Vec<StorePath>> {
        self.upper.all_paths()
    }
}

impl IngestTarget for OverlayStore {
    fn local(&self) -> &LocalStore {
        &self.upper
    }

    fn is_present(&mut self, path: &StorePath) -> Result<bool> {
        self.is_valid(path)
    }

    fn is_present_quietly(&mut self, path: &StorePath) -> Result<bool> {
        Ok(self.upper.db().is_valid(path)? || self.lower.path_info(path)?.is_some())
    }

    /// Leftovers in the upper layer go through the mount; a lower entry the lower store
    /// does not register is left alone (removing it through the mount would whiteout it).
    fn remove_debris(&self, path: &StorePath) -> Result<()> {
        if self.layers().lower_has(path.basename()) {
            return Err(StoreError::Other(format!(
                "'{}' exists in the lower store's directory but the lower store does not register it; \
                 refusing to hide it (register or remove it in the lower store first)",
                self.store_dir().display(path)
            )));
        }
        let dest = self.plan.real.join(path.basename());
        crate::store::fs::tree::remove(&dest).map(drop).map_err(io_err(&dest))
    }

    fn register(&mut self, batch: Vec<Registration>) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly(self.plan.real.display().to_string()));
        }
        let in_batch: BTreeSet<&StorePath> = batch.iter().map(|r| &r.info.path).collect();
        let wanted: BTreeSet<StorePath> =
            batch.iter().flat_map(|r| r.info.references.iter()).filter(|r| !in_batch.contains(r)).cloned().collect();
        copy_up::register_with_lower_closures(&self.upper, self.lower.as_ref(), wanted, batch).map(|_| ())
    }
}
