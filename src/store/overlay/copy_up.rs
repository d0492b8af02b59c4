//! Copy-up: duplicating lower metadata into the upper database, set at a time.
//!
//! Nix copies a lower closure one path per transaction; here the lower closure is read
//! with one recursive query, the rows the upper database already has are skipped, and
//! the rest is written in the caller's single transaction.

use crate::format::StorePath;
use crate::store::local::{LocalStore, Registration};
use crate::store::{Result, Store};

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
    let mut regs = Vec::new();
    for info in lower.closure(&missing)? {
        if db.is_valid(&info.path)? {
            continue;
        }
        let drv_outputs = if info.path.is_derivation() { lower.derivation_outputs(&info.path)?.into_iter().collect() } else { Vec::new() };
        regs.push(Registration { info, drv_outputs });
    }
    Ok(regs)
}
