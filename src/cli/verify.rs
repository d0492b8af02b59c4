//! `verify [--check-contents] [--repair --repair-from SPEC]`.

use std::path::PathBuf;

use overlay_store::spec::StoreSpec;
use overlay_store::store::gc::RealDirRemover;
use overlay_store::store::local::verify::{Fix, Verifier};
use overlay_store::store::overlay;
use overlay_store::store::repair::{self, RepairSource};
use overlay_store::store::{Opened, Store};

use super::{CliError, CliResult};

/// Opens what `--repair-from` names: an export file, or a store (read-only).
fn repair_source(arg: &str) -> CliResult<Result<Box<dyn Store>, PathBuf>> {
    let p = std::path::Path::new(arg);
    if p.is_file() && !arg.ends_with(".toml") {
        return Ok(Err(p.to_path_buf()));
    }
    let spec = StoreSpec::parse_arg(arg)?;
    Ok(Ok(overlay::open_lower(&spec)?))
}

pub fn verify(opened: &mut Opened, check_contents: bool, repair_from: Option<&str>) -> CliResult {
    if let Some(from) = repair_from {
        let (modified, missing) = {
            let store = opened.registry();
            let infos = store.db().all_infos()?;
            let mut quiet = |_: &str| {};
            let (report, _) = Verifier { store: &*store, check_contents, notice: &mut quiet }.run(infos, None)?;
            (report.modified, report.missing_with_referrers)
        };
        let broken: std::collections::BTreeSet<_> = modified.into_iter().chain(missing).collect();
        if !broken.is_empty() {
            let source = repair_source(from)?;
            let src = match &source {
                Ok(s) => RepairSource::Store(s.as_ref()),
                Err(f) => RepairSource::ExportFile(f.clone()),
            };
            let report = match opened {
                Opened::Local(s) => {
                    let remover = RealDirRemover { real: s.config().real.clone() };
                    repair::repair(s, &remover, None, &src, &broken)?
                }
                Opened::Overlay(o) => {
                    let remover = o.remover();
                    let lower_real = o.plan().lowerdir.clone();
                    let upper_layer = o.upper_layer().to_path_buf();
                    let note_bypass = || remover.note_bypass();
                    let lower = repair::LowerLayer { lower_real: &lower_real, upper_layer: &upper_layer, note_bypass: &note_bypass };
                    let r = repair::repair(o.upper(), &remover, Some(&lower), &src, &broken)?;
                    if r.bypassed_mount {
                        o.remount("repair")?;
                    }
                    r
                }
            };
            let sd = opened.store().store_dir().clone();
            for p in &report.repaired {
                tracing::info!("repaired path '{}'", sd.display(p));
            }
            for (p, why) in &report.failed {
                tracing::warn!("cannot repair path '{}': {why}", sd.display(p));
            }
        }
    }
    // On an overlay that is not mounted every path looks gone (check-mount = false, or
    // an umount racing us): forgetting them would empty the upper database. Nix would.
    let merged = match opened {
        Opened::Overlay(o) => Some(o.plan().real.clone()),
        Opened::Local(_) => None,
    };
    let not_mounted = |real: &std::path::Path| {
        CliError::Failed(format!(
            "overlay filesystem '{}' is not mounted: verify forgot nothing (mount it with `overlay-store mount`, then verify again)",
            real.display()
        ))
    };
    if let Some(real) = merged.as_deref().filter(|r| !overlay::mount::is_overlayfs(r)) {
        return Err(not_mounted(real));
    }
    let store = opened.registry();
    let infos = store.db().all_infos()?;
    let links = store.config().real.join(".links");
    let mut notice = |m: &str| tracing::info!("{m}");
    let (report, fixes) = Verifier { store: &*store, check_contents, notice: &mut notice }.run(infos, Some(&links))?;
    let forget: Vec<_> = fixes.iter().filter_map(|f| if let Fix::Forget(p) = f { Some(p.clone()) } else { None }).collect();
    if !forget.is_empty() {
        if let Some(real) = merged.as_deref().filter(|r| !overlay::mount::is_overlayfs(r)) {
            return Err(not_mounted(real));
        }
        store.db().delete_paths(&forget)?;
    }
    for f in &fixes {
        match f {
            Fix::SetHash(p, h) => store.db().fix_hash_and_size(p, Some(h), None)?,
            Fix::SetSize(p, n) => store.db().fix_hash_and_size(p, None, Some(*n))?,
            Fix::Forget(_) => {}
        }
    }
    if report.errors > 0 {
        tracing::warn!("not all store errors were fixed");
        return Err(CliError::Reported);
    }
    Ok(())
}
