//! `pivot --to SPEC`: plan (and with `--dry-run` only print) or carry out a pivot.

use std::io::Write;

use overlay_store::spec::StoreSpec;
use overlay_store::store::overlay::OverlayStore;
use overlay_store::store::Store;

use super::{out_err, stdout, CliResult};

pub fn pivot(store: &mut OverlayStore, spec: &StoreSpec, new_spec: &StoreSpec, dry_run: bool, json: bool) -> CliResult {
    let plan = store.plan_pivot(new_spec, spec.gc.keep_derivations, spec.gc.keep_outputs)?;
    let sd = store.store_dir().clone();
    let copy_bytes: u64 = plan.copies().map(|e| e.nar_size).sum();
    let summary = format!(
        "{} paths to copy up ({:.2} MiB), {} to drop, {} refreshed from the new lower store",
        plan.copies().count(),
        copy_bytes as f64 / 1048576.0,
        plan.drops().count(),
        plan.refreshed.len()
    );
    let mut out = stdout();
    if json {
        let v = serde_json::json!({
            "dryRun": dry_run,
            "from": plan.old_lowerdir,
            "to": plan.new_lowerdir,
            "copy": plan.copies().map(|e| sd.display(&e.path)).collect::<Vec<_>>(),
            "drop": plan.drops().map(|e| sd.display(&e.path)).collect::<Vec<_>>(),
            "refreshed": plan.refreshed.iter().map(|p| sd.display(p)).collect::<Vec<_>>(),
            "copyBytes": copy_bytes,
        });
        writeln!(out, "{v}").map_err(out_err)?;
    } else if dry_run {
        for e in &plan.entries {
            writeln!(out, "{} {}", e.action.as_str(), sd.display(&e.path)).map_err(out_err)?;
        }
        writeln!(out, "{summary}").map_err(out_err)?;
    }
    out.flush().map_err(out_err)?;
    if dry_run {
        return Ok(());
    }
    store.pivot(new_spec, &plan)?;
    tracing::info!("pivoted to '{}': {summary}", plan.new_lowerdir.display());
    Ok(())
}
