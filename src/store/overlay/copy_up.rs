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
    upper.check_writable()?;
    // The existence checks run inside the write transaction: no lock per query, and no
    // other writer can add a row between the check and the insert.
    upper.db().in_register_tx(|| {
        let mut all = lower_closure_registrations(upper, lower, wanted)?;
        let copied = all.len();
        all.extend(batch);
        if !all.is_empty() {
            upper.register(&all)?;
        }
        Ok(copied)
    })
}

/// The registrations that copy the closures of `wanted` from `lower` into `upper`,
/// leaving out what `upper` already has. Fails with `NotValid` for a path in neither.
pub fn lower_closure_registrations(
    upper: &LocalStore,
    lower: &dyn Store,
    wanted: impl IntoIterator<Item = StorePath>,
) -> Result<Vec<Registration>> {
    let db = upper.db();
    let mut missing = Vec::new();
    for p in wanted {
        if !db.is_valid(&p)? {
            missing.push(p);
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let mut infos = lower.closure(&missing)?;
    let mut keep = Vec::with_capacity(infos.len());
    for info in &infos {
        keep.push(!db.is_valid(&info.path)?);
    }
    let mut k = keep.into_iter();
    infos.retain(|_| k.next().unwrap_or(false));
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
