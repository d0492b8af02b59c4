//! Removing store objects from an overlay without ever hiding the lower store.
//!
//! Deleting through the mount a file the lower layer also has would leave a whiteout
//! that hides the lower copy. So a path whose files exist in both layers is deleted in
//! the upper layer directly, behind OverlayFS's back, and the overlay is remounted
//! afterwards so it stops serving the stale upper view; a path only in the upper layer is
//! deleted through the mount; for a lower path only its copied-up row goes. A marker file
//! records that a remount is due, so a crash before the remount is repaired at next open.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::format::StorePath;
use crate::store::fs::tree::{measure as measure_tree, remove as remove_tree_counting};
use crate::store::gc::{FileRemover, GcTarget, Removed};
use crate::store::local::LocalStore;
use crate::store::overlay::layers::{Layers, Location};
use crate::store::overlay::{mount, OverlayStore};
use crate::store::{io_err, Result, Store, StoreError};

/// `${state}/overlay-remount-needed`: exists while the upper layer was changed directly
/// and the overlay has not been remounted since.
pub fn remount_marker(state: &Path) -> PathBuf {
    state.join("overlay-remount-needed")
}

/// A name in the upper layer for an entry on its way out; the GC collects it if we die
/// before it is gone (it is ours, and its PID is no longer running).
fn trash_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(".tmp-overlay-store-trash-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The parts of an overlay that file removal needs, shareable across threads.
pub struct OverlayRemover {
    pub merged: PathBuf,
    pub upper_layer: PathBuf,
    pub lower_real: PathBuf,
    pub marker: PathBuf,
}

impl OverlayRemover {
    /// Records, before anything is written past the mount, that a remount is due.
    pub fn note_bypass(&self) -> io::Result<()> {
        if !self.marker.exists() {
            fs::write(&self.marker, b"")?;
        }
        Ok(())
    }

    /// Removes `upper_layer/name`, directly when the lower layer has `name` (or the entry
    /// is a whiteout), else through the mount.
    fn remove_entry(&self, name: &std::ffi::OsStr) -> io::Result<Removed> {
        let upper = self.upper_layer.join(name);
        let layers = Layers::new(&self.upper_layer, &self.lower_real);
        let at = layers.locate(&name.to_string_lossy());
        if !at.in_upper() {
            return Ok(Removed::default());
        }
        if matches!(at, Location::Both | Location::Hidden) {
            self.note_bypass()?;
            // Out of the way in one step, then removed: an upper directory is often
            // opaque, so a half-removed one would hide the rest of the lower copy.
            let trash = self.upper_layer.join(trash_name());
            fs::rename(&upper, &trash)?;
            Ok(Removed { bytes: remove_tree_counting(&trash)?, had_files: true, bypassed_mount: true })
        } else {
            // Through the mount, also out of the way in one step first: if the lower store
            // gains this name meanwhile, a half-removed directory would whiteout it.
            let trash = self.merged.join(trash_name());
            let target = match fs::rename(self.merged.join(name), &trash) {
                Ok(()) => trash,
                Err(_) => self.merged.join(name),
            };
            let bytes = remove_tree_counting(&target)?;
            let mut bypassed = false;
            if layers.locate(&name.to_string_lossy()) == Location::Hidden {
                // The lower store got the name after all: drop the whiteout, remount.
                self.note_bypass()?;
                fs::remove_file(self.upper_layer.join(name))?;
                bypassed = true;
            }
            Ok(Removed { bytes, had_files: true, bypassed_mount: bypassed })
        }
    }
}

impl FileRemover for OverlayRemover {
    fn measure(&self, path: &StorePath) -> u64 {
        measure_tree(&self.upper_layer.join(path.basename()))
    }
    fn remove_files(&self, path: &StorePath) -> io::Result<Removed> {
        let r = self.remove_entry(std::ffi::OsStr::new(path.basename()))?;
        Ok(r)
    }
    fn lock_path_of(&self, path: &StorePath) -> PathBuf {
        self.merged.join(format!("{}.lock", path.basename()))
    }
}

impl OverlayStore {
    pub fn remover(&self) -> OverlayRemover {
        OverlayRemover {
            merged: self.plan.real.clone(),
            upper_layer: self.upper_layer.clone(),
            lower_real: self.plan.lowerdir.clone(),
            marker: remount_marker(&self.upper.config().state),
        }
    }

    /// Remounts after the upper layer was changed directly: the policy's hook, else the
    /// spec's `remount-hook` (argv[1] is the mount point, as in Nix), else mount(2)
    /// `MS_REMOUNT`. Clears the marker on success.
    pub fn remount(&self, reason: &str) -> Result<()> {
        let marker = remount_marker(&self.upper.config().state);
        if self.policy.remount(self, reason)? {
            tracing::debug!("remounted '{}' ({reason}) through the policy", self.plan.real.display());
        } else if let Some(hook) = &self.remount_hook {
            tracing::debug!("remounting '{}' ({reason}) with remount-hook '{}'", self.plan.real.display(), hook.display());
            let status = Command::new(hook).arg(&self.plan.real).status().map_err(io_err(hook))?;
            if !status.success() {
                return Err(StoreError::Other(format!("remount-hook '{}' failed ({status})", hook.display())));
            }
        } else {
            mount::remount(&self.plan.real)?;
        }
        let _ = fs::remove_file(&marker);
        Ok(())
    }

    /// Remounts if an earlier run changed the upper layer directly and died before it
    /// could remount.
    pub fn recover_pending_remount(&self) -> Result<()> {
        let state = &self.upper.config().state;
        if !self.read_only && remount_marker(state).exists() {
            // Only if no GC, optimise or pivot is running: one of those may be half-way
            // through its upper-layer changes and will remount itself.
            let lock_path = crate::store::local::temproots::gc_lock_path(state);
            let Ok(Some(_idle)) =
                crate::store::local::lock::FileLock::acquire(&lock_path, crate::store::local::lock::LockKind::Exclusive, false)
            else {
                return Ok(());
            };
            tracing::info!("remounting '{}': an earlier operation changed the upper layer and did not finish", self.plan.real.display());
            self.remount("recovery")?;
        }
        Ok(())
    }

    /// Removes upper-layer copies of paths the lower store also has (the lower store may
    /// have grown since they were added), then remounts. Only copies whose recorded
    /// hash is the lower store's are removed, so the files seen afterwards are the ones
    /// the database describes.
    pub fn optimise(&mut self, notice: &mut dyn FnMut(&str)) -> Result<OptimiseReport> {
        let state = self.upper.config().state.clone();
        let _gc = crate::store::gc::GcLock::acquire(&state, notice)?;
        let remover = self.remover();
        let layers = self.layers();
        let mut report = OptimiseReport::default();
        let infos = self.upper.db().all_infos()?;
        let progress = crate::progress::Task::new("optimise", "upper paths checked").with_total(infos.len() as u64, 0);
        for info in infos {
            progress.advance(1, 0);
            let name = info.path.basename().to_string();
            if layers.locate(&name) != Location::Both {
                continue;
            }
            let Some(lower) = self.lower.path_info(&info.path)? else { continue };
            if lower.nar_hash != info.nar_hash {
                notice(&format!(
                    "warning: keeping the upper copy of '{}': the lower store's copy has different contents",
                    self.store_dir().display(&info.path)
                ));
                continue;
            }
            let lock_file = remover.lock_path_of(&info.path);
            let Some(_lock) = crate::store::local::PathLock::acquire(&lock_file, false).map_err(io_err(&lock_file))? else {
                continue;
            };
            let removed = remover.remove_files(&info.path).map_err(io_err(self.upper_layer.join(&name)))?;
            notice(&format!("removing the upper copy of '{}'", self.store_dir().display(&info.path)));
            report.bytes_freed += removed.bytes;
            progress.advance(0, removed.bytes);
            report.paths.push(info.path);
        }
        drop(progress);
        if !report.paths.is_empty() || remount_marker(&self.upper.config().state).exists() {
            self.remount("optimise")?;
            report.remounted = true;
        }
        Ok(report)
    }
}

#[derive(Debug, Default)]
pub struct OptimiseReport {
    pub paths: Vec<StorePath>,
    pub bytes_freed: u64,
    pub remounted: bool,
}

impl GcTarget for OverlayStore {
    fn remover(&self) -> Box<dyn FileRemover + '_> {
        Box::new(OverlayStore::remover(self))
    }
    fn local(&self) -> &LocalStore {
        &self.upper
    }
    fn root_is_valid(&self, path: &StorePath) -> bool {
        self.upper.db().is_valid(path).unwrap_or(false) || self.lower.path_info(path).ok().flatten().is_some()
    }
    fn extra_live(&self, roots_elsewhere: &[StorePath]) -> Result<Vec<StorePath>> {
        let mut in_lower = Vec::new();
        for p in roots_elsewhere {
            if self.lower.path_info(p)?.is_some() {
                in_lower.push(p.clone());
            }
        }
        if in_lower.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.lower.closure(&in_lower)?.into_iter().map(|i| i.path).collect())
    }
    fn extra_roots(&self) -> Result<Vec<StorePath>> {
        self.policy.gc_roots(self)
    }
    fn choose(&self, dead: Vec<crate::store::gc::DeadPath>) -> Result<crate::store::gc::GcChoice> {
        let layers = self.layers();
        let in_lower: Vec<bool> = dead.iter().map(|d| layers.lower_has(d.path.basename())).collect();
        self.policy.gc(self, dead, &in_lower)
    }
    fn garbage_dir(&self) -> PathBuf {
        self.upper_layer.clone()
    }
    fn real_dir(&self) -> PathBuf {
        self.plan.real.clone()
    }
    fn remove_garbage(&self, name: &OsString) -> io::Result<Removed> {
        self.remover().remove_entry(name)
    }
    fn finish(&mut self, bypassed_mount: bool) -> Result<bool> {
        if bypassed_mount || remount_marker(&self.upper.config().state).exists() {
            self.remount("gc")?;
            return Ok(true);
        }
        Ok(false)
    }
}
