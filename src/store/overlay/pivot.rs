//! Pivot: moving an overlay onto a new lower store (a rotated base image, an upgraded
//! shared disk) without losing live upper closures.
//!
//! Rows of the upper database whose files only the old lower store has would dangle.
//! The plan decides per path: live ones are copied into the upper layer, dead ones are
//! dropped (with their referrers, which are dead too); a policy's `pivot` hook may
//! decide otherwise, except that a live path is always copied. Rows the new lower store
//! provides are refreshed from it. Execution stages the copies while the old mount
//! serves, swaps the mounts, and commits the database changes in one transaction. A
//! journal in the state directory lets the next open restore the old mount if the pivot
//! died half-way; until the commit, nothing the old setup relies on has changed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::format::hash::{HashAlgo, HashSink};
use crate::format::StorePath;
use crate::spec::StoreSpec;
use crate::store::fs::tree::{self, remove as remove_tree, remove as remove_tree_counting};
use crate::store::gc::{Collector, GcAction, GcLock, GcOptions, GcTarget};
use crate::store::local::lock::{FileLock, LockKind};
use crate::store::local::{LocalConfig, LocalStore, Registration};
use crate::store::overlay::layers::Layers;
use crate::store::overlay::{copy_up, mount_plan, open_lower, MountPlan, OverlayStore};
use crate::store::{io_err, Result, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PivotAction {
    Copy,
    Drop,
}

impl PivotAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PivotAction::Copy => "copy",
            PivotAction::Drop => "drop",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PivotEntry {
    pub path: StorePath,
    pub live: bool,
    pub action: PivotAction,
    pub nar_size: u64,
}

#[derive(Debug, Clone, Default)]
pub struct PivotPlan {
    /// Paths whose files only the old lower store has, and what happens to each.
    pub entries: Vec<PivotEntry>,
    /// Rows the new lower store provides (their metadata is refreshed from it).
    pub refreshed: Vec<StorePath>,
    pub old_lowerdir: PathBuf,
    pub new_lowerdir: PathBuf,
}

impl PivotPlan {
    pub fn copies(&self) -> impl Iterator<Item = &PivotEntry> {
        self.entries.iter().filter(|e| e.action == PivotAction::Copy)
    }
    pub fn drops(&self) -> impl Iterator<Item = &PivotEntry> {
        self.entries.iter().filter(|e| e.action == PivotAction::Drop)
    }
}

/// `${state}/pivot-in-progress`: `<old lowerdir>\n<new lowerdir>\n` while a pivot runs.
pub fn journal_path(state: &Path) -> PathBuf {
    state.join("pivot-in-progress")
}

fn staging_dir(upper_layer: &Path) -> PathBuf {
    upper_layer.join(".overlay-store-pivot")
}

/// The new spec must describe the same overlay with another lower store.
fn check_same_overlay(old: &MountPlan, state: &Path, new: &StoreSpec) -> Result<MountPlan> {
    let plan = mount_plan(new)?;
    if plan.real != old.real || plan.upperdir != old.upperdir || new.state != state {
        return Err(StoreError::Other(
            "pivot --to needs a spec with the same mount point (real), upper-layer and state; only the lower store may change".into(),
        ));
    }
    if plan.lowerdir == old.lowerdir {
        return Err(StoreError::Other(format!(
            "the new spec has the same lower store directory '{}': nothing to pivot",
            plan.lowerdir.display()
        )));
    }
    Ok(plan)
}

impl OverlayStore {
    /// Works out what a pivot to `new_spec` would do. Changes nothing.
    pub fn plan_pivot(&mut self, new_spec: &StoreSpec, keep_derivations: bool, keep_outputs: bool) -> Result<PivotPlan> {
        let new_plan = check_same_overlay(&self.plan, &self.upper.config().state, new_spec)?;
        let new_lower = open_lower(new_spec.lower_store.as_deref().expect("checked by mount_plan"))?;
        let infos = self.upper.db().all_infos()?;
        let opts = GcOptions { action: GcAction::Collect, max_freed: None, dry_run: true, keep_derivations, keep_outputs };
        let mut quiet = |_: &str| {};
        let live: HashSet<StorePath> =
            Collector { target: self as &mut dyn GcTarget, notice: &mut quiet }.run(&opts)?.live.into_iter().collect();
        let mut plan =
            PivotPlan { old_lowerdir: self.plan.lowerdir.clone(), new_lowerdir: new_plan.lowerdir.clone(), ..Default::default() };
        let mut affected = Vec::new();
        let (layers, new_layers) = (self.layers(), Layers::new(&self.upper_layer, &new_plan.lowerdir));
        for info in &infos {
            let name = info.path.basename();
            if layers.upper_has(name) {
                continue;
            }
            let in_new = new_lower.path_info(&info.path)?.is_some() && new_layers.lower_has(name);
            if in_new {
                plan.refreshed.push(info.path.clone());
            } else {
                affected.push((info.path.clone(), live.contains(&info.path), info.nar_size));
            }
        }
        let decided = self.policy_pivot(&affected);
        for (path, is_live, size) in affected {
            let mut action = if is_live { PivotAction::Copy } else { PivotAction::Drop };
            if let Some(d) = decided.as_ref().and_then(|m| m.get(&path)) {
                action = if d == "copy" { PivotAction::Copy } else { PivotAction::Drop };
            }
            if is_live && action == PivotAction::Drop {
                tracing::warn!("the pivot policy asked to drop live path '{}'; copying it instead", self.store_dir().display(&path));
                action = PivotAction::Copy;
            }
            plan.entries.push(PivotEntry { path, live: is_live, action, nar_size: size });
        }
        // A dropped row takes its referrers with it (they are dead too: a live referrer
        // would make it live), including upper ones.
        let graph = self.upper.db().load_graph()?;
        let mut dropped: HashSet<StorePath> = plan.drops().map(|e| e.path.clone()).collect();
        let mut stack: Vec<StorePath> = dropped.iter().cloned().collect();
        while let Some(p) = stack.pop() {
            let Some(&i) = graph.index.get(&p) else { continue };
            for &r in &graph.referrers[i as usize] {
                let rp = graph.paths[r as usize].clone();
                if !dropped.contains(&rp) && !live.contains(&rp) {
                    dropped.insert(rp.clone());
                    stack.push(rp.clone());
                    if let Some(e) = plan.entries.iter_mut().find(|e| e.path == rp) {
                        e.action = PivotAction::Drop;
                    } else {
                        plan.refreshed.retain(|x| x != &rp);
                        plan.entries.push(PivotEntry {
                            path: rp.clone(),
                            live: false,
                            action: PivotAction::Drop,
                            nar_size: graph.nar_size[r as usize],
                        });
                    }
                }
            }
        }
        plan.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(plan)
    }

    fn policy_pivot(&self, affected: &[(StorePath, bool, u64)]) -> Option<BTreeMap<StorePath, String>> {
        let list: Vec<(StorePath, bool)> = affected.iter().map(|(p, l, _)| (p.clone(), *l)).collect();
        self.policy.pivot(self, &list)
    }

    /// Carries out `plan`: afterwards the overlay is mounted on the new lower store and
    /// the database describes it. On failure before the commit the old mount is restored.
    pub fn pivot(&mut self, new_spec: &StoreSpec, plan: &PivotPlan) -> Result<()> {
        let new_plan = check_same_overlay(&self.plan, &self.upper.config().state, new_spec)?;
        if self.plan.workdir.is_none() {
            return Err(StoreError::Other("pivot moves the mount: the spec needs a [mount] table (with workdir)".into()));
        }
        let state = self.upper.config().state.clone();
        let mut notice = |m: &str| tracing::info!("{m}");
        let _gc = GcLock::acquire(&state, &mut notice)?;
        // The plan was made without the lock: a path that gained a root since must not go.
        let opts = GcOptions {
            action: GcAction::Collect,
            max_freed: None,
            dry_run: true,
            keep_derivations: new_spec.gc.keep_derivations,
            keep_outputs: new_spec.gc.keep_outputs,
        };
        let mut quiet = |_: &str| {};
        let live: HashSet<StorePath> =
            Collector { target: self as &mut dyn GcTarget, notice: &mut quiet }.run(&opts)?.live.into_iter().collect();
        if let Some(e) = plan.drops().find(|e| live.contains(&e.path)) {
            return Err(StoreError::Other(format!(
                "the pivot plan is out of date: '{}' became live since it was made; plan again",
                self.store_dir().display(&e.path)
            )));
        }
        // The journal is locked for the whole pivot, so another process opening the
        // store can tell a pivot in progress from an interrupted one.
        for dir in [&self.plan.lowerdir, &new_plan.lowerdir] {
            if dir.to_str().is_none_or(|s| s.contains('\n')) {
                return Err(StoreError::Other(format!(
                    "cannot pivot with the lower store directory '{}': the pivot journal needs paths that are UTF-8 without newlines",
                    dir.display()
                )));
            }
        }
        let journal = journal_path(&state);
        let journal_lock = FileLock::acquire_current(&journal, LockKind::Exclusive).map_err(io_err(&journal))?;
        if journal_lock.file().metadata().map_err(io_err(&journal))?.len() != 0 {
            return Err(StoreError::Other(format!(
                "the journal of an interrupted pivot is still there ('{}'): open the store with its spec first, which recovers it",
                journal.display()
            )));
        }
        let new_lower_spec = new_spec.lower_store.as_deref().expect("checked by mount_plan");
        let mut record = Journal {
            old_lowerdir: self.plan.lowerdir.clone(),
            new_lowerdir: new_plan.lowerdir.clone(),
            committing: false,
            aborted: false,
            new_lower_uri: new_lower_spec.to_uri(),
            drops: plan.drops().map(|e| e.path.clone()).collect(),
            refreshed: plan.refreshed.clone(),
        };
        // Written once and then only appended to (and fsynced each time), so a kill
        // mid-write leaves a journal whose cut-off tail tells what had not happened yet.
        let append_journal = |text: &str| -> Result<()> {
            use std::io::{Seek, Write};
            let mut f: &fs::File = journal_lock.file();
            f.seek(std::io::SeekFrom::End(0)).map_err(io_err(&journal))?;
            f.write_all(text.as_bytes()).map_err(io_err(&journal))?;
            f.sync_all().map_err(io_err(&journal))
        };
        journal_lock.file().set_len(0).map_err(io_err(&journal))?;
        append_journal(&record.render())?;

        // 1. Stage copies of the files only the old lower store has, checked against their rows.
        let staging = staging_dir(&self.upper_layer);
        let _ = remove_tree(&staging);
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let staged = (|| -> Result<Vec<StorePath>> {
            let mut staged = Vec::new();
            let progress = crate::progress::Task::new("pivot", "paths copied up")
                .with_total(plan.copies().count() as u64, plan.copies().map(|e| e.nar_size).sum());
            for e in plan.copies() {
                let src = self.plan.lowerdir.join(e.path.basename());
                let dst = staging.join(e.path.basename());
                let hashing = progress.writer(HashSink::new(HashAlgo::Sha256));
                let (hash, _) = tree::dump_copying(&src, &dst, hashing).map_err(io_err(&src))?.into_inner().finish();
                progress.advance(1, 0);
                let info = self.upper.db().path_info(&e.path)?.ok_or_else(|| StoreError::NotValid(self.store_dir().display(&e.path)))?;
                if hash != info.nar_hash {
                    return Err(StoreError::Other(format!(
                        "cannot copy '{}' up: its files in the old lower store do not match its recorded hash",
                        self.store_dir().display(&e.path)
                    )));
                }
                staged.push(e.path.clone());
            }
            Ok(staged)
        })();
        let staged = match staged {
            Ok(s) => s,
            Err(e) => {
                let _ = remove_tree(&staging);
                let _ = fs::remove_file(&journal);
                return Err(e);
            }
        };

        // 2. Swap the mounts, moving the copies into the upper layer while nothing is mounted.
        let old_plan = self.plan.clone();
        let swap = (|| -> Result<()> {
            old_plan.umount()?;
            for p in &staged {
                let to = self.upper_layer.join(p.basename());
                fs::rename(staging.join(p.basename()), &to).map_err(io_err(&to))?;
            }
            new_plan.mount()?;
            new_plan.check()?;
            Ok(())
        })();
        if let Err(e) = swap {
            let _ = new_plan.umount();
            for p in &staged {
                let _ = remove_tree(&self.upper_layer.join(p.basename()));
            }
            let _ = remove_tree(&staging);
            let back = old_plan.mount();
            let _ = fs::remove_file(&journal);
            return Err(StoreError::Other(format!(
                "pivot failed while moving the mount: {e}; {}",
                match back {
                    Ok(_) => "the old mount is back".to_string(),
                    Err(b) => format!("and the old mount could not be restored: {b}"),
                }
            )));
        }
        let _ = remove_tree(&staging);
        crate::store::kill_point::reached("pivot-swapped");

        // 3. The database, in one transaction: drop rows, refresh from the new lower store.
        //    Paths about to be dropped are held back on the GC socket first: a process
        //    that announced one since the liveness check keeps it (the pivot backs out),
        //    one announcing it from now on waits and then finds it gone.
        let announced = _gc.hold_back(plan.drops().map(|e| e.path.hash_part()));
        let new_lower = open_lower(new_lower_spec);
        let db_result = match (&new_lower, announced.first()) {
            (_, Some(hash)) => Err(StoreError::Other(format!(
                "a running process started using the path with hash '{hash}' during the pivot, and the plan drops it; plan again"
            ))),
            (Err(e), None) => Err(StoreError::Other(format!("cannot open the new lower store: {e}"))),
            (Ok(new_lower), None) => {
                // From here on the pivot rolls forward: the journal holds all the commit
                // needs, and committing again is harmless, so whether or not a kill lands
                // before the transaction commits, recovery finishes it the same way.
                record.committing = true;
                append_journal(COMMITTING).and_then(|_| {
                    crate::store::kill_point::reached("pivot-committing");
                    commit_database(&self.upper, new_lower.as_ref(), &record.drops, &record.refreshed)?;
                    crate::store::kill_point::reached("pivot-committed");
                    Ok(())
                })
            }
        };
        if let Err(e) = db_result {
            // Nothing committed (one transaction); say so durably before undoing, or a
            // kill while undoing would have recovery roll forward without the copies.
            if record.committing && append_journal(ABORTED).is_err() {
                return Err(StoreError::Other(format!(
                    "pivot failed updating the database (nothing committed): {e}; the journal could not be marked, so it stays for the next open to finish the pivot"
                )));
            }
            let _ = new_plan.umount();
            for p in &staged {
                let _ = remove_tree(&self.upper_layer.join(p.basename()));
            }
            let back = old_plan.mount();
            let _ = fs::remove_file(&journal);
            return Err(StoreError::Other(format!(
                "pivot failed updating the database (nothing committed): {e}; {}",
                if back.is_ok() { "the old mount is back" } else { "the old mount could not be restored" }
            )));
        }
        let _ = fs::remove_file(&journal);
        _gc.release();
        remove_dropped_files(&self.upper_layer, &new_plan.real, &record.drops);
        self.plan = new_plan;
        self.lower = new_lower.expect("checked above");
        Ok(())
    }

    /// After a pivot that died: one that died before committing is undone (the old mount
    /// put back), one that died while committing is finished (its database change
    /// redone from the journal, on the new mount). A pivot still running (its journal
    /// locked) is left alone.
    pub(crate) fn recover_pivot(spec: &StoreSpec, plan: &MountPlan, upper_layer: &Path) -> Result<()> {
        let state = &spec.state;
        let journal = journal_path(state);
        if !journal.exists() {
            return Ok(());
        }
        let Ok(Some(_held)) = FileLock::acquire(&journal, LockKind::Exclusive, false) else {
            return Ok(());
        };
        let text = fs::read_to_string(&journal).map_err(io_err(&journal))?;
        let Some(record) = Journal::parse(&text) else {
            // Cut off in its first write, before the pivot did anything.
            tracing::warn!("a pivot was interrupted before it started; nothing to undo");
            let _ = remove_tree(&staging_dir(upper_layer));
            fs::remove_file(&journal).map_err(io_err(&journal))?;
            return Ok(());
        };
        let (old, new) = (record.old_lowerdir.display(), record.new_lowerdir.display());
        if record.committing && !record.aborted {
            tracing::warn!("a pivot from '{old}' to '{new}' was interrupted while committing: finishing it");
            let _ = remove_tree(&staging_dir(upper_layer));
            let new_plan = MountPlan { lowerdir: record.new_lowerdir.clone(), lower_db: None, ..plan.clone() };
            if new_plan.state()? != crate::store::overlay::MountState::Correct {
                if let crate::store::overlay::MountState::Wrong { .. } = new_plan.state()? {
                    new_plan.umount()?;
                }
                new_plan.mount()?;
            }
            let lower_spec = StoreSpec::from_uri(&record.new_lower_uri).map_err(|e| {
                StoreError::Other(format!("the pivot journal '{}' names a new lower store that does not parse: {e}", journal.display()))
            })?;
            let new_lower = open_lower(&lower_spec)?;
            let mut config = LocalConfig::from_spec(spec);
            config.create_links_dir = false;
            let upper = LocalStore::open(config)?;
            commit_database(&upper, new_lower.as_ref(), &record.drops, &record.refreshed)?;
            drop(upper);
            fs::remove_file(&journal).map_err(io_err(&journal))?;
            remove_dropped_files(upper_layer, &plan.real, &record.drops);
            if plan.lowerdir != record.new_lowerdir {
                return Err(StoreError::Other(format!(
                    "the overlay was pivoted to the lower store '{new}' (an interrupted pivot has now been finished); \
                     use the spec that names that lower store"
                )));
            }
            return Ok(());
        }
        // Not committed: the database still describes the old lower store, so the old
        // mount goes back, whichever spec is opening.
        if plan.lowerdir != record.old_lowerdir && plan.lowerdir != record.new_lowerdir {
            return Err(StoreError::Other(format!(
                "a pivot from '{old}' to '{new}' was interrupted before it committed, and this spec names a third lower store \
                 ('{}'): open the store with the spec naming '{old}' to undo it",
                plan.lowerdir.display()
            )));
        }
        tracing::warn!("a pivot from '{old}' to '{new}' was interrupted before it committed: restoring the old mount");
        let _ = remove_tree(&staging_dir(upper_layer));
        let old_plan = MountPlan { lowerdir: record.old_lowerdir.clone(), lower_db: None, ..plan.clone() };
        if let crate::store::overlay::MountState::Wrong { .. } = old_plan.state()? {
            let wrong = MountPlan { lowerdir: record.new_lowerdir.clone(), lower_db: None, ..plan.clone() };
            wrong.umount()?;
        }
        if old_plan.workdir.is_some() && old_plan.state()? != crate::store::overlay::MountState::Correct {
            old_plan.mount()?;
        }
        fs::remove_file(&journal).map_err(io_err(&journal))?;
        if plan.lowerdir != record.old_lowerdir {
            return Err(StoreError::Other(format!(
                "the pivot to '{new}' was interrupted before it committed and has been undone: the overlay is on '{old}' again; \
                 use the spec naming that lower store, or run the pivot again"
            )));
        }
        Ok(())
    }
}

/// The line appended to the journal once the commit may begin.
const COMMITTING: &str = "committing\n";
/// Appended after `committing` when the commit failed (so nothing was committed) and
/// the pivot is being undone.
const ABORTED: &str = "aborted\n";

/// `${state}/pivot-in-progress`: the lower store directories and everything the commit
/// needs to be redone, ended by `end`; then, once the commit may begin, `committing`.
#[derive(Debug, PartialEq)]
struct Journal {
    old_lowerdir: PathBuf,
    new_lowerdir: PathBuf,
    committing: bool,
    aborted: bool,
    new_lower_uri: String,
    drops: Vec<StorePath>,
    refreshed: Vec<StorePath>,
}

impl Journal {
    fn render(&self) -> String {
        let mut out = format!(
            "{}\n{}\nlower-store {}\n",
            self.old_lowerdir.display(),
            self.new_lowerdir.display(),
            self.new_lower_uri.replace('\n', " ")
        );
        for p in &self.drops {
            out.push_str(&format!("drop {}\n", p.basename()));
        }
        for p in &self.refreshed {
            out.push_str(&format!("refresh {}\n", p.basename()));
        }
        out.push_str("end\n");
        if self.committing {
            out.push_str(COMMITTING);
        }
        if self.aborted {
            out.push_str(ABORTED);
        }
        out
    }

    /// `None` for a journal cut short (or garbled) before its `end`.
    fn parse(text: &str) -> Option<Journal> {
        let mut lines = text.split_inclusive('\n');
        let mut line = || lines.next().and_then(|l| l.strip_suffix('\n'));
        let old_lowerdir = PathBuf::from(line()?);
        let new_lowerdir = PathBuf::from(line()?);
        let new_lower_uri = line()?.strip_prefix("lower-store ")?.to_string();
        let (mut drops, mut refreshed) = (Vec::new(), Vec::new());
        loop {
            let entry = line()?;
            if entry == "end" {
                break;
            }
            let (kind, base) = entry.split_once(' ')?;
            let path = StorePath::from_basename(base).ok()?;
            match kind {
                "drop" => drops.push(path),
                "refresh" => refreshed.push(path),
                _ => return None,
            }
        }
        // Only a whole `committing` line counts: one cut short was never acted on.
        let committing = line() == Some("committing");
        let aborted = committing && line() == Some("aborted");
        Some(Journal { old_lowerdir, new_lowerdir, committing, aborted, new_lower_uri, drops, refreshed })
    }
}

/// The pivot's database change, in one transaction: drop `drops` (referrers first) and
/// register `refreshed` from the new lower store with what their closures lack. Running
/// it again after it committed changes nothing, which is what makes recovery simple.
fn commit_database(upper: &LocalStore, new_lower: &dyn Store, drops: &[StorePath], refreshed: &[StorePath]) -> Result<()> {
    let graph = upper.db().load_graph()?;
    let drop: HashSet<StorePath> = drops.iter().cloned().collect();
    let order: Vec<StorePath> = referrers_first(&graph, &drop);
    let mut regs = Vec::new();
    for p in refreshed {
        if let Some(info) = new_lower.path_info(p)? {
            let drv_outputs = if p.is_derivation() { new_lower.derivation_outputs(p)?.into_iter().collect() } else { Vec::new() };
            regs.push(Registration { info, drv_outputs });
        }
    }
    let refs: BTreeSet<StorePath> = regs.iter().flat_map(|r| r.info.references.iter().cloned()).collect();
    let db = upper.db();
    db.in_tx(|| {
        db.delete_paths(&order)?;
        let mut all = copy_up::lower_closure_registrations(upper, new_lower, refs)?;
        all.extend(regs);
        if !all.is_empty() {
            db.register(&all)?;
        }
        Ok(())
    })
}

/// Dropped rows' upper files are unclaimed after the commit: removed through the mount.
fn remove_dropped_files(upper_layer: &Path, real: &Path, drops: &[StorePath]) {
    for p in drops {
        if fs::symlink_metadata(upper_layer.join(p.basename())).is_ok() {
            let _ = remove_tree_counting(&real.join(p.basename()));
        }
    }
}

/// `set`'s paths ordered referrers first, so each deletion leaves no dangling reference.
fn referrers_first(g: &crate::store::local::db::Graph, set: &HashSet<StorePath>) -> Vec<StorePath> {
    let members: Vec<u32> = set.iter().filter_map(|p| g.index.get(p).copied()).collect();
    let mut out: Vec<StorePath> = g.referrers_first(&members).into_iter().map(|i| g.paths[i as usize].clone()).collect();
    // Paths the graph does not know have nothing to order against.
    let mut rest: Vec<StorePath> = set.iter().filter(|p| !g.index.contains_key(*p)).cloned().collect();
    rest.sort();
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> StorePath {
        StorePath::from_basename(&format!("{}-{name}", "0".repeat(32))).unwrap()
    }

    #[test]
    fn the_journal_round_trips_and_a_torn_one_is_refused() {
        let j = Journal {
            old_lowerdir: "/lower a/ünï".into(),
            new_lowerdir: "/lower b".into(),
            committing: true,
            aborted: false,
            new_lower_uri: "local?root=/lower%20b".into(),
            drops: vec![path("one"), path("two")],
            refreshed: vec![path("three")],
        };
        let text = j.render();
        assert_eq!(Journal::parse(&text), Some(j));
        let plan_end = text.find("end\n").unwrap() + 4;
        // Cut anywhere before the end marker: the first write never finished.
        for cut in (0..plan_end).filter(|&c| text.is_char_boundary(c)) {
            assert_eq!(Journal::parse(&text[..cut]), None, "cut at {cut}");
        }
        // An aborted commit (nothing committed, being undone) is told apart; a cut-off
        // `aborted` is not one.
        let aborted = Journal::parse(&format!("{text}aborted\n")).unwrap();
        assert!(aborted.committing && aborted.aborted);
        assert!(!Journal::parse(&format!("{text}abor")).unwrap().aborted);
        // Cut within the appended line: not committing yet.
        for cut in plan_end..text.len() {
            assert!(!Journal::parse(&text[..cut]).unwrap().committing, "cut at {cut}");
        }
    }
}
