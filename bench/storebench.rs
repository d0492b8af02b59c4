//! `cargo bench --bench storebench`: generates realistic stores with our own library,
//! times `overlay-store` and Nix on the same stores, side by side in one run, as whole
//! processes (median of several runs), and writes `BENCHMARKS.md`.
//!
//! Environment:
//!
//! - `STOREBENCH_QUICK=1`: small sizes and few runs, a smoke test of a minute or two;
//!   the report goes to `<target>/release/storebench-quick.md`, not `BENCHMARKS.md`.
//! - `STOREBENCH_DIR=DIR`: where scratch stores go (default: the system temp dir).
//! - `STOREBENCH_KEEP=1`: leave the scratch stores behind.
//! - `STOREBENCH_OUT=FILE`: where the report goes.
//! - `STOREBENCH_BIN=FILE`: the `overlay-store` binary to time (default: the one cargo
//!   built for this bench, in the bench profile, which is the release profile).
//! - `STOREBENCH_NO_NIX=1`: time ours only, as if Nix were not installed.
//! - `STOREBENCH_QUIET_WAIT=SECONDS`: before each benchmark, wait until the rest of the
//!   machine is quiet (other load under 0.2 cores), at most this long over the whole run
//!   (default 180; 0 never waits).
//! - `STOREBENCH_ONLY=queries,verify,add`: run only some parts; the report then goes to
//!   `<target>/release/storebench-partial.md`.
//! - `STOREBENCH_SIZES=10000,100000,1000000`: the graph stores' sizes (default those;
//!   quick: 2000,20000). The 1M store takes about 10 GB of disk (4 KiB blocks, 3M
//!   inodes) and five minutes to make, and as long again to remove.
//! - Peak RSS is measured by GNU time (`/usr/bin/time`, Debian's `time`); without it the
//!   column says n/a.
//!
//! Only a full run of every part rewrites `BENCHMARKS.md`; a hand-written section after
//! its marker line is carried over.
//!
//! Nix runs as `nix-store --store local?root=ROOT …` (and `nix path-info` for the JSON
//! comparison) with `build-users-group` empty, `nix-command` enabled and `HOME` in the
//! scratch directory. When Nix is missing, its columns say "n/a".

// The crate root is bench/storebench.rs, so its modules live beside it unless told.
#[allow(dead_code)]
#[path = "common/canonical.rs"]
mod canonical;
#[path = "storebench/gen.rs"]
mod gen;
#[path = "common/import_stream.rs"]
mod import_stream;
#[path = "common/machine.rs"]
mod machine;
#[path = "common/measure.rs"]
mod measure;
#[path = "common/nix_tools.rs"]
mod nix_tools;
#[path = "storebench/report.rs"]
mod report;
#[path = "storebench/run.rs"]
mod run;

use std::cell::Cell;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::canonical::remove_tree;
use overlay_store::store::local::LocalStore;
use overlay_store::store::Store;

use gen::{Generated, GraphShape};
use nix_tools::env_flag;
use report::{Bench, Flat, Report, Target};
use run::{interleaved, CpuMeter, Invocation, Side};

