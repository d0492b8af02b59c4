//! What the report headers of both benches say about the machine and the build: CPU,
//! cores, memory, kernel, compiler, commit, and how the kernel reclaims memory.

use std::path::Path;
use std::process::Command;

/// A command's trimmed stdout, if it ran and succeeded.
pub fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A DAMON scheme that pages out idle memory (page cache included) makes "warm cache"
/// last only so long; worth knowing when reading I/O numbers.
fn damon_pageout() -> Option<String> {
    let k = "/sys/kernel/mm/damon/admin/kdamonds/0";
    if read(&format!("{k}/state")).trim() != "on" {
        return None;
    }
    let c = format!("{k}/contexts/0");
    if read(&format!("{c}/schemes/0/action")).trim() != "pageout" {
        return None;
    }
    let aggr_us: f64 = read(&format!("{c}/monitoring_attrs/intervals/aggr_us")).trim().parse().ok()?;
    let age: f64 = read(&format!("{c}/schemes/0/access_pattern/age/min")).trim().parse().ok()?;
    Some(format!("DAMON pages out memory idle for about {:.0} s or more (page cache too)", aggr_us * age / 1e6))
}

/// The machine and build facts, in report order; `scratch` describes where the stores
/// were (it goes after the kernel) and `repo` is the checkout whose commit is reported.
pub fn facts(scratch: String, repo: &Path) -> Vec<(String, String)> {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?").trim();
    let sha_ni = cpuinfo.lines().find(|l| l.starts_with("flags")).is_some_and(|l| l.split_whitespace().any(|f| f == "sha_ni"));
    let mem_kb: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let repo = repo.to_string_lossy();
    let commit = sh("git", &["-C", &repo, "rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".into());
    let dirty = sh("git", &["-C", &repo, "status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let mut facts = vec![
        ("CPU".to_string(), format!("{cpu}{}", if sha_ni { " (SHA-NI)" } else { "" })),
        ("cores (nproc)".into(), nproc.to_string()),
        ("memory".into(), format!("{:.1} GiB", mem_kb as f64 / (1024.0 * 1024.0))),
        ("kernel".into(), read("/proc/sys/kernel/osrelease").trim().to_string()),
        ("scratch file system".into(), scratch),
        ("rustc".into(), sh("rustc", &["--version"]).unwrap_or_else(|| "?".into())),
        ("overlay-store".into(), format!("commit {commit}{}, release profile", if dirty { " + uncommitted changes" } else { "" })),
    ];
    if let Some(d) = damon_pageout() {
        facts.push(("memory reclaim".into(), d));
    }
    facts
}
