//! `watch`: the store as a long-running service. It keeps the overlay mounted, reloads
//! the config and policy when their files change, and runs scheduled GC and optimise.
//!
//! Reloads are last-known-good: a new spec and policy are parsed, loaded and validated
//! before anything is touched; a bad edit is logged once and the service keeps running
//! on the old ones. Mount-relevant changes remount (the new policy's `remount` hook, else
//! unmount and mount with the new settings); a new lower store pivots. Either rolls back
//! to the old mount on failure. Editors' saves (rename over, delete and recreate, bursts
//! of writes) are caught by watching the files' directories and debouncing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::policy::LuaPolicy;
use crate::spec::{StoreKind, StoreSpec};
use crate::store::gc::GcLock;
use crate::store::gc::{Collector, GcAction, GcOptions};
use crate::store::overlay::{self, NixPolicy, OpenOptions, OverlayPolicy, OverlayStore, PolicyFailure};
use crate::store::{PathInfo, Result as StoreResult};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("watching files: {0}")]
    Notify(#[from] notify::Error),
}

/// Shares a loaded policy between the store (which calls its hooks) and the service
/// (which calls `on_reload` and asks which files it loaded).
struct Shared(Rc<LuaPolicy>);

impl OverlayPolicy for Shared {
    fn copy_up(&self, s: &OverlayStore, i: &PathInfo, r: overlay::CopyUpReason) -> bool {
        self.0.copy_up(s, i, r)
    }
    fn gc_roots(&self, s: &OverlayStore) -> StoreResult<Vec<crate::format::StorePath>> {
        self.0.gc_roots(s)
    }
    fn gc(&self, s: &OverlayStore, d: Vec<crate::store::gc::DeadPath>, l: &[bool]) -> StoreResult<crate::store::gc::GcChoice> {
        self.0.gc(s, d, l)
    }
    fn remount(&self, s: &OverlayStore, r: &str) -> StoreResult<bool> {
        self.0.remount(s, r)
    }
    fn pivot(
        &self,
        s: &OverlayStore,
        a: &[(crate::format::StorePath, bool)],
    ) -> Option<std::collections::BTreeMap<crate::format::StorePath, String>> {
        OverlayPolicy::pivot(self.0.as_ref(), s, a)
    }
    fn failures(&self) -> Vec<PolicyFailure> {
        self.0.failures()
    }
}

struct Loaded {
    spec: StoreSpec,
    policy: Option<Rc<LuaPolicy>>,
}

impl Loaded {
    fn read(config: &Path) -> Result<Loaded, String> {
        let spec = StoreSpec::from_file(config).map_err(|e| e.to_string())?;
        if spec.kind != StoreKind::LocalOverlay {
            return Err(format!("{}: watch serves local-overlay stores; this spec is a {} store", config.display(), spec.kind));
        }
        let policy = match &spec.policy {
            Some(p) => Some(Rc::new(LuaPolicy::load(p, &spec.policy_limits, Some(&spec)).map_err(|e| e.to_string())?)),
            None => None,
        };
        Ok(Loaded { spec, policy })
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut f: BTreeSet<PathBuf> = self.spec.files.iter().cloned().collect();
        if let Some(p) = &self.policy {
            f.extend(p.files());
        } else if let Some(p) = &self.spec.policy {
            f.insert(p.clone());
        }
        f.into_iter().collect()
    }

    fn boxed_policy(&self) -> Box<dyn OverlayPolicy> {
        match &self.policy {
            Some(p) => Box::new(Shared(p.clone())),
            None => Box::new(NixPolicy),
        }
    }
}

/// Mounts (with `[mount]`) or checks the overlay, then opens the store.
fn bring_up(l: &Loaded) -> StoreResult<OverlayStore> {
    let plan = overlay::mount_plan(&l.spec)?;
    if l.spec.mount.is_some() {
        overlay::init(&l.spec)?;
        plan.mount()?;
    }
    plan.check()?;
    OverlayStore::open_with_policy(&l.spec, OpenOptions { check_mount: true, read_only: false }, l.boxed_policy())
}

/// Whether an event can change a file's contents. Reads (ours included: every reload
/// opens the files) and metadata changes such as access times are not edits.
fn is_edit(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        _ => false,
    }
}