/// Everything that differs between a full and a quick run.
struct Plan {
    quick: bool,
    /// The graph stores, smallest first (the same system closure in each); the targets
    /// apply on the largest.
    stores: Vec<GraphShape>,
    verify_paths: usize,
    verify_bytes: u64,
    tree_files: usize,
    tree_bytes: u64,
    big_file: u64,
    query_runs: usize,
    startup_runs: usize,
    io_runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        const MIB: u64 = 1 << 20;
        let shape = |total: usize| {
            let (base, system, chain, libmid) = if quick { (300, 1_500, 200, 100) } else { (1_500, 8_000, 1_000, 200) };
            GraphShape {
                total,
                base,
                system,
                system_chain: chain,
                rest_chain: (total / 100).max(50),
                libmid_referrers: libmid,
                seed: 0x5702_EBE7,
            }
        };
        let sizes: Vec<usize> = match std::env::var("STOREBENCH_SIZES") {
            Ok(v) if !v.trim().is_empty() => {
                v.split(',').map(|s| s.trim().parse().expect("STOREBENCH_SIZES: a comma-separated list of path counts")).collect()
            }
            _ if quick => vec![2_000, 20_000],
            _ => vec![10_000, 100_000, 1_000_000],
        };
        let mut stores: Vec<GraphShape> = sizes.into_iter().map(shape).collect();
        stores.sort_by_key(|s| s.total);
        if quick {
            Plan {
                quick,
                stores,
                verify_paths: 300,
                verify_bytes: 128 * MIB,
                tree_files: 500,
                tree_bytes: 10 * MIB,
                big_file: 128 * MIB,
                query_runs: 5,
                startup_runs: 11,
                io_runs: 3,
            }
        } else {
            Plan {
                quick,
                stores,
                verify_paths: 1_500,
                verify_bytes: 1024 * MIB,
                tree_files: 5_000,
                tree_bytes: 100 * MIB,
                big_file: 1024 * MIB,
                query_runs: 9,
                startup_runs: 31,
                io_runs: 5,
            }
        }
    }
}

