//! Copy-up: duplicating lower metadata into the upper database, set at a time.
//!
//! Nix copies a lower closure one path per transaction; here the lower closure is read
//! with one recursive query, the derivation outputs of its `.drv`s in one snapshot, the
//! rows the upper database already has are skipped, and the rest is written in a single
//! transaction: the one the caller's registrations commit in.

use crate::format::StorePath;
use crate::store::local::{LocalStore, Registration};
use crate::store::{Result, Store};

/// Registers `batch` (which may be empty) in `upper` together with the lower closures of
/// `wanted` that `upper` lacks, in one transaction; returns how many lower rows it copied.
/// Fails with `NotValid` for a wanted path in neither layer.
pub fn register_with_lower_closures(
    upper: &LocalStore,
    lower: &dyn Store,
    wanted: impl IntoIterator<Item = StorePath>,
    batch: Vec<Registration>,
) -> Result<usize> {
    register_with_lower_closures_then(upper, lower, wanted, batch, || Ok(()))
}

/// As [`register_with_lower_closures`], running `then` in the same transaction after
/// the registrations (for rows that need them, such as realisations).
pub fn register_with_lower_closures_then(
    upper: &LocalStore,
    lower: &dyn Store,
    wanted: impl IntoIterator<Item = StorePath>,
    batch: Vec<Registration>,
    then: impl FnOnce() -> Result<()>,
) -> Result<usize> {
    upper.check_writable()?;
    // The lower store is read before the upper write lock is taken: a daemon lower
    // answers over a socket, and holding the lock meanwhile would stall every other
    // writer of the upper database (stock Nix, our GC).
    let mut regs = lower_closure_registrations(upper, lower, wanted)?;
    // Only big copy-ups take long enough to be worth reporting; reported outside the
    // write transaction, so a stalled stderr never holds the upper database's lock.
    let progress =
        (regs.len() >= PROGRESS_FROM).then(|| crate::progress::Task::new("copy-up", "lower rows copied").with_total(regs.len() as u64, 0));
    let db = upper.db();
    db.in_register_tx(|| {
        // Inside the transaction (no lock per query): skip rows another writer added
        // since.
        let paths: Vec<&StorePath> = regs.iter().map(|r| &r.info.path).collect();
        let present = db.valid_flags(&paths)?;
        let mut present = present.into_iter();
        regs.retain(|_| !present.next().unwrap_or(false));
        let copied = regs.len();
        regs.extend(batch);
        if !regs.is_empty() {
            upper.register(&regs)?;
        }
        then()?;
        Ok(copied)
    })
    .inspect(|&copied| {
        if let Some(p) = &progress {
            p.advance(copied as u64, 0);
        }
    })
}

/// The size of a copy-up (in rows) from which it reports progress.
const PROGRESS_FROM: usize = 1000;

/// The registrations that copy the closures of `wanted` from `lower` into `upper`,
/// leaving out what `upper` already has. Fails with `NotValid` for a path in neither.
pub fn lower_closure_registrations(
    upper: &LocalStore,
    lower: &dyn Store,
    wanted: impl IntoIterator<Item = StorePath>,
) -> Result<Vec<Registration>> {
    let db = upper.db();
    let wanted: Vec<StorePath> = wanted.into_iter().collect();
    let present = db.valid_flags(&wanted.iter().collect::<Vec<_>>())?;
    let missing: Vec<StorePath> = wanted.into_iter().zip(present).filter(|(_, p)| !p).map(|(w, _)| w).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let mut infos = lower.closure(&missing)?;
    let present = db.valid_flags(&infos.iter().map(|i| &i.path).collect::<Vec<_>>())?;
    let mut present = present.into_iter();
    infos.retain(|_| !present.next().unwrap_or(false));
    let drvs: Vec<StorePath> = infos.iter().filter(|i| i.path.is_derivation()).map(|i| i.path.clone()).collect();
    let mut outputs = lower.derivation_outputs_of(&drvs)?.into_iter();
    Ok(infos
        .into_iter()
        .map(|info| {
            let drv_outputs =
                if info.path.is_derivation() { outputs.next().map(|o| o.into_iter().collect()).unwrap_or_default() } else { Vec::new() };
            Registration { info, drv_outputs }
        })
        .collect())
}
