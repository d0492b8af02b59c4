//! `policy check FILE`: load a policy in the sandbox and run each hook it defines on
//! sample data (a small closure, half of it lower), touching nothing.

use std::path::Path;

use crate::policy::host::SampleHost;
use crate::policy::{HookError, LuaPolicy, PolicyHost, HOOKS};
use crate::spec::{PolicyLimits, StoreSpec};
use crate::store::gc::DeadPath;
use crate::store::overlay::CopyUpReason;

/// What the dry run of one hook did.
#[derive(Debug)]
pub struct HookResult {
    pub hook: &'static str,
    pub outcome: Result<String, HookError>,
}

/// Loads `file` (errors: `Err(message)` with `file:line`), then dry-runs its hooks.
pub fn check(file: &Path, limits: &PolicyLimits) -> Result<Vec<HookResult>, String> {
    let sample_spec = StoreSpec::from_toml_str(
        "type = \"local-overlay\"\nroot = \"/mnt/sample/merged\"\nupper-layer = \"/mnt/sample/upper\"\nlower-store = \"/mnt/sample/lower\"\n",
        Path::new("/sample/store.toml"),
    )
    .map_err(|e| e.to_string())?;
    let policy = LuaPolicy::load(file, limits, Some(&sample_spec)).map_err(|e| e.to_string())?;
    let host = SampleHost::new();
    let mut results = Vec::new();
    for (hook, _) in HOOKS {
        if !policy.has_hook(hook) {
            continue;
        }
        let outcome = match *hook {
            "copy_up" => {
                let (info, _) = &host.infos[0];
                policy
                    .hook_copy_up(&host, info, CopyUpReason::Query)
                    .map(|b| format!("copy_up({}, \"query\") = {}", host.display(&info.path), b.unwrap_or(true)))
            }
            "gc_roots" => policy.hook_gc_roots(&host).map(|v| format!("gc_roots() = {} roots", v.unwrap_or_default().len())),
            "gc" => {
                let dead: Vec<DeadPath> = host
                    .infos
                    .iter()
                    .map(|(i, _)| DeadPath {
                        path: i.path.clone(),
                        nar_size: i.nar_size,
                        registration_time: i.registration_time,
                        deriver: i.deriver.clone(),
                        references: i.references.iter().cloned().collect(),
                    })
                    .collect();
                let in_lower: Vec<bool> = host.infos.iter().map(|(_, l)| *l).collect();
                policy.hook_gc(&host, &dead, &in_lower).map(|c| {
                    let c = c.unwrap_or_default();
                    let names: Vec<String> = c.delete.iter().map(|p| p.name().to_string()).collect();
                    format!("gc({} candidates) deletes {} [{}]", dead.len(), c.delete.len(), names.join(", "))
                })
            }
            "remount" => policy
                .hook_remount(&host, "/mnt/sample/merged/nix/store", "check")
                .map(|h| format!("remount(ctx) handled = {}", h.unwrap_or(false))),
            "on_reload" => {
                policy.on_reload(&host, &sample_spec, &sample_spec);
                match policy.failures.borrow().last() {
                    Some(f) if f.hook == "on_reload" => Err(HookError { hook: "on_reload".into(), message: f.message.clone() }),
                    _ => Ok("on_reload(old, new) ran".into()),
                }
            }
            "pivot" => {
                let plan: Vec<_> = host.infos.iter().map(|(i, l)| (i.path.clone(), !*l)).collect();
                let r = policy.pivot(&host, &plan);
                match (r, policy.failures.borrow().last()) {
                    (None, Some(f)) if f.hook == "pivot" => Err(HookError { hook: "pivot".into(), message: f.message.clone() }),
                    (r, _) => Ok(format!("pivot(plan) decided {} paths", r.map(|m| m.len()).unwrap_or(0))),
                }
            }
            _ => continue,
        };
        results.push(HookResult { hook, outcome });
    }
    Ok(results)
}
