//! `doctor`: what a user runs when something is wrong. Each check says what it found and,
//! when it is not fine, what to do. Nothing is opened for writing and nothing changes, so
//! it also runs when the store itself would refuse to open (an unmounted overlay).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use overlay_store::spec::{StoreKind, StoreSpec};
use overlay_store::store::overlay::{self, MountState};
use serde_json::json;

use super::{CliError, CliResult};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    fix: Option<String>,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check { name, status, detail: detail.into(), fix }
}

/// How a spec file is named on a command line the user can paste.
fn spec_arg(spec: &StoreSpec) -> String {
    match spec.files.first() {
        Some(f) => format!("-c '{}'", f.display()),
        None => format!("--store '{}'", spec.to_uri()),
    }
}

pub fn doctor(spec: &StoreSpec, json_out: bool) -> CliResult {
    let mut checks = Vec::new();
    if spec.warnings().is_empty() {
        checks.push(check("spec", Status::Ok, "the spec is valid", None));
    } else {
        checks.push(check("spec", Status::Warn, spec.warnings().join("; "), Some("edit the spec as the warnings say".into())));
    }
    for (i, layer) in spec.layers().enumerate() {
        if layer.kind == StoreKind::Daemon {
            continue;
        }
        let db = layer.state.join("db/db.sqlite");
        let name = if i == 0 { "store" } else { "lower-store" };
        if !layer.real.is_dir() {
            checks.push(check(
                name,
                if i == 0 { Status::Warn } else { Status::Fail },
                format!("store directory '{}' does not exist", layer.real.display()),
                Some(format!("overlay-store {} init", spec_arg(spec))),
            ));
        } else if i > 0 && !db.is_file() {
            checks.push(check(
                name,
                Status::Fail,
                format!("no database at '{}': this is not a Nix store yet", db.display()),
                Some("fill the lower store first (nix copy, or overlay-store --store ... add/import)".into()),
            ));
        } else {
            checks.push(check(name, Status::Ok, format!("'{}'", layer.real.display()), None));
        }
    }
    if spec.kind == StoreKind::LocalOverlay {
        overlay_checks(spec, &mut checks);
    }
    temp_roots(spec, &mut checks);
    if let Some(policy) = &spec.policy {
        checks.push(policy_check(policy));
    }
    free_space(spec, &mut checks);

    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if json_out {
        let doc = json!({
            "ok": failed == 0,
            "checks": checks.iter().map(|c| json!({"name": c.name, "status": c.status.word().to_lowercase(), "detail": c.detail, "fix": c.fix})).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        for c in &checks {
            println!("{:<5} {}: {}", c.status.word(), c.name, c.detail);
            if let Some(fix) = &c.fix {
                if c.status != Status::Ok {
                    println!("      to fix: {fix}");
                }
            }
        }
    }
    if failed > 0 {
        if !json_out {
            tracing::error!("{failed} check(s) failed");
        }
        return Err(CliError::Reported);
    }
    Ok(())
}

fn overlay_checks(spec: &StoreSpec, checks: &mut Vec<Check>) {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        checks.push(check("kernel", Status::Ok, "OverlayFS is available", None));
    } else {
        checks.push(check(
            "kernel",
            Status::Fail,
            "this kernel has no OverlayFS (not in /proc/filesystems)",
            Some("modprobe overlay".into()),
        ));
    }
    if !nix::unistd::geteuid().is_root() {
        checks.push(check(
            "privileges",
            Status::Warn,
            "not running as root: mounting and writing the upper layer need root",
            Some("run as root (sudo)".into()),
        ));
    }
    let upper = spec.upper_layer.clone().unwrap_or_default();
    match std::fs::metadata(&upper) {
        Ok(m) if m.is_dir() => {
            let fs = nix::sys::statfs::statfs(&upper).map(|s| s.filesystem_type());
            if fs.is_ok_and(|t| t == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC) {
                checks.push(check(
                    "upper-layer",
                    Status::Fail,
                    format!("'{}' is itself on OverlayFS, which cannot be an upper layer", upper.display()),
                    Some("put the upper layer on a plain file system (ext4, xfs, tmpfs, btrfs)".into()),
                ));
            } else {
                checks.push(check("upper-layer", Status::Ok, format!("'{}'", upper.display()), None));
            }
            if let Some(work) = spec.mount.as_ref().map(|m| m.workdir.clone()) {
                match std::fs::metadata(&work) {
                    Ok(w) if w.dev() != m.dev() => checks.push(check(
                        "workdir",
                        Status::Fail,
                        format!("'{}' is on another file system than the upper layer", work.display()),
                        Some("choose a [mount] workdir next to the upper layer".into()),
                    )),
                    Ok(_) => checks.push(check("workdir", Status::Ok, format!("'{}'", work.display()), None)),
                    Err(_) => checks.push(check(
                        "workdir",
                        Status::Warn,
                        format!("'{}' does not exist yet", work.display()),
                        Some(format!("overlay-store {} init", spec_arg(spec))),
                    )),
                }
            }
        }
        _ => checks.push(check(
            "upper-layer",
            Status::Fail,
            format!("'{}' is not a directory", upper.display()),
            Some(format!("overlay-store {} init", spec_arg(spec))),
        )),
    }
    match overlay::mount_plan(spec) {
        Err(e) => checks.push(check("mount", Status::Fail, e.to_string(), None)),
        Ok(plan) => match plan.state() {
            Ok(MountState::Correct) => checks.push(check("mount", Status::Ok, plan.expected_text(), None)),
            Ok(MountState::NotMounted) => {
                let fix = if spec.mount.is_some() { format!("overlay-store {} mount", spec_arg(spec)) } else { plan.command() };
                checks.push(check("mount", Status::Fail, format!("'{}' is not mounted", plan.real.display()), Some(fix)));
            }
            Ok(MountState::Wrong { actual }) => checks.push(check(
                "mount",
                Status::Fail,
                format!("'{}' is mounted as {actual}; expected {}", plan.real.display(), plan.expected_text()),
                Some(format!("umount '{}' && {}", plan.real.display(), plan.command())),
            )),
            Err(e) => checks.push(check("mount", Status::Fail, e.to_string(), None)),
        },
    }
}

/// Temp-root files of processes that are gone: harmless, but a sign of a crash.
fn temp_roots(spec: &StoreSpec, checks: &mut Vec<Check>) {
    let dir = spec.state.join("temproots");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    let stale: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.parse::<u32>().is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()))
        .collect();
    if stale.is_empty() {
        checks.push(check("temp-roots", Status::Ok, "no stale temporary roots", None));
    } else {
        checks.push(check(
            "temp-roots",
            Status::Warn,
            format!("{} temporary-root file(s) of processes that are gone in '{}' (pids {})", stale.len(), dir.display(), stale.join(", ")),
            Some(format!("overlay-store {} gc (it removes them)", spec_arg(spec))),
        ));
    }
}

