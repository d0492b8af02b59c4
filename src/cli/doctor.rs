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
    fn max_with(self, other: Status) -> Status {
        let rank = |s| match s {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }

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
    lock_files(spec, &mut checks);
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
            Ok(MountState::Correct) => {
                checks.push(check("mount", Status::Ok, plan.expected_text(), None));
                checks.push(lower_unchanged(spec, &plan));
            }
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

/// The lower store must not change under a live mount (see `lower_stamp`).
fn lower_unchanged(spec: &StoreSpec, plan: &overlay::MountPlan) -> Check {
    use overlay_store::store::overlay::lower_stamp::{self, StampCheck};
    let file = lower_stamp::stamp_path(&spec.state);
    let when = |secs: u64| {
        let ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()).saturating_sub(secs);
        format!("{}h{:02}m ago", ago / 3600, ago / 60 % 60)
    };
    match lower_stamp::check(&file, &plan.real) {
        StampCheck::Unrecorded => check(
            "lower-unchanged",
            Status::Ok,
            "no record of the lower store from when this mount was made (it was mounted by something other than `overlay-store mount`, or before it kept one), so changes since cannot be told",
            None,
        ),
        StampCheck::Unchanged { mounted_at } => {
            check("lower-unchanged", Status::Ok, format!("the lower store is as it was at mount time ({})", when(mounted_at)), None)
        }
        StampCheck::Changed { mounted_at, what } => check(
            "lower-unchanged",
            Status::Fail,
            format!(
                "the lower store changed under the live overlay (mounted {}): {}; OverlayFS may show stale or missing entries until it is mounted again",
                when(mounted_at),
                what.join("; ")
            ),
            Some(format!("overlay-store {0} umount && overlay-store {0} mount", spec_arg(spec))),
        ),
    }
}

/// Who holds the store's lock files (from `/proc/locks`, without taking any), and
/// whether this user can open them at all.
fn lock_files(spec: &StoreSpec, checks: &mut Vec<Check>) {
    let files =
        [spec.state.join("db/big-lock"), spec.state.join("gc.lock"), overlay_store::store::overlay::pivot::journal_path(&spec.state)];
    let held = proc_locks();
    let mut notes = Vec::new();
    let mut status = Status::Ok;
    let mut fix = None;
    for f in files.iter().filter(|f| f.exists()) {
        if nix::unistd::access(f, nix::unistd::AccessFlags::W_OK).is_err() {
            status = Status::Fail;
            notes.push(format!("'{}' is not writable by this user, so commands that lock it fail", f.display()));
            fix = Some("run as the store's owner (usually root)".to_string());
            continue;
        }
        let Ok(m) = std::fs::metadata(f) else { continue };
        for (pid, write) in held.iter().filter(|l| l.dev == m.dev() && l.ino == m.ino()).map(|l| (l.pid, l.write)) {
            if pid == std::process::id() {
                continue;
            }
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let who = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            let who = if who.is_empty() { format!("pid {pid}") } else { format!("pid {pid} ({who})") };
            match (name.as_str(), write) {
                (_, false) => notes.push(format!("{name} shared by {who}")),
                ("gc.lock", true) => {
                    status = status.max_with(Status::Warn);
                    notes.push(format!("gc.lock held by {who}: a garbage collection (or optimise) is running; other GCs wait for it"));
                }
                (_, true) => {
                    status = status.max_with(Status::Warn);
                    notes.push(format!("{name} held exclusively by {who}: writers wait until it finishes"));
                }
            }
        }
    }
    let journal = overlay_store::store::overlay::pivot::journal_path(&spec.state);
    let journal_held =
        std::fs::metadata(&journal).is_ok_and(|m| held.iter().any(|l| l.dev == m.dev() && l.ino == m.ino() && l.pid != std::process::id()));
    if std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0) && !journal_held {
        status = Status::Fail;
        notes.push(format!("the journal of an interrupted pivot is in '{}'", journal.display()));
        fix = Some(format!("overlay-store {} verify (opening the store finishes or undoes the pivot)", spec_arg(spec)));
    }
    let marker = overlay_store::store::overlay::delete::remount_marker(&spec.state);
    if marker.exists() {
        status = status.max_with(Status::Warn);
        notes.push("the upper layer was changed directly and the overlay not remounted since".into());
        fix.get_or_insert(format!("overlay-store {} remount", spec_arg(spec)));
    }
    let detail = if notes.is_empty() { "no lock is held".to_string() } else { notes.join("; ") };
    checks.push(check("locks", status, detail, fix));
}

struct HeldLock {
    pid: u32,
    write: bool,
    dev: u64,
    ino: u64,
}

/// `/proc/locks`: `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF` (device in hex).
fn proc_locks() -> Vec<HeldLock> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            // `N: -> FLOCK …` lines are requests waiting for the lock, not holders.
            if line.contains("->") {
                return None;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let (write, pid, id) = (f.get(3)? == &"WRITE", f.get(4)?.parse().ok()?, f.get(5)?);
            let mut parts = id.split(':');
            let major = u64::from_str_radix(parts.next()?, 16).ok()?;
            let minor = u64::from_str_radix(parts.next()?, 16).ok()?;
            let ino = parts.next()?.parse().ok()?;
            Some(HeldLock { pid, write, dev: nix::sys::stat::makedev(major, minor), ino })
        })
        .collect()
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