/// Tells systemd we are ready, when it asked (`NOTIFY_SOCKET`).
fn notify_systemd(state: &str) {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let s = sock.to_string_lossy().to_string();
    let Ok(d) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let r = if let Some(abs) = s.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()).and_then(|a| d.send_to_addr(state.as_bytes(), &a))
    } else {
        d.send_to(state.as_bytes(), &s)
    };
    if let Err(e) = r {
        tracing::debug!("sd_notify: {e}");
    }
}

pub struct Service {
    config: PathBuf,
    current: Loaded,
    store: OverlayStore,
    stop: Arc<AtomicBool>,
}

impl Service {
    pub fn start(config: &Path, stop: Arc<AtomicBool>) -> Result<Service, ServiceError> {
        let current = Loaded::read(config).map_err(ServiceError::Config)?;
        let store = bring_up(&current)?;
        Ok(Service { config: config.to_path_buf(), current, store, stop })
    }

    fn watch_dirs(files: &[PathBuf]) -> BTreeSet<PathBuf> {
        files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect()
    }

    pub fn run(mut self) -> Result<(), ServiceError> {
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let _ = tx.send(ev);
        })?;
        let mut files = self.current.files();
        let mut dirs = Self::watch_dirs(&files);
        for d in &dirs {
            watcher.watch(d, RecursiveMode::NonRecursive)?;
        }
        tracing::info!("watching {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" "));
        notify_systemd("READY=1");
        let mut dirty_since: Option<Instant> = None;
        let mut last_gc = Instant::now();
        let mut last_optimise = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(ev)) => {
                    if is_edit(&ev.kind) && ev.paths.iter().any(|p| files.iter().any(|f| f == p)) {
                        dirty_since = Some(Instant::now());
                    }
                }
                Ok(Err(e)) => tracing::warn!("file watch: {e}"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let debounce = Duration::from_millis(self.current.spec.watch.debounce_ms);
            if dirty_since.is_some_and(|t| t.elapsed() >= debounce) {
                dirty_since = None;
                self.reload()?;
                let new_files = self.current.files();
                let new_dirs = Self::watch_dirs(&new_files);
                for d in dirs.difference(&new_dirs) {
                    let _ = watcher.unwatch(d);
                }
                for d in new_dirs.difference(&dirs) {
                    if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                        tracing::warn!("cannot watch '{}': {e}", d.display());
                    }
                }
                if new_files != files {
                    tracing::info!("watching {}", new_files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" "));
                }
                files = new_files;
                dirs = new_dirs;
            }
            let w = self.current.spec.watch.clone();
            if w.gc_interval_secs.is_some_and(|s| last_gc.elapsed() >= Duration::from_secs(s)) {
                last_gc = Instant::now();
                self.scheduled_gc();
            }
            if w.optimise_interval_secs.is_some_and(|s| last_optimise.elapsed() >= Duration::from_secs(s)) {
                last_optimise = Instant::now();
                let mut notice = |m: &str| tracing::debug!("{m}");
                match self.store.optimise(&mut notice) {
                    Ok(r) => tracing::info!("scheduled optimise: {} upper copies removed, {} bytes freed", r.paths.len(), r.bytes_freed),
                    Err(e) => tracing::error!("scheduled optimise failed: {e}"),
                }
            }
        }
        notify_systemd("STOPPING=1");
        tracing::info!("stopping: the overlay stays mounted");
        Ok(())
    }

    fn scheduled_gc(&mut self) {
        let g = &self.current.spec.gc;
        let opts = GcOptions {
            action: GcAction::Collect,
            max_freed: None,
            dry_run: false,
            keep_derivations: g.keep_derivations,
            keep_outputs: g.keep_outputs,
        };
        let mut notice = |m: &str| tracing::debug!("{m}");
        match (Collector { target: &mut self.store, notice: &mut notice }).run(&opts) {
            Ok(r) => tracing::info!("scheduled gc: {} store paths deleted, {} bytes freed", r.paths_deleted(), r.bytes_freed),
            Err(e) => tracing::error!("scheduled gc failed: {e}"),
        }
    }

    /// Loads the edited config and policy; applies them only if they are valid and any
    /// remount or pivot they need succeeds. An error is returned only when the service
    /// cannot go on: the mount matches neither the old config nor the new one.
    fn reload(&mut self) -> Result<(), ServiceError> {
        let new = match Loaded::read(&self.config) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("{e} (keeping the previous config and policy)");
                return Ok(());
            }
        };
        let old_plan = self.store.plan().clone();
        let new_plan = match overlay::mount_plan(&new.spec) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{}: {e} (keeping the previous config and policy)", self.config.display());
                return Ok(());
            }
        };
        if new_plan.lowerdir != old_plan.lowerdir {
            if let Err(e) = self.pivot_to(&new) {
                tracing::error!("{e} (keeping the previous config and policy)");
                return Ok(());
            }
            tracing::info!("pivoted to {}", new_plan.lowerdir.display());
        } else if !new_plan.same_mount(&old_plan) {
            if let Err(e) = self.remount_to(&new, &old_plan, &new_plan) {
                tracing::error!("{e}");
                return Ok(());
            }
            tracing::info!("remounted '{}' with the new settings", new_plan.real.display());
        }
        let store = match OverlayStore::open_with_policy(&new.spec, OpenOptions::default(), new.boxed_policy()) {
            Ok(s) => s,
            Err(e) if new_plan == old_plan => {
                tracing::error!("opening the store with the new config: {e} (keeping the previous config and policy)");
                return Ok(());
            }
            Err(e) if new_plan.lowerdir != old_plan.lowerdir => {
                // The pivot moved the store object along with the mount (and the
                // database): it still describes what is mounted. Serve it with the new
                // policy, as the new config says.
                tracing::error!("pivoted, but opening the store with the new config failed: {e}; serving the pivoted store");
                self.store.set_policy(new.boxed_policy());
                self.current = new;
                return Ok(());
            }
            Err(e) => {
                // The mount moved, but the store object still describes the old one:
                // move the mount back, so the service never serves a store that does not
                // match what is mounted.
                let back = (|| -> StoreResult<()> {
                    new_plan.umount()?;
                    old_plan.mount()?;
                    Ok(old_plan.check()?)
                })();
                return match back {
                    Ok(()) => {
                        tracing::error!(
                            "opening the store with the new config failed: {e}; rolled back to the old mount (keeping the previous config and policy)"
                        );
                        Ok(())
                    }
                    Err(b) => Err(ServiceError::Config(format!(
                        "opening the store with the new config failed after remounting: {e}; moving back to the old mount failed too: {b}; \
                         the overlay matches neither config, so watch stops (fix the config or the mount, then start it again)"
                    ))),
                };
            }
        };
        let old_spec = std::mem::replace(&mut self.current, new).spec;
        self.store = store;
        if let Some(p) = &self.current.policy {
            p.on_reload(&self.store, &old_spec, &self.current.spec);
        }
        tracing::info!("reloaded '{}'", self.config.display());
        Ok(())
    }

    /// Mount-relevant settings changed: the new policy's `remount` hook, else unmount
    /// and mount with the new settings; back to the old mount if that fails.
    fn remount_to(&mut self, new: &Loaded, old_plan: &overlay::MountPlan, new_plan: &overlay::MountPlan) -> Result<(), String> {
        // A GC (ours or the CLI's) finishes before the mount moves under it.
        let mut notice = |m: &str| tracing::info!("{m} (before remounting)");
        let _gc = GcLock::acquire(&self.current.spec.state, &mut notice).map_err(|e| e.to_string())?;
        if let Some(p) = &new.policy {
            match p.hook_remount_change(&self.store, &self.current.spec, &new.spec) {
                Ok(Some(true)) => return new_plan.check().map_err(|e| format!("the policy's remount hook ran, but: {e}")),
                Ok(_) => {}
                Err(e) => tracing::warn!("policy hook 'remount' failed: {}; remounting the built-in way", e.message),
            }
        }
        let attempt = (|| -> StoreResult<()> {
            old_plan.umount()?;
            overlay::init(&new.spec)?;
            new_plan.mount()?;
            new_plan.check()?;
            Ok(())
        })();
        if let Err(e) = attempt {
            let _ = new_plan.umount();
            let back = old_plan.mount();
            return Err(format!(
                "remounting with the new settings failed: {e}; {} (keeping the previous config and policy)",
                if back.is_ok() { "rolled back to the old mount" } else { "and the old mount could not be restored" }
            ));
        }
        Ok(())
    }

    fn pivot_to(&mut self, new: &Loaded) -> Result<(), String> {
        let g = &self.current.spec.gc;
        let plan = self.store.plan_pivot(&new.spec, g.keep_derivations, g.keep_outputs).map_err(|e| format!("planning the pivot: {e}"))?;
        self.store.pivot(&new.spec, &plan).map_err(|e| e.to_string())
    }
}