/// A policy others can edit runs their code in our process.
fn policy_check(policy: &Path) -> Check {
    match std::fs::metadata(policy) {
        Err(e) => check("policy", Status::Fail, format!("'{}': {e}", policy.display()), Some("fix the `policy` key of the spec".into())),
        Ok(m) => {
            let me = nix::unistd::geteuid().as_raw();
            if m.mode() & 0o022 != 0 {
                check(
                    "policy",
                    Status::Fail,
                    format!("'{}' is writable by group or others (mode {:o})", policy.display(), m.mode() & 0o7777),
                    Some(format!("chmod go-w '{}'", policy.display())),
                )
            } else if m.uid() != me && m.uid() != 0 {
                check(
                    "policy",
                    Status::Warn,
                    format!("'{}' belongs to uid {}, neither you nor root", policy.display(), m.uid()),
                    Some(format!("chown {me} '{}'", policy.display())),
                )
            } else {
                check("policy", Status::Ok, format!("'{}'", policy.display()), None)
            }
        }
    }
}

fn free_space(spec: &StoreSpec, checks: &mut Vec<Check>) {
    let where_ = spec.upper_layer.clone().unwrap_or_else(|| spec.real.clone());
    let Some(existing) = where_.ancestors().find(|p| p.exists()) else { return };
    let Ok(st) = nix::sys::statvfs::statvfs(existing) else { return };
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    let total = st.blocks() as u64 * st.fragment_size() as u64;
    let mib = free >> 20;
    if free < (256 << 20) || (total > 0 && free * 100 < total) {
        checks.push(check(
            "free-space",
            Status::Warn,
            format!("{mib} MiB free under '{}'", existing.display()),
            Some(format!("free space, or run overlay-store {} gc", spec_arg(spec))),
        ));
    } else {
        checks.push(check("free-space", Status::Ok, format!("{mib} MiB free under '{}'", existing.display()), None));
    }
}