/// The scratch directory; removed (store modes and all) when dropped unless kept.
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    /// Removes a store or tree that is no longer needed, unless everything is kept.
    fn tidy(&self, path: &Path) {
        if !self.keep {
            if let Err(e) = remove_tree(path) {
                eprintln!("storebench: could not remove {}: {e}", path.display());
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("storebench: keeping {}", self.dir.display());
        } else if let Err(e) = remove_tree(&self.dir) {
            eprintln!("storebench: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// Nix's programs and the environment they run in.
struct Nix {
    nix_store: PathBuf,
    nix: PathBuf,
    version: String,
    env: Vec<(OsString, OsString)>,
}

impl Nix {
    fn detect(home: &Path) -> Option<Nix> {
        let (nix_store, version) = nix_tools::find_nix_store("STOREBENCH_NO_NIX")?;
        let nix = nix_tools::find_program("nix")?;
        Some(Nix { nix_store, nix, version, env: nix_tools::environment(home) })
    }

    fn with_env(&self, mut inv: Invocation) -> Invocation {
        inv.env.extend(self.env.iter().cloned());
        inv
    }

    /// `nix-store --store local?root=ROOT ARGS…`
    fn store_cmd(&self, root: &Path, args: &[&str]) -> Invocation {
        self.with_env(Invocation::new(&self.nix_store).arg("--store").arg(uri(root)).args(args.iter().copied()))
    }

    /// `nix SUBCOMMAND --store local?root=ROOT ARGS…`
    fn nix_cmd(&self, sub: &str, root: &Path, args: &[&str]) -> Invocation {
        self.with_env(Invocation::new(&self.nix).arg(sub).arg("--store").arg(uri(root)).args(args.iter().copied()))
    }
}

fn uri(root: &Path) -> String {
    format!("local?root={}", root.display())
}

/// `overlay-store --store local?root=ROOT ARGS…`
fn ours_cmd(bin: &Path, root: &Path, args: &[&str]) -> Invocation {
    Invocation::new(bin).arg("--store").arg(uri(root)).args(args.iter().copied())
}

fn log(start: Instant, msg: &str) {
    eprintln!("[{:7.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// What a query must print, to check both programs answer the same before timing them.
#[derive(Clone, Copy)]
enum Expect {
    /// This many lines, and the same set of lines from both.
    Lines(usize),
    /// JSON with this many path entries (ours: an object keyed by path; Nix 2.8: an array).
    JsonPaths(usize),
    /// Both print the same text.
    Same,
    /// Both succeed.
    Any,
}

/// One untimed run of each side, checking their answers; problems become notes.
fn check_outputs(ours: &Invocation, nix: Option<&Invocation>, expect: Expect) -> Vec<String> {
    let mut notes = Vec::new();
    let o = match ours.output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(e) => return vec![format!("ours failed: {e}")],
    };
    let n = match nix.map(Invocation::output) {
        None => None,
        Some(Ok(o)) => Some(String::from_utf8_lossy(&o.stdout).to_string()),
        Some(Err(e)) => {
            notes.push(format!("Nix failed: {e}"));
            None
        }
    };
    match expect {
        Expect::Lines(want) => {
            let mut ol: Vec<&str> = o.lines().collect();
            if ol.len() != want {
                notes.push(format!("MISMATCH: ours printed {} lines, expected {want}", ol.len()));
            }
            if let Some(n) = &n {
                let mut nl: Vec<&str> = n.lines().collect();
                ol.sort_unstable();
                nl.sort_unstable();
                if ol != nl {
                    notes.push(format!("MISMATCH: ours printed {} lines, Nix {}; the sets differ", ol.len(), nl.len()));
                }
            }
        }
        Expect::JsonPaths(want) => {
            let count = |s: &str| -> Option<usize> {
                let v: serde_json::Value = serde_json::from_str(s).ok()?;
                v.as_object().map(|m| m.len()).or_else(|| v.as_array().map(|a| a.len()))
            };
            if count(&o) != Some(want) {
                notes.push(format!("MISMATCH: ours printed {:?} JSON entries, expected {want}", count(&o)));
            }
            if let Some(n) = &n {
                if count(n) != Some(want) {
                    notes.push(format!("MISMATCH: Nix printed {:?} JSON entries, expected {want}", count(n)));
                }
            }
        }
        Expect::Any => {}
        Expect::Same => {
            if let Some(n) = &n {
                if n.trim() != o.trim() {
                    notes.push(format!("MISMATCH: ours printed {:?}, Nix {:?}", o.trim(), n.trim()));
                }
            }
        }
    }
    notes
}

struct Ctx {
    start: Instant,
    bin: PathBuf,
    nix: Option<Nix>,
    /// What is left of the time we may spend waiting for a quiet machine.
    wait_left: Cell<Duration>,
    waited: Cell<Duration>,
}

/// Other load (in cores) under which the machine counts as quiet.
const QUIET: f64 = 0.2;

impl Ctx {
    /// Waits, within the budget, until the rest of the machine is quiet, so a benchmark
    /// does not start in the middle of someone else's build on a shared machine.
    fn wait_quiet(&self) {
        let step = Duration::from_millis(500);
        let mut waited = Duration::ZERO;
        loop {
            let m = CpuMeter::start();
            std::thread::sleep(step);
            let load = m.other_cores();
            if load < QUIET || self.wait_left.get().is_zero() {
                break;
            }
            if waited.is_zero() {
                log(self.start, &format!("waiting for a quiet machine (other load {load:.2} cores)"));
            }
            waited += step;
            self.wait_left.set(self.wait_left.get().saturating_sub(step));
        }
        if !waited.is_zero() {
            self.waited.set(self.waited.get() + waited);
            log(self.start, &format!("  waited {}", report::dur(waited)));
        }
    }

    /// Checks, then times a query-like command pair (no state to reset).
    #[allow(clippy::too_many_arguments)]
    fn query(
        &self,
        id: &str,
        title: &str,
        store: &str,
        ours: Invocation,
        nix: Option<Invocation>,
        expect: Expect,
        runs: usize,
        target: Target,
    ) -> Bench {
        self.wait_quiet();
        log(self.start, &format!("{title} [{store}]"));
        let notes = check_outputs(&ours, nix.as_ref(), expect);
        let meter = CpuMeter::start();
        let (o, n) = interleaved(&ours, nix.as_ref(), runs, &mut |_| Ok(()));
        let answer = match expect {
            Expect::Lines(n) | Expect::JsonPaths(n) => Some(n),
            Expect::Same | Expect::Any => None,
        };
        let other_load = meter.other_cores();
        Bench {
            ours_rss: ours.peak_rss_kib(),
            nix_rss: nix.as_ref().and_then(Invocation::peak_rss_kib),
            answer,
            other_load,
            id: id.into(),
            title: title.into(),
            store: store.into(),
            ours_cmd: ours.display(),
            nix_cmd: nix.as_ref().map(Invocation::display),
            ours: o,
            nix: n,
            target,
            notes,
        }
    }
}

/// Drops a path added by a previous run (row and files) so the next `add` must write it
/// again, and flushes dirty pages so one run's write-back does not slow the next. Fails
/// unless the path was valid: every timed run must really have added it.
fn reset_added(root: &Path, path: &str) -> Result<(), String> {
    let mut store = LocalStore::open(gen::local_config(root)).map_err(|e| e.to_string())?;
    let sp = store.store_dir().parse_path(path).map_err(|e| e.to_string())?;
    if !store.db().is_valid(&sp).map_err(|e| e.to_string())? {
        return Err(format!("'{path}' was not added to {}", root.display()));
    }
    store.db_mut().delete_paths(std::slice::from_ref(&sp)).map_err(|e| e.to_string())?;
    let real = store.real_path(&sp);
    drop(store);
    remove_tree(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    sync();
    Ok(())
}

/// As [`reset_added`], but a path that is not there is fine (before the first run).
fn reset_if_added(root: &Path, path: &str) -> Result<(), String> {
    let store = LocalStore::open(gen::local_config(root)).map_err(|e| e.to_string())?;
    let sp = store.store_dir().parse_path(path).map_err(|e| e.to_string())?;
    let valid = store.db().is_valid(&sp).map_err(|e| e.to_string())?;
    drop(store);
    if valid {
        reset_added(root, path)
    } else {
        Ok(())
    }
}

/// `import` of one new path that refers to the system, into the graph store holding
/// the system's closure: the reference check (ours, Nix) reads the closure's rows.
fn import_bench(ctx: &Ctx, g: &Generated, label: &str, runs: usize, target: Target) -> Bench {
    ctx.wait_quiet();
    let a = g.anchors.as_ref().expect("graph store");
    let title = format!("import of one path referring to the system ({} paths)", a.system_closure);
    log(ctx.start, &format!("{title} [{label}]"));
    let root = &g.root;
    let dir = g.root.with_extension("import");
    let (stream, path) = import_stream::import_stream(&dir, &a.system).expect("export stream");
    let ours = ours_cmd(&ctx.bin, root, &["import", stream.to_str().expect("UTF-8 scratch path")]);
    let nix = ctx.nix.as_ref().map(|n| n.store_cmd(root, &["--import"]).stdin_from(&stream));
    let mut notes = Vec::new();
    for (who, inv) in [("ours", Some(&ours)), ("Nix", nix.as_ref())] {
        let Some(inv) = inv else { continue };
        let checked = reset_if_added(root, &path).and_then(|()| inv.output()).and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if out == path {
                Ok(())
            } else {
                Err(format!("printed {out:?}, expected {path}"))
            }
        });
        if let Err(e) = checked.and_then(|()| reset_added(root, &path)) {
            notes.push(format!("{who}: the checking run failed: {e}"));
        }
    }
    let meter = CpuMeter::start();
    let (o, n) = interleaved(&ours, nix.as_ref(), runs, &mut |_| reset_if_added(root, &path));
    let other_load = meter.other_cores();
    let _ = reset_if_added(root, &path);
    let ours_rss = ours.peak_rss_kib();
    let _ = reset_if_added(root, &path);
    let nix_rss = nix.as_ref().and_then(Invocation::peak_rss_kib);
    let _ = reset_if_added(root, &path);
    Bench {
        ours_rss,
        nix_rss,
        id: "import".into(),
        title,
        store: label.into(),
        answer: None,
        other_load,
        ours_cmd: ours.display(),
        nix_cmd: nix.as_ref().map(Invocation::display),
        ours: o,
        nix: n,
        target,
        notes,
    }
}

/// Flushes all dirty pages to disk, so write-back does not land in a timed run.
fn sync() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

/// `add SRC` by both programs, each into its own store, `runs` times.
fn add_bench(ctx: &Ctx, id: &str, title: &str, src: &Path, scratch: &Scratch, runs: usize, target: Target) -> Bench {
    ctx.wait_quiet();
    log(ctx.start, title);
    let dir = scratch.dir.as_path();
    let ours_root = dir.join(format!("{id}-ours"));
    let nix_root = dir.join(format!("{id}-nix"));
    let src_s = src.to_string_lossy().to_string();
    let ours = ours_cmd(&ctx.bin, &ours_root, &["add", &src_s]);
    let nix = ctx.nix.as_ref().map(|n| n.store_cmd(&nix_root, &["--add", &src_s]));
    let mut notes = Vec::new();
    // The first (untimed) add of each creates its store and tells the path to expect.
    let first = |inv: &Invocation| inv.output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let ours_path = match first(&ours) {
        Ok(p) => p,
        Err(e) => {
            notes.push(format!("ours failed: {e}"));
            String::new()
        }
    };
    let nix_path = nix.as_ref().map(first);
    match &nix_path {
        Some(Ok(p)) if p != &ours_path => notes.push(format!("MISMATCH: ours added '{ours_path}', Nix '{p}'")),
        Some(Err(e)) => notes.push(format!("Nix failed: {e}")),
        _ => {}
    }
    let nix_expected = match &nix_path {
        Some(Ok(p)) => p.clone(),
        _ => String::new(),
    };
    let meter = CpuMeter::start();
    let (o, n) = interleaved(&ours, nix.as_ref(), runs, &mut |side| match side {
        Side::Ours => reset_added(&ours_root, &ours_path),
        Side::Nix => reset_added(&nix_root, &nix_expected),
    });
    let other_load = meter.other_cores();
    // The filesystem floor: the same tree copied with cp, same number of runs.
    let floor_dst = dir.join(format!("{id}-floor"));
    let cp = Invocation::new("cp").args(["-a".into(), src.as_os_str().to_owned(), floor_dst.clone().into_os_string()]);
    let (floor, _) = interleaved(&cp, None, runs, &mut |_| {
        remove_tree(&floor_dst).map_err(|e| e.to_string())?;
        sync();
        Ok(())
    });
    let _ = remove_tree(&floor_dst);
    match floor {
        Ok(f) => notes.push(format!("filesystem floor, `cp -a` of the same source: median {}", report::dur(f.median()))),
        Err(e) => notes.push(format!("cp floor failed: {e}")),
    }
    scratch.tidy(&ours_root);
    scratch.tidy(&nix_root);
    Bench {
        ours_rss: None,
        nix_rss: None,
        id: id.into(),
        title: title.into(),
        store: "own store per program".into(),
        answer: None,
        other_load,
        ours_cmd: ours.display(),
        nix_cmd: nix.as_ref().map(Invocation::display),
        ours: o,
        nix: n,
        target,
        notes,
    }
}

/// The query benchmarks on one graph store; `main_targets` says whether the issue's
/// targets apply (they are stated for the 100k store).
/// The query benchmarks of one graph store, not yet run: `query_phase` runs each right
/// after the same one on the other store, so the flatness comparison sees the machine
/// in the same state (this VM's speed drifts over minutes).
fn graph_benches<'a>(
    ctx: &'a Ctx,
    g: &'a Generated,
    label: &'a str,
    plan: &'a Plan,
    main_targets: bool,
) -> Vec<Box<dyn FnOnce() -> Bench + 'a>> {
    let a = g.anchors.as_ref().expect("graph store");
    let root = &g.root;
    let nix = ctx.nix.as_ref();
    let t = move |x: Target| if main_targets { x } else { Target::Info };
    vec![
        Box::new(move || {
            ctx.query(
                "requisites",
                &format!("query --requisites of the system ({} paths)", a.system_closure),
                label,
                ours_cmd(&ctx.bin, root, &["query", "--requisites", &a.system]),
                nix.map(|n| n.store_cmd(root, &["--query", "--requisites", &a.system])),
                Expect::Lines(a.system_closure),
                plan.query_runs,
                t(Target::Ratio(10.0)),
            )
        }),
        Box::new(move || {
            ctx.query(
                "referrers",
                &format!("query --referrers of core ({} referrers)", a.core_referrers),
                label,
                ours_cmd(&ctx.bin, root, &["query", "--referrers", &a.core]),
                nix.map(|n| n.store_cmd(root, &["--query", "--referrers", &a.core])),
                Expect::Lines(a.core_referrers),
                plan.query_runs,
                t(Target::Ratio(10.0)),
            )
        }),
        Box::new(move || {
            ctx.query(
                "referrers-mid",
                &format!("query --referrers of libmid ({} referrers)", a.libmid_referrers),
                label,
                ours_cmd(&ctx.bin, root, &["query", "--referrers", &a.libmid]),
                nix.map(|n| n.store_cmd(root, &["--query", "--referrers", &a.libmid])),
                Expect::Lines(a.libmid_referrers),
                plan.query_runs,
                Target::Info,
            )
        }),
        Box::new(move || {
            ctx.query(
                "path-info-json",
                &format!("path-info --json -r of the system ({} paths)", a.system_closure),
                label,
                ours_cmd(&ctx.bin, root, &["path-info", "--json", "-r", &a.system]),
                nix.map(|n| n.nix_cmd("path-info", root, &["--json", "-r", &a.system])),
                Expect::JsonPaths(a.system_closure),
                plan.query_runs,
                t(Target::Ratio(5.0)),
            )
        }),
        Box::new(move || import_bench(ctx, g, label, plan.io_runs.max(7), t(Target::Ratio(5.0)))),
        Box::new(move || {
            ctx.query(
                "startup",
                "start-up + one indexed query: path-info P",
                label,
                ours_cmd(&ctx.bin, root, &["path-info", &a.probe]),
                nix.map(|n| n.nix_cmd("path-info", root, &[&a.probe])),
                Expect::Same,
                plan.startup_runs,
                t(Target::Under(Duration::from_millis(2))),
            )
        }),
        Box::new(move || {
            ctx.query(
                "startup-hash",
                "start-up + one indexed query: query --hash P",
                label,
                ours_cmd(&ctx.bin, root, &["query", "--hash", &a.probe]),
                nix.map(|n| n.store_cmd(root, &["--query", "--hash", &a.probe])),
                Expect::Same,
                plan.startup_runs,
                t(Target::Under(Duration::from_millis(2))),
            )
        }),
    ]
}

/// Which parts to run (`STOREBENCH_ONLY=queries,verify,add`; default all).
struct Phases {
    queries: bool,
    verify: bool,
    add: bool,
}

impl Phases {
    fn from_env() -> Phases {
        match std::env::var("STOREBENCH_ONLY") {
            Ok(v) if !v.trim().is_empty() => {
                let has = |p: &str| v.split(',').any(|x| x.trim() == p);
                let phases = Phases { queries: has("queries"), verify: has("verify"), add: has("add") };
                assert!(
                    phases.queries || phases.verify || phases.add,
                    "STOREBENCH_ONLY: expected a list of queries, verify, add; got {v:?}"
                );
                phases
            }
            _ => Phases { queries: true, verify: true, add: true },
        }
    }

    fn all(&self) -> bool {
        self.queries && self.verify && self.add
    }
}

/// Generates the graph stores and runs the query benchmarks on each, one benchmark
/// across all stores before the next (so the flatness comparison sees the machine in
/// the same state).
fn query_phase(ctx: &Ctx, plan: &Plan, scratch: &Scratch, report: &mut Report) {
    let start = ctx.start;
    let mut stores = Vec::new();
    for shape in &plan.stores {
        log(start, &format!("generating the {}-path store", shape.total));
        let g = gen::graph_store(&scratch.dir.join(format!("graph-{}", shape.total)), shape).expect("generate graph store");
        log(start, &format!("  done in {}", report::dur(g.total_time())));
        // Write back what generation left dirty now, not during the timed runs.
        sync();
        let label = format!("{}k store", shape.total / 1000);
        report.generated.push((label.clone(), g.clone()));
        stores.push((label, g));
    }
    report.benches.push(ctx.query(
        "version",
        "process start-up alone: --version (no store)",
        "—",
        Invocation::new(&ctx.bin).arg("--version"),
        ctx.nix.as_ref().map(|n| n.with_env(Invocation::new(&n.nix_store).arg("--version"))),
        Expect::Any,
        plan.startup_runs,
        Target::Info,
    ));
    let last = stores.len() - 1;
    let mut per_store: Vec<Vec<Box<dyn FnOnce() -> Bench + '_>>> =
        stores.iter().enumerate().map(|(i, (label, g))| graph_benches(ctx, g, label, plan, i == last)).collect();
    let mut results: Vec<Vec<Bench>> = stores.iter().map(|_| Vec::new()).collect();
    let count = per_store[0].len();
    for _ in 0..count {
        // Largest first, as before: the big store's pages are the ones most likely cold.
        let mut row = Vec::new();
        for (i, benches) in per_store.iter_mut().enumerate().rev() {
            let b = benches.remove(0)();
            row.push((i, b));
        }
        row.sort_by_key(|(i, _)| *i);
        report.flat.push(Flat::new(&row.iter().map(|(_, b)| b).collect::<Vec<_>>()));
        for (i, b) in row {
            results[i].push(b);
        }
    }
    for r in results.into_iter().rev() {
        report.benches.extend(r);
    }
    log(start, "removing the graph stores");
    for (_, g) in &stores {
        scratch.tidy(&g.root);
    }
}

/// Generates the contents-checking store and times `verify --check-contents` on it.
fn verify_phase(ctx: &Ctx, plan: &Plan, scratch: &Scratch, report: &mut Report) {
    let start = ctx.start;
    log(start, &format!("generating the {} MiB contents-checking store", plan.verify_bytes >> 20));
    let vstore = gen::blob_store(&scratch.dir.join("verify"), plan.verify_paths, plan.verify_bytes, 0xB10B).expect("generate verify store");
    log(start, &format!("  done in {}", report::dur(vstore.total_time())));
    sync();
    let verify_label = format!("{} MiB store", plan.verify_bytes >> 20);
    report.generated.push((format!("{verify_label} ({} paths)", vstore.paths), vstore.clone()));
    report.benches.push(ctx.query(
        "verify",
        &format!("verify --check-contents ({} paths, {} MiB of NAR)", vstore.paths, vstore.nar_bytes >> 20),
        &verify_label,
        ours_cmd(&ctx.bin, &vstore.root, &["verify", "--check-contents"]),
        ctx.nix.as_ref().map(|n| n.store_cmd(&vstore.root, &["--verify", "--check-contents"])),
        Expect::Same,
        plan.io_runs,
        Target::Ratio(1.5),
    ));
    scratch.tidy(&vstore.root);
}

/// Writes the sources and times `add` of the tree and of the big file.
fn add_phase(ctx: &Ctx, plan: &Plan, scratch: &Scratch, report: &mut Report) {
    let t = Instant::now();
    let tree = scratch.dir.join("src").join("tree");
    gen::source_tree(&tree, plan.tree_files, plan.tree_bytes, 0x7EE).expect("generate source tree");
    let big_file = scratch.dir.join("src").join("big.bin");
    {
        let mut f = fs::File::create(&big_file).expect("create big file");
        gen::write_random(&mut f, plan.big_file, 0xB16).expect("write big file");
    }
    report.sources_time = t.elapsed();
    sync();
    log(ctx.start, &format!("add sources written in {}", report::dur(report.sources_time)));
    report.benches.push(add_bench(
        ctx,
        "add-tree",
        &format!("add a {} MiB tree of {} files", plan.tree_bytes >> 20, plan.tree_files),
        &tree,
        scratch,
        plan.io_runs,
        Target::Ratio(1.0),
    ));
    report.benches.push(add_bench(
        ctx,
        "add-file",
        &format!("add one {} MiB file", plan.big_file >> 20),
        &big_file,
        scratch,
        plan.io_runs,
        Target::Ratio(1.3),
    ));
}

/// Where the bench executable's profile directory is (`<target>/release`).
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.to_path_buf())
}

