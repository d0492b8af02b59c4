//! The GC engine: roots, liveness, the dead set, the policy's choice, then rows and
//! files deleted in Nix's order.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::path::Path;

use rayon::prelude::*;

use std::io;

use super::lock::SocketServer;
use super::{DeadPath, GcAction, GcChoice, GcLock, GcOptions, GcReport, GcTarget, Removed};
use crate::format::StorePath;
use crate::store::local::db::Graph;
use crate::store::local::lock::{FileLock, LockKind, PathLock};
use crate::store::local::roots::{RootFinder, Roots};
use crate::store::{Result, StoreError};

/// Whether a process with this PID exists (for our own `.tmp-overlay-store-*-PID-N`).
fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

/// The GC engine over one target.
pub struct Collector<'a> {
    pub target: &'a mut dyn GcTarget,
    pub notice: &'a mut (dyn FnMut(&str) + Send),
}

impl Collector<'_> {
    pub fn find_roots(&mut self) -> Result<Roots> {
        let target: &dyn GcTarget = &*self.target;
        let local = target.local();
        let store_dir = local.config().store_dir.clone();
        let state = local.config().state.clone();
        let is_valid = |p: &StorePath| target.root_is_valid(p);
        let notice = &mut *self.notice;
        let mut roots = RootFinder { store_dir: &store_dir, state: &state, is_valid: &is_valid, notice }.find_all(true)?;
        for p in target.extra_roots()? {
            roots.entry(p).or_default().insert("{policy}".into());
        }
        Ok(roots)
    }

    /// Live indices: the closure of the roots under references, with derivers
    /// (keep-derivations) and outputs (keep-outputs).
    fn live_set(&self, g: &Graph, start: impl IntoIterator<Item = u32>, opts: &GcOptions) -> Vec<bool> {
        let mut live = vec![false; g.paths.len()];
        let mut stack: Vec<u32> = Vec::new();
        for i in start {
            if !live[i as usize] {
                live[i as usize] = true;
                stack.push(i);
            }
        }
        while let Some(i) = stack.pop() {
            let i = i as usize;
            let visit = |j: u32, live: &mut Vec<bool>, stack: &mut Vec<u32>| {
                if !live[j as usize] {
                    live[j as usize] = true;
                    stack.push(j);
                }
            };
            for &r in &g.refs[i] {
                visit(r, &mut live, &mut stack);
            }
            if opts.keep_derivations {
                if let Some(d) = g.deriver[i] {
                    if g.outputs[d as usize].contains(&(i as u32)) {
                        visit(d, &mut live, &mut stack);
                    }
                }
            }
            if opts.keep_outputs {
                for &o in &g.outputs[i] {
                    visit(o, &mut live, &mut stack);
                }
            }
        }
        live
    }

    pub fn run(&mut self, opts: &GcOptions) -> Result<GcReport> {
        let state = self.target.local().config().state.clone();
        let gc_lock = if opts.dry_run { None } else { Some(GcLock::acquire(&state, self.notice)?) };

        (self.notice)("finding garbage collector roots...");
        let roots = self.find_roots()?;
        let g = self.target.local().db().load_graph()?;
        let scanning = crate::progress::Task::new("gc", "paths scanned").with_total(g.paths.len() as u64, 0);
        let mut root_idx = Vec::new();
        let mut elsewhere = Vec::new();
        for p in roots.keys() {
            match g.index.get(p) {
                Some(&i) => root_idx.push(i),
                None => elsewhere.push(p.clone()),
            }
        }
        for p in self.target.extra_live(&elsewhere)? {
            if let Some(&i) = g.index.get(&p) {
                root_idx.push(i);
            }
        }
        // Temporary roots protect by hash part (so `<hash>-x.lock` and friends too).
        let temp_hashes: HashSet<String> = roots.keys().map(|p| p.hash_part().to_string()).collect();
        for (i, p) in g.paths.iter().enumerate() {
            if temp_hashes.contains(p.hash_part()) {
                root_idx.push(i as u32);
            }
        }
        let live = self.live_set(&g, root_idx.iter().copied(), opts);
        scanning.advance(g.paths.len() as u64, 0);
        drop(scanning);
        let mut report = GcReport { roots, ..Default::default() };
        report.live = (0..g.paths.len()).filter(|&i| live[i]).map(|i| g.paths[i].clone()).collect();
        report.live.sort();

        // Candidates: everything dead, or exactly the paths asked for.
        let mut unregistered: Vec<StorePath> = Vec::new();
        let candidates: Vec<u32> = match &opts.action {
            GcAction::Collect => (0..g.paths.len() as u32).filter(|&i| !live[i as usize]).collect(),
            GcAction::DeleteSpecific(paths) => {
                let mut v = Vec::new();
                let wanted: HashSet<u32> = paths.iter().filter_map(|p| g.index.get(p).copied()).collect();
                for p in paths {
                    let Some(&i) = g.index.get(p) else {
                        // Not registered (a killed delete may have removed its row): garbage,
                        // as for Nix, unless a temporary root holds it.
                        if temp_hashes.contains(p.hash_part()) {
                            return Err(StoreError::Other(format!(
                                "Cannot delete path '{}' since it is still alive. To find out why, use: nix-store --query --roots",
                                self.target.local().config().store_dir.display(p)
                            )));
                        }
                        if !unregistered.contains(p) {
                            unregistered.push(p.clone());
                        }
                        continue;
                    };
                    let referred = g.referrers[i as usize].iter().any(|&r| r != i && !wanted.contains(&r));
                    if live[i as usize] || referred {
                        return Err(StoreError::Other(format!(
                            "Cannot delete path '{}' since it is still alive. To find out why, use: nix-store --query --roots",
                            self.target.local().config().store_dir.display(p)
                        )));
                    }
                    v.push(i);
                }
                v
            }
        };
        report.dead = candidates.iter().map(|&i| g.paths[i as usize].clone()).chain(unregistered.iter().cloned()).collect();
        report.dead.sort();

        // The policy may keep some; the engine keeps the closure of what is kept.
        let dead_infos: Vec<DeadPath> = candidates
            .iter()
            .map(|&i| {
                let i = i as usize;
                DeadPath {
                    path: g.paths[i].clone(),
                    nar_size: g.nar_size[i],
                    registration_time: g.registration_time[i],
                    deriver: g.deriver[i].map(|d| g.paths[d as usize].clone()),
                    references: g.refs[i].iter().map(|&r| g.paths[r as usize].clone()).collect(),
                }
            })
            .collect();
        let choice = if matches!(opts.action, GcAction::Collect) {
            self.target.choose(dead_infos)?
        } else {
            GcChoice { delete: dead_infos.into_iter().map(|d| d.path).collect(), reasons: Default::default() }
        };
        let chosen: HashSet<StorePath> = choice.delete.iter().cloned().collect();
        let cand_set: HashSet<u32> = candidates.iter().copied().collect();
        let kept: Vec<u32> = candidates.iter().copied().filter(|&i| !chosen.contains(&g.paths[i as usize])).collect();
        let mut doomed = self.restrict(&g, &cand_set, &kept);
        let kept_set: HashSet<u32> = kept.iter().copied().collect();
        for &i in &candidates {
            if doomed.contains(&i) {
                continue;
            }
            let p = &g.paths[i as usize];
            let why = if kept_set.contains(&i) {
                choice.reasons.get(p).cloned().unwrap_or_else(|| "kept by the policy".into())
            } else {
                "referenced by a path the policy keeps".into()
            };
            report.kept.push((p.clone(), why));
        }
        report.kept.sort();
        let mut order = deletion_order(&g, &doomed);

        if opts.dry_run {
            report.skipped = order.iter().map(|&i| g.paths[i as usize].clone()).chain(unregistered.iter().cloned()).collect();
            return Ok(report);
        }
        (self.notice)("deleting garbage...");
        let remover = self.target.remover();
        if let Some(limit) = opts.max_freed {
            let mut total = 0u64;
            let mut cut = order.len();
            for (k, &i) in order.iter().enumerate() {
                if total >= limit {
                    cut = k;
                    break;
                }
                total += remover.measure(&g.paths[i as usize]);
            }
            order.truncate(cut);
            doomed = order.iter().copied().collect();
        }

        // Re-check temporary roots announced over the socket; mark the rest pending so
        // an announcement for one of them waits until it is gone.
        let gc_lock = gc_lock.expect("not a dry run");
        let server = &gc_lock.server;
        {
            let (lock, _) = &*server.shared;
            let mut s = lock.lock().expect("gc socket state");
            let protected: Vec<u32> = order.iter().copied().filter(|&i| s.temp_roots.contains(g.paths[i as usize].hash_part())).collect();
            if !protected.is_empty() {
                doomed = self.restrict(&g, &doomed, &protected);
                order.retain(|i| doomed.contains(i));
            }
            for &i in &order {
                s.pending.insert(g.paths[i as usize].hash_part().to_string());
            }
            // An unregistered path someone announced meanwhile is being added: leave it.
            unregistered.retain(|p| !s.temp_roots.contains(p.hash_part()));
            for p in &unregistered {
                s.pending.insert(p.hash_part().to_string());
            }
        }
        let doomed_paths: Vec<StorePath> = order.iter().map(|&i| g.paths[i as usize].clone()).collect();
        let unpend = || {
            let (lock, cv) = &*server.shared;
            lock.lock().expect("gc socket state").pending.clear();
            cv.notify_all();
        };
        // In one immediate transaction, so nothing registered since the graph was loaded
        // can come to refer to a doomed row between the check and the delete.
        let db = self.target.local().db();
        let deleted = db.in_tx(|| {
            let doomed_set: HashSet<&StorePath> = doomed_paths.iter().collect();
            let mut keep: Vec<StorePath> = Vec::new();
            for p in &doomed_paths {
                if db.referrers(p)?.iter().any(|r| r != p && !doomed_set.contains(r)) {
                    keep.push(p.clone());
                }
            }
            let kept =
                if keep.is_empty() { HashSet::new() } else { db.closure(&keep)?.0.into_iter().map(|i| i.path).collect::<HashSet<_>>() };
            let now: Vec<StorePath> = doomed_paths.iter().filter(|p| !kept.contains(*p)).cloned().collect();
            db.delete_paths(&now)?;
            Ok(now)
        });
        let doomed_paths = match deleted {
            Ok(d) => d,
            Err(e) => {
                unpend();
                return Err(e);
            }
        };
        // Files, on all cores. Announcements of these paths wait until they are gone,
        // so nobody re-adds one while its old files are being removed; a path whose
        // lock is held (an adder that did not announce it) is left as debris.
        let deleting = crate::progress::Task::new("gc", "paths deleted").with_total((doomed_paths.len() + unregistered.len()) as u64, 0);
        let results: Vec<(StorePath, io::Result<Removed>)> = doomed_paths
            .par_iter()
            .chain(unregistered.par_iter())
            .map(|p| {
                let lock_file = remover.lock_path_of(p);
                let res = match PathLock::acquire(&lock_file, false) {
                    Ok(Some(_l)) => remover.remove_files(p),
                    Ok(None) => Ok(Removed::default()),
                    Err(e) => Err(e),
                };
                deleting.advance(1, res.as_ref().map_or(0, |r| r.bytes));
                (p.clone(), res)
            })
            .collect();
        drop(deleting);
        unpend();
        drop(remover);
        let sd = self.target.local().config().store_dir.clone();
        let mut bypassed = false;
        for (p, r) in results {
            match r {
                Ok(removed) => {
                    (self.notice)(&format!("deleting '{}'", sd.display(&p)));
                    report.bytes_freed += removed.bytes;
                    bypassed |= removed.bypassed_mount;
                    if !removed.had_files {
                        report.rows_only += 1;
                    }
                    report.deleted.push(p);
                }
                Err(e) => {
                    (self.notice)(&format!(
                        "warning: could not remove the files of '{}': {e}; they will be collected later",
                        sd.display(&p)
                    ));
                    report.deleted.push(p);
                }
            }
        }

        if matches!(opts.action, GcAction::Collect) && opts.max_freed.is_none_or(|m| report.bytes_freed < m) {
            bypassed |= self.collect_unclaimed(server, opts, &mut report)?;
        }
        report.remounted = self.target.finish(bypassed)?;
        drop(gc_lock);
        Ok(report)
    }

    /// `set` minus `keep` and everything `keep` references within `set`.
    fn restrict(&self, g: &Graph, set: &HashSet<u32>, keep: &[u32]) -> HashSet<u32> {
        let mut out = set.clone();
        let mut stack: Vec<u32> = keep.to_vec();
        while let Some(i) = stack.pop() {
            if out.remove(&i) || keep.contains(&i) {
                for &r in &g.refs[i as usize] {
                    if out.contains(&r) {
                        stack.push(r);
                    }
                }
            }
        }
        out
    }

    /// Removes entries of the garbage directory that no row claims and nobody holds.
    fn collect_unclaimed(&mut self, server: &SocketServer, opts: &GcOptions, report: &mut GcReport) -> Result<bool> {
        let dir = self.target.garbage_dir();
        let lock_dir = self.target.real_dir();
        let Ok(entries) = fs::read_dir(&dir) else { return Ok(false) };
        let mut bypassed = false;
        let mut names: Vec<OsString> = entries.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names.sort();
        let (state, cv) = &*server.shared;
        for name in names {
            let s = name.to_string_lossy().to_string();
            if s == ".links" {
                continue;
            }
            if let Some(rest) = s.strip_prefix(".tmp-overlay-store-") {
                // `<what>-<pid>-<n>`: ours; leave those of running processes alone.
                let pid = rest.rsplit('-').nth(1).unwrap_or("");
                if pid_alive(pid) {
                    continue;
                }
            } else if s.starts_with('.') {
                continue;
            }
            let hash: String = s.chars().take(32).collect();
            if let Ok(p) = StorePath::from_basename(&s) {
                if self.target.local().db().is_valid(&p)? {
                    continue;
                }
            }
            if report.roots.keys().any(|p| p.hash_part() == hash) {
                continue;
            }
            // As for dead paths: a root announced from now on waits until this is gone.
            {
                let mut st = state.lock().expect("gc socket state");
                if st.temp_roots.contains(&hash) {
                    continue;
                }
                st.pending.insert(hash.clone());
            }
            let unpend = || {
                state.lock().expect("gc socket state").pending.remove(&hash);
                cv.notify_all();
            };
            let full = dir.join(&name);
            // Locks are taken where adders take them: in the real store directory (for an
            // overlay, through the mount), and held until the entry is gone.
            let mut held_lock_file: Option<FileLock> = None;
            let mut _held_path_lock: Option<PathLock> = None;
            if s.ends_with(".lock") {
                let real_lock = lock_dir.join(&name);
                // Anything but a regular file (a planted symlink or FIFO) is removed unlocked.
                if let Ok(f) = crate::store::local::lock::open_lock_file(&real_lock, false) {
                    match FileLock::from_file(f, &real_lock, LockKind::Exclusive, false) {
                        Ok(Some(l)) => held_lock_file = Some(l),
                        _ => {
                            unpend();
                            continue;
                        }
                    }
                }
            } else {
                match PathLock::acquire(&lock_dir.join(format!("{s}.lock")), false) {
                    Ok(Some(l)) => _held_path_lock = Some(l),
                    _ => {
                        unpend();
                        continue;
                    }
                }
            }
            (self.notice)(&format!("deleting '{}'", full.display()));
            match self.target.remove_garbage(&name) {
                Ok(r) => {
                    report.bytes_freed += r.bytes;
                    bypassed |= r.bypassed_mount;
                    report.garbage.push(s);
                    if let Some(l) = &held_lock_file {
                        // Tells a process that opened it before we deleted it that it is stale.
                        use std::io::Write;
                        let _ = (&*l.file()).write_all(b"d");
                    }
                }
                Err(e) => (self.notice)(&format!("warning: could not delete '{}': {e}", full.display())),
            }
            drop(_held_path_lock);
            drop(held_lock_file);
            unpend();
            if opts.max_freed.is_some_and(|m| report.bytes_freed >= m) {
                break;
            }
        }
        Ok(bypassed)
    }
}

/// Referrers before references (Kahn's algorithm on the doomed subgraph), ties by path.
fn deletion_order(g: &Graph, doomed: &HashSet<u32>) -> Vec<u32> {
    g.referrers_first(&doomed.iter().copied().collect::<Vec<_>>())
}
