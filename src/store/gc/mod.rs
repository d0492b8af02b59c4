//! Garbage collection and deletion, as Nix does them, set at a time.
//!
//! 1. Take `gc.lock` exclusively and listen on `gc-socket/socket`, so processes adding
//!    temporary roots while we run tell us (Nix's protocol; see `temproots`).
//! 2. Find the roots (`roots`), load the reference graph once, and compute what is live:
//!    the roots' closure, with the derivers of live paths (keep-derivations) and the
//!    outputs of live derivations (keep-outputs).
//! 3. Delete the dead rows in one transaction, referrers first, after re-checking the
//!    temporary roots that arrived meanwhile; then remove their files on all cores. A row
//!    always goes before its files, so a crash leaves unclaimed files (collected next
//!    time), never a registered path without contents.
//! 4. Remove entries no row claims (debris of crashes), except what a running operation
//!    holds: temporary roots, held `.lock` files, our own live temporary objects.
//!
//! What "removing files" means is the target's business: a local store removes them
//! from its real directory; an overlay store decides per path between the upper layer,
//! the mount, or nothing (lower files).

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

use crate::format::StorePath;
use crate::store::local::roots::Roots;
use crate::store::local::LocalStore;
use crate::store::Result;

mod collector;
mod local;
mod lock;

pub use collector::Collector;
pub use local::RealDirRemover;
pub use lock::GcLock;

/// What a policy's `gc` hook decided.
#[derive(Debug, Default, Clone)]
pub struct GcChoice {
    pub delete: Vec<StorePath>,
    /// Why a kept path is kept, when the policy says.
    pub reasons: std::collections::BTreeMap<StorePath, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcAction {
    /// Collect all dead paths (and unclaimed entries).
    Collect,
    /// Delete exactly these paths, refusing live ones.
    DeleteSpecific(Vec<StorePath>),
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub action: GcAction,
    /// Stop once at least this many bytes are freed.
    pub max_freed: Option<u64>,
    /// Work out what would go; change nothing.
    pub dry_run: bool,
    pub keep_derivations: bool,
    pub keep_outputs: bool,
}

/// Files removed for one path, and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct Removed {
    pub bytes: u64,
    /// Whether the path had files of its own to remove (an overlay's lower paths do not).
    pub had_files: bool,
    /// Removed in the upper layer directly, behind OverlayFS's back: a remount is due.
    pub bypassed_mount: bool,
}

/// A path the GC decided about.
#[derive(Debug, Clone)]
pub struct DeadPath {
    pub path: StorePath,
    pub nar_size: u64,
    pub registration_time: i64,
    pub deriver: Option<StorePath>,
    pub references: Vec<StorePath>,
}

/// Removes the files of store paths; shared by the threads that delete in parallel, so
/// it holds plain paths, not the database.
pub trait FileRemover: Sync {
    /// Bytes that removing `path` would free (for `--max-freed`).
    fn measure(&self, path: &StorePath) -> u64;
    fn remove_files(&self, path: &StorePath) -> io::Result<Removed>;
    /// The per-path lock file (`<real>/<basename>.lock`).
    fn lock_path_of(&self, path: &StorePath) -> PathBuf;
}

/// What a store must provide to be collected. `LocalStore` is the plain case.
pub trait GcTarget {
    fn remover(&self) -> Box<dyn FileRemover + '_>;
    fn local(&self) -> &LocalStore;
    /// Whether the target of a root is valid (an overlay also asks its lower store).
    fn root_is_valid(&self, path: &StorePath) -> bool;
    /// Upper-database paths kept alive by roots that are not themselves in it (an
    /// overlay's lower closures of roots pointing into the lower store).
    fn extra_live(&self, _roots_elsewhere: &[StorePath]) -> Result<Vec<StorePath>> {
        Ok(Vec::new())
    }
    /// Extra roots (a policy's `gc_roots`).
    fn extra_roots(&self) -> Result<Vec<StorePath>> {
        Ok(Vec::new())
    }
    /// Narrows the dead set (a policy's `gc`); the engine keeps the closure of whatever
    /// is kept. The default deletes everything dead.
    fn choose(&self, dead: Vec<DeadPath>) -> Result<GcChoice> {
        Ok(GcChoice { delete: dead.into_iter().map(|d| d.path).collect(), reasons: Default::default() })
    }
    /// Where unclaimed entries are looked for.
    fn garbage_dir(&self) -> PathBuf;
    /// The store's real directory, where lock files are taken (an overlay's mount).
    fn real_dir(&self) -> PathBuf;
    fn remove_garbage(&self, name: &OsString) -> io::Result<Removed>;
    /// Called once at the end with whether anything bypassed the mount.
    fn finish(&mut self, _bypassed_mount: bool) -> Result<bool> {
        Ok(false)
    }
}

#[derive(Debug, Default)]
pub struct GcReport {
    pub roots: Roots,
    pub live: Vec<StorePath>,
    pub dead: Vec<StorePath>,
    /// Paths whose rows were deleted, in deletion order.
    pub deleted: Vec<StorePath>,
    /// Of those, paths that had no files of their own (an overlay's lower rows).
    pub rows_only: usize,
    /// Unclaimed entries removed.
    pub garbage: Vec<String>,
    pub bytes_freed: u64,
    pub remounted: bool,
    /// Paths that would be deleted (dry run).
    pub skipped: Vec<StorePath>,
    /// Dead paths kept: by the policy (with its reason, when it gave one), or because a
    /// kept path refers to them.
    pub kept: Vec<(StorePath, String)>,
}

impl GcReport {
    /// What Nix counts as "store paths deleted".
    pub fn paths_deleted(&self) -> usize {
        self.deleted.len() + self.garbage.len()
    }
}