fn main() {
    let start = Instant::now();
    let quick = env_flag("STOREBENCH_QUICK") || std::env::args().any(|a| a == "--quick");
    let plan = Plan::new(quick);
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("STOREBENCH_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_overlay-store")));
    assert!(bin.is_file(), "no overlay-store binary at {}", bin.display());
    let phases = Phases::from_env();
    // Only a full run of everything rewrites BENCHMARKS.md.
    let out_path = match std::env::var_os("STOREBENCH_OUT") {
        Some(p) => PathBuf::from(p),
        None if quick || !phases.all() => {
            profile_dir().unwrap_or_else(std::env::temp_dir).join(if quick { "storebench-quick.md" } else { "storebench-partial.md" })
        }
        None => manifest.join("BENCHMARKS.md"),
    };
    let base = std::env::var_os("STOREBENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch { dir: base.join(format!("storebench-{}", std::process::id())), keep: env_flag("STOREBENCH_KEEP") };
    fs::create_dir_all(scratch.dir.join("home")).expect("create scratch dir");
    let nix = Nix::detect(&scratch.dir.join("home"));
    log(
        start,
        &format!(
            "{} run; scratch {}; ours {}; Nix: {}",
            if quick { "quick" } else { "full" },
            scratch.dir.display(),
            bin.display(),
            nix.as_ref().map_or("not found", |n| n.version.as_str())
        ),
    );
    let mut report = Report::new(quick, nix.as_ref().map(|n| n.version.clone()), &scratch.dir, &manifest);
    let idle = CpuMeter::start();
    std::thread::sleep(Duration::from_secs(2));
    report.load_before = idle.other_cores();
    if report.load_before > 0.25 {
        log(start, &format!("warning: other processes keep {:.2} cores busy; timings will be noisy", report.load_before));
    }
    let whole = CpuMeter::start();
    let budget = std::env::var("STOREBENCH_QUIET_WAIT").ok().and_then(|v| v.parse().ok()).unwrap_or(180);
    let ctx = Ctx { start, bin, nix, wait_left: Cell::new(Duration::from_secs(budget)), waited: Cell::new(Duration::ZERO) };

    // I/O-heavy parts first, on a quiet file system; making and deleting the graph stores
    // (hundreds of thousands of inodes) leaves the disk busy for a while.
    if phases.add {
        add_phase(&ctx, &plan, &scratch, &mut report);
    }
    if phases.verify {
        verify_phase(&ctx, &plan, &scratch, &mut report);
    }
    if phases.queries {
        query_phase(&ctx, &plan, &scratch, &mut report);
    }
    // Presented queries first, then contents checking, then adding.
    let rank = |id: &str| match id {
        "verify" => 1,
        i if i.starts_with("add") => 2,
        _ => 0,
    };
    report.benches.sort_by_key(|b| rank(&b.id));
    report.generated.sort_by_key(|(_, g)| g.anchors.is_none());

    report.load_during = whole.other_cores();
    report.waited = ctx.waited.get();
    report.total_time = start.elapsed();
    let text = report.render(&plan_summary(&plan));
    fs::write(&out_path, &text).expect("write report");
    println!("{text}");
    log(start, &format!("report written to {}", out_path.display()));
    drop(scratch);
}

fn plan_summary(plan: &Plan) -> String {
    format!(
        "{} mode: graph stores of {} paths (base {}, system {}, system chain {}); contents store {} paths / {} MiB; add tree {} files / {} MiB; add file {} MiB; runs per command: queries {}, start-up {}, add/verify {}",
        if plan.quick { "quick" } else { "full" },
        plan.stores.iter().map(|s| s.total.to_string()).collect::<Vec<_>>().join(", "),
        plan.stores[0].base,
        plan.stores[0].system,
        plan.stores[0].system_chain,
        plan.verify_paths,
        plan.verify_bytes >> 20,
        plan.tree_files,
        plan.tree_bytes >> 20,
        plan.big_file >> 20,
        plan.query_runs,
        plan.startup_runs,
        plan.io_runs
    )
}
