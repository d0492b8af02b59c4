//! `cargo bench --bench overlaybench`: the overlay store's own targets (copy-up, import
//! into an overlay, GC against Nix, the Lua GC hook, a nix-daemon as the lower store),
//! timed as whole `overlay-store` processes on stores generated with the library;
//! writes `BENCHMARKS-overlay.md`.
//!
//! 1. **copy-up**: `check-validity <system>` on an overlay with an empty upper database
//!    over a lower local store of 100,000 (and 10,000) paths: the system's ~9,500-path
//!    closure is copied into the upper database, set at a time. Target < 0.25 s.
//! 2. **import**: `import` of a one-item export stream whose item refers to the system,
//!    into an empty upper database (the copy-up happens inside the import). < 0.3 s.
//! 3. **GC against Nix**: `overlay-store gc` and `nix-store --gc` on the same local store
//!    of 100,000 paths, ~9,000 of them dead with ~100,000 small files; the dead part is
//!    written again before each run. Target Nix / ours ≥ 1.3; `rm -rf` of the same
//!    directories is the floor.
//! 4. **Lua GC hook**: `gc` of an overlay with 10,000 dead upper paths, without a policy
//!    and with `lua/default.lua` (whose `gc` hook returns every candidate). < +20 %.
//! 5. **daemon lower store**: copy-up as in 1, the lower store served by `nix-daemon`
//!    over its socket. ≤ 3 s.
//!
//! Environment:
//!
//! - `OVERLAYBENCH_QUICK=1`: small sizes, few runs, under two minutes; the report goes to
//!   `<target>/release/overlaybench-quick.md`.
//! - `OVERLAYBENCH_ONLY=copyup,import,gc,lua,daemon`: some parts only; the report goes to
//!   `<target>/release/overlaybench-partial.md`.
//! - `OVERLAYBENCH_DIR=DIR`: put the scratch stores under DIR instead of on a tmpfs the
//!   bench mounts; `OVERLAYBENCH_KEEP=1` leaves them there.
//! - `OVERLAYBENCH_OUT=FILE`: where the report goes.
//! - `OVERLAYBENCH_BIN=FILE`: the binary to time (default: build it with
//!   `cargo build --release --bin overlay-store` and time `<target>/release/overlay-store`).
//! - `OVERLAYBENCH_NO_NIX=1`: skip what needs Nix (GC against Nix, the daemon).
//! - `OVERLAYBENCH_PROFILE=DIR`: after timing, run each command once more under
//!   `perf record --call-graph dwarf` and once under `strace -f -c` (untimed), writing
//!   `DIR/<benchmark>-<contender>.{perf,strace}`; for finding where the time goes.
//!
//! Must run as root: it unshares a mount namespace (so every mount it and its children
//! make disappears when it exits), mounts a tmpfs and OverlayFS.

// The crate root is bench/overlaybench.rs, so its modules are found by path.
// Only the graph generator of storebench's: the rest is unused here.
#[allow(dead_code)]
#[path = "common/canonical.rs"]
mod canonical;
#[allow(dead_code)]
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
#[path = "overlaybench/report.rs"]
mod report;
#[path = "overlaybench/run.rs"]
mod run;
#[path = "overlaybench/stores.rs"]
mod stores;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::canonical::remove_tree;
use overlay_store::format::StoreDir;
use overlay_store::store::local::LocalStore;
use overlay_store::store::Store;

use nix_tools::env_flag;
use report::{dur, Bench, Contender, Report, StoreRow, Target};
use run::{Cmd, CpuMeter, Series};
use stores::{GcShape, Object};

/// Everything that differs between a full and a quick run.
struct Plan {
    quick: bool,
    /// The large lower store, which is also the GC store: all paths, dead ones included.
    big_total: usize,
    small_total: usize,
    gc: GcShape,
    upper_garbage: usize,
    copy_runs: usize,
    daemon_runs: usize,
    lua_runs: usize,
    gc_runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                big_total: 20_000,
                small_total: 2_000,
                gc: GcShape { dead: 1_800, envs: 75, roots: 5, seed: 0x0BE7_1A4E },
                upper_garbage: 2_000,
                copy_runs: 5,
                daemon_runs: 3,
                lua_runs: 3,
                gc_runs: 3,
            }
        } else {
            Plan {
                quick,
                big_total: 100_000,
                small_total: 10_000,
                gc: GcShape { dead: 9_000, envs: 395, roots: 5, seed: 0x0BE7_1A4E },
                upper_garbage: 10_000,
                copy_runs: 11,
                daemon_runs: 7,
                lua_runs: 5,
                gc_runs: 3,
            }
        }
    }

    /// storebench's graph shape (same seed, so the same system closure as its stores).
    fn shape(&self, total: usize) -> gen::GraphShape {
        let (base, system, chain, libmid) = if self.quick { (300, 1_500, 200, 100) } else { (1_500, 8_000, 1_000, 200) };
        gen::GraphShape {
            total,
            base,
            system,
            system_chain: chain,
            rest_chain: (total / 100).max(50),
            libmid_referrers: libmid,
            seed: 0x5702_EBE7,
        }
    }
}

/// Which parts run (`OVERLAYBENCH_ONLY`).
struct Parts {
    copyup: bool,
    import: bool,
    daemon: bool,
    lua: bool,
    gc: bool,
    serve: bool,
}

impl Parts {
    fn from_env() -> Parts {
        match std::env::var("OVERLAYBENCH_ONLY") {
            Ok(s) if !s.trim().is_empty() => {
                let has = |p: &str| s.split(',').any(|x| x.trim() == p);
                let parts = Parts {
                    copyup: has("copyup"),
                    import: has("import"),
                    daemon: has("daemon"),
                    lua: has("lua"),
                    gc: has("gc"),
                    serve: has("serve"),
                };
                for x in s.split(',') {
                    assert!(
                        ["copyup", "import", "daemon", "lua", "gc", "serve"].contains(&x.trim()),
                        "OVERLAYBENCH_ONLY: unknown part '{x}'"
                    );
                }
                parts
            }
            _ => Parts { copyup: true, import: true, daemon: true, lua: true, gc: true, serve: true },
        }
    }

    fn all(&self) -> bool {
        self.copyup && self.import && self.daemon && self.lua && self.gc && self.serve
    }
}

fn log(start: Instant, msg: &str) {
    eprintln!("[{:7.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// A private mount namespace, so nothing mounted here is seen outside or outlives us.
/// Must run while the process is still single-threaded.
fn private_mount_namespace() -> nix::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
}

/// Mount points at or under `dir`, deepest first (from /proc/self/mountinfo).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v
}

/// The scratch directory: a tmpfs of our own, or a directory under `$OVERLAYBENCH_DIR`.
/// Dropping it unmounts everything under it and removes it.
struct Scratch {
    dir: PathBuf,
    tmpfs: bool,
    keep: bool,
}

impl Scratch {
    fn new() -> Scratch {
        let pid = std::process::id();
        match std::env::var_os("OVERLAYBENCH_DIR") {
            Some(base) => {
                let dir = PathBuf::from(base).join(format!("overlaybench-{pid}"));
                fs::create_dir_all(&dir).expect("create the scratch directory");
                Scratch { dir, tmpfs: false, keep: env_flag("OVERLAYBENCH_KEEP") }
            }
            None => {
                let dir = std::env::temp_dir().join(format!("overlaybench-{pid}"));
                fs::create_dir_all(&dir).expect("create the scratch mount point");
                mount(Some("overlaybench"), &dir, Some("tmpfs"), MsFlags::empty(), Some("mode=0755,size=60%"))
                    .expect("mount a tmpfs for the scratch stores (run as root)");
                Scratch { dir, tmpfs: true, keep: false }
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in mounts_under(&self.dir) {
            if m != self.dir || !self.tmpfs {
                let _ = umount2(&m, MntFlags::MNT_DETACH);
            }
        }
        if self.tmpfs {
            let _ = umount2(&self.dir, MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(&self.dir);
        } else if self.keep {
            eprintln!("overlaybench: keeping {}", self.dir.display());
        } else if let Err(e) = remove_tree(&self.dir) {
            eprintln!("overlaybench: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// Nix's programs and the environment they run in.
struct Nix {
    nix_store: PathBuf,
    nix_daemon: PathBuf,
    version: String,
    env: Vec<(OsString, OsString)>,
}

impl Nix {
    fn detect(home: &Path) -> Option<Nix> {
        let (nix_store, version) = nix_tools::find_nix_store("OVERLAYBENCH_NO_NIX")?;
        let nix_daemon = nix_tools::find_program("nix-daemon")?;
        fs::create_dir_all(home).ok()?;
        Some(Nix { nix_store, nix_daemon, version, env: nix_tools::environment(home) })
    }
}

/// A nix-daemon we started; killed (by its PID) when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(nix: &Nix, root: &Path, socket: &Path, log_file: &Path) -> Result<Daemon, String> {
        let _ = fs::remove_file(socket);
        let err = fs::File::create(log_file).map_err(|e| e.to_string())?;
        let child = Command::new(&nix.nix_daemon)
            .arg("--store")
            .arg(root)
            .envs(nix.env.iter().map(|(k, v)| (k, v)))
            .env("NIX_DAEMON_SOCKET_PATH", socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("nix-daemon: {e}"))?;
        let mut d = Daemon { child, socket: socket.to_path_buf() };
        let t = Instant::now();
        while !socket.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(format!("nix-daemon exited ({st}): {}", fs::read_to_string(log_file).unwrap_or_default().trim()));
            }
            if t.elapsed() > Duration::from_secs(20) {
                return Err("nix-daemon did not create its socket in 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = fs::remove_file(&self.socket);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

/// An overlay store in `dir`: `store.toml` (and variants) with `merged/`, `upper/`, `work/`.
struct Overlay {
    dir: PathBuf,
    cfg: PathBuf,
}

impl Overlay {
    /// Writes `<name>.toml` in `dir` with `lower` as its lower-store (an inline table) and
    /// `extra` top-level lines.
    fn new(dir: &Path, name: &str, lower: &str, extra: &str) -> io::Result<Overlay> {
        fs::create_dir_all(dir)?;
        let cfg = dir.join(format!("{name}.toml"));
        fs::write(
            &cfg,
            format!("root = \"merged\"\nupper-layer = \"upper\"\n{extra}lower-store = {lower}\n\n[mount]\nworkdir = \"work\"\n"),
        )?;
        Ok(Overlay { dir: dir.to_path_buf(), cfg })
    }

    /// Another config file for the same directories.
    fn variant(&self, name: &str, lower: &str, extra: &str) -> io::Result<Overlay> {
        Overlay::new(&self.dir, name, lower, extra)
    }

    fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }

    fn state(&self) -> PathBuf {
        self.merged().join("nix/var/nix")
    }

    fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    fn cmd(&self, bin: &Path, args: &[&str]) -> Cmd {
        Cmd::new(bin).arg("-c").arg(&self.cfg).args(args.iter().copied())
    }

    fn mount(&self, bin: &Path) -> Result<(), String> {
        self.cmd(bin, &["mount"]).output().map(|_| ())
    }

    fn umount(&self, bin: &Path) -> Result<(), String> {
        self.cmd(bin, &["umount"]).output().map(|_| ())
    }

    /// Unmounted, with no upper database and an empty upper layer.
    fn clear(&self, bin: &Path) -> Result<(), String> {
        self.umount(bin)?;
        let db = self.state().join("db");
        match remove_tree(&db) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(format!("{}: {e}", db.display())),
            _ => {}
        }
        fs::create_dir_all(self.upper()).map_err(|e| format!("{}: {e}", self.upper().display()))?;
        clear_dir(&self.upper())
    }

    /// Mounted, with an empty upper database and an empty upper layer.
    fn reset(&self, bin: &Path) -> Result<(), String> {
        self.clear(bin)?;
        self.mount(bin)
    }

    fn rows(&self) -> Result<u64, String> {
        stores::count_rows(&self.state()).map_err(|e| format!("upper database: {e}"))
    }
}

/// Removes everything in `dir` (not `dir` itself).
fn clear_dir(dir: &Path) -> Result<(), String> {
    let Ok(rd) = fs::read_dir(dir) else { return Ok(()) };
    for e in rd {
        let p = e.map_err(|e| e.to_string())?.path();
        remove_tree(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// Flushes dirty pages, so write-back from resetting does not land in a timed run
/// (nearly free on tmpfs).
fn sync() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}

/// A contender in a series of interleaved runs: its command, what to do before each
/// run (untimed reset) and after it (untimed check).
struct Entry<'a> {
    label: String,
    cmd: Cmd,
    before: Box<dyn FnMut() -> Result<(), String> + 'a>,
    after: Box<dyn FnMut() -> Result<(), String> + 'a>,
}

/// What a measurement produced: the contenders' series, the load of other processes
/// meanwhile, and each contender's output (stdout then stderr) from its checking run.
struct Measured {
    contenders: Vec<Contender>,
    other_load: f64,
    outputs: Vec<String>,
}

/// Runs each entry once untimed (a failed check becomes a note), then `runs` timed runs
/// of each, interleaved with a rotating order so machine drift hits all alike. With
/// `OVERLAYBENCH_PROFILE=DIR`, each entry then runs once more under `perf record` and
/// once under `strace -c` (untimed), into `DIR/<id>-<label>.{perf,strace}`.
fn measure(ctx: &Ctx, id: &str, entries: Vec<Entry<'_>>, runs: usize, notes: &mut Vec<String>) -> Measured {
    let mut entries = entries;
    let mut results: Vec<Result<Series, String>> = entries.iter().map(|_| Ok(Series::default())).collect();
    let mut outputs = Vec::new();
    for (e, r) in entries.iter_mut().zip(results.iter_mut()) {
        let checked = (e.before)().and_then(|()| e.cmd.output()).and_then(|out| (e.after)().map(|()| out));
        match checked {
            Ok((o, err)) => outputs.push(format!("{o}{err}")),
            Err(err) => {
                notes.push(format!("{}: the untimed checking run failed: {err}", e.label));
                outputs.push(String::new());
                *r = Err(err);
            }
        }
    }
    let meter = CpuMeter::start();
    let log_file = ctx.scratch.join("timed-run.stderr");
    let k = entries.len();
    for run in 0..runs {
        for i in 0..k {
            let idx = (run + i) % k;
            let (e, r) = (&mut entries[idx], &mut results[idx]);
            let Ok(series) = r else { continue };
            let t = (e.before)().and_then(|()| {
                sync();
                e.cmd.time(&log_file)
            });
            let t = t.and_then(|s| (e.after)().map(|()| s));
            match t {
                Ok(s) => series.0.push(s),
                Err(err) => *r = Err(err),
            }
        }
    }
    let other_load = meter.other_cores();
    let others = other_benchmarks();
    if !others.is_empty() {
        notes.push(format!("**disturbed**: other benchmarks or builds were running when this measurement ended: {}", others.join(", ")));
    }
    if let Some(dir) = &ctx.profile {
        for e in entries.iter_mut() {
            let name: String =
                format!("{id}-{}", e.label).chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
            let perf_file = dir.join(format!("{name}.perf"));
            let strace_file = dir.join(format!("{name}.strace"));
            let wrap = |pre: Vec<OsString>| {
                let mut c = e.cmd.clone();
                c.args = pre.into_iter().chain(std::iter::once(c.program.clone().into_os_string())).chain(c.args).collect();
                c.program = PathBuf::from(&c.args[0]);
                c.args.remove(0);
                c
            };
            let perf = wrap(
                ["perf", "record", "--call-graph", "dwarf,8192", "-F", "999", "-o"]
                    .map(OsString::from)
                    .into_iter()
                    .chain([perf_file.clone().into_os_string(), "--".into()])
                    .collect(),
            );
            let strace =
                wrap(["strace", "-f", "-c", "-o"].map(OsString::from).into_iter().chain([strace_file.clone().into_os_string()]).collect());
            for (c, file) in [(perf, perf_file), (strace, strace_file)] {
                match (e.before)().and_then(|()| c.output()).and_then(|_| (e.after)()) {
                    Ok(()) => notes.push(format!("{}: profiled (untimed) into `{}`", e.label, file.display())),
                    Err(err) => notes.push(format!("{}: profiling run failed: {err}", e.label)),
                }
            }
        }
    }
    let contenders =
        entries.into_iter().zip(results).map(|(e, series)| Contender { label: e.label, cmd: e.cmd.display(), series }).collect();
    Measured { contenders, other_load, outputs }
}

struct Ctx {
    start: Instant,
    bin: PathBuf,
    nix: Option<Nix>,
    scratch: PathBuf,
    repo: PathBuf,
    /// `OVERLAYBENCH_PROFILE`: where profiling runs write their data.
    profile: Option<PathBuf>,
}

/// A generated lower store and what the benchmarks ask of it.
struct Lower {
    /// "small" or "large" (in benchmark ids and directory names).
    label: &'static str,
    root: PathBuf,
    paths: usize,
    system: String,
    system_closure: usize,
    core: String,
}

fn expect_rows(ov: &Overlay, want: u64) -> Result<(), String> {
    let got = ov.rows()?;
    if got == want {
        Ok(())
    } else {
        Err(format!("the upper database has {got} rows, expected {want}"))
    }
}

/// One operation timed over several lower stores.
struct OverLower<'a> {
    lower: &'a Lower,
    ov: Overlay,
    cmd: Cmd,
    /// Rows the upper database must have afterwards.
    want: u64,
    /// A file the upper layer must have afterwards.
    upper_file: Option<PathBuf>,
    note: String,
}

/// Times one operation over each lower store, their runs interleaved (so drift of the
/// machine hits every store alike and the flatness comparison is fair); a `Bench` per
/// lower store. Before each run the overlay is reset (empty upper database and layer).
fn over_lowers(
    ctx: &Ctx,
    op: &str,
    number: &'static str,
    title: &str,
    items: Vec<OverLower<'_>>,
    runs: usize,
    target: Target,
) -> Vec<Bench> {
    let mut shared = Vec::new();
    let entries: Vec<Entry<'_>> = items
        .iter()
        .map(|it| Entry {
            label: it.lower.label.to_string(),
            cmd: it.cmd.clone(),
            before: Box::new(|| it.ov.reset(&ctx.bin)),
            after: Box::new(|| {
                expect_rows(&it.ov, it.want)?;
                match &it.upper_file {
                    Some(f) if !f.exists() => Err(format!("{} is not in the upper layer", f.display())),
                    _ => Ok(()),
                }
            }),
        })
        .collect();
    let Measured { contenders, other_load, .. } = measure(ctx, op, entries, runs, &mut shared);
    items
        .iter()
        .zip(contenders)
        .map(|(it, c)| {
            let _ = it.ov.umount(&ctx.bin);
            let label = it.lower.label;
            let mut notes = vec![it.note.clone()];
            let others: Vec<&str> = items.iter().map(|i| i.lower.label).filter(|l| *l != label).collect();
            notes.extend(shared.iter().filter(|n| !others.iter().any(|o| n.starts_with(&format!("{o}:")))).cloned());
            if items.len() > 1 {
                notes.push(format!(
                    "runs interleaved with the same operation over the {} lower store(s)",
                    others.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
            Bench {
                id: format!("{op}-{label}"),
                number,
                title: title.to_string(),
                store: format!("{}-path lower", it.lower.paths),
                contenders: vec![Contender { label: "ours".into(), ..c }],
                target,
                other_load,
                notes,
            }
        })
        .collect()
}

/// 1: `check-validity <system>` into an empty upper database, over each lower store.
fn copy_up_benches(ctx: &Ctx, lowers: &[&Lower], runs: usize, target: Target) -> Vec<Bench> {
    log(ctx.start, "copy-up: check-validity of the system over each lower store");
    let items = lowers
        .iter()
        .map(|l| {
            let ov = Overlay::new(&ctx.scratch.join(format!("ov-{}", l.label)), "store", &local_lower(&l.root), "").expect("overlay config");
            OverLower {
                lower: l,
                cmd: ov.cmd(&ctx.bin, &["check-validity", &l.system]),
                note: format!(
                    "config: `{}`; lower store {} paths; the system's closure: {} paths, all of which the upper database must hold afterwards",
                    ov.cfg.display(),
                    l.paths,
                    l.system_closure
                ),
                ov,
                want: l.system_closure as u64,
                upper_file: None,
            }
        })
        .collect();
    over_lowers(ctx, "copy-up", "1", "copy-up: `check-validity <system>`, empty upper database", items, runs, target)
}

fn local_lower(root: &Path) -> String {
    format!("{{ type = \"local\", root = \"{}\" }}", root.display())
}

/// 2: `import` of one new path referring to the system, into an empty upper database,
/// over each lower store.
fn import_benches(ctx: &Ctx, lowers: &[&Lower], runs: usize, target: Target) -> Vec<Bench> {
    log(ctx.start, "import: one path referring to the system, over each lower store");
    let items = lowers
        .iter()
        .map(|l| {
            let ov =
                Overlay::new(&ctx.scratch.join(format!("ov-{}", l.label)), "store", &local_lower(&l.root), "").expect("overlay config");
            let (stream, path) =
                import_stream::import_stream(&ctx.scratch.join(format!("import-{}", l.label)), &l.system).expect("export stream");
            OverLower {
                lower: l,
                cmd: ov.cmd(&ctx.bin, &["import"]).stdin_from(&stream),
                note: format!(
                    "stream: {} bytes, one item `{path}` with the reference `{}`; afterwards the upper database must hold the system's \
                     closure ({} paths) plus the new path, and the upper layer the new path",
                    fs::metadata(&stream).map(|m| m.len()).unwrap_or(0),
                    l.system,
                    l.system_closure
                ),
                upper_file: Some(ov.upper().join(path.trim_start_matches("/nix/store/"))),
                ov,
                want: l.system_closure as u64 + 1,
            }
        })
        .collect();
    over_lowers(ctx, "import", "2", "import of one path referring to the system, empty upper database", items, runs, target)
}

/// 5: copy-up as in 1, the lower store served by nix-daemon.
fn daemon_bench(ctx: &Ctx, nix: &Nix, lower: &Lower, runs: usize) -> Bench {
    log(ctx.start, &format!("daemon: check-validity of the system, the {} lower store served by nix-daemon", lower.label));
    let socket = ctx.scratch.join("daemon/socket");
    let _ = fs::create_dir_all(socket.parent().expect("has a parent"));
    let mut notes = Vec::new();
    let title = "copy-up from a nix-daemon lower store: `check-validity <system>`".to_string();
    let store = format!("{}-path lower via nix-daemon", lower.paths);
    let target = Target::Below(Duration::from_secs(3));
    let daemon = match Daemon::start(nix, &lower.root, &socket, &ctx.scratch.join("daemon/daemon.log")) {
        Ok(d) => d,
        Err(e) => {
            return Bench {
                id: "daemon".into(),
                number: "5",
                title,
                store,
                contenders: vec![Contender { label: "ours".into(), cmd: String::new(), series: Err(e) }],
                target,
                other_load: 0.0,
                notes,
            }
        }
    };
    let lower_spec =
        format!("{{ type = \"daemon\", socket = \"{}\", real = \"{}\" }}", socket.display(), lower.root.join("nix/store").display());
    let ov = Overlay::new(&ctx.scratch.join("ov-daemon"), "store", &lower_spec, "").expect("overlay config");
    notes.push(format!(
        "`nix-daemon --store {}` ({}) with `NIX_DAEMON_SOCKET_PATH={}`; the system's closure: {} paths",
        lower.root.display(),
        nix.version,
        socket.display(),
        lower.system_closure
    ));
    let bin = ctx.bin.clone();
    let want = lower.system_closure as u64;
    let entries = vec![Entry {
        label: "ours".into(),
        cmd: ov.cmd(&ctx.bin, &["check-validity", &lower.system]),
        before: Box::new(|| ov.reset(&bin)),
        after: Box::new(|| expect_rows(&ov, want)),
    }];
    let Measured { contenders, other_load, .. } = measure(ctx, "daemon", entries, runs, &mut notes);
    notes.push(format!(
        "the nix-daemon worker that serves each run is not our child (the daemon forks it and reaps it), so its CPU is counted \
         among the other processes above ({other_load:.2} cores on average): expected here, not a disturbance"
    ));
    let _ = ov.umount(&ctx.bin);
    drop(daemon);
    Bench { id: "daemon".into(), number: "5", title, store, contenders, target, other_load, notes }
}

/// Our `serve` (on an overlay of `lower`) in the background, killed when dropped.
struct Served {
    child: Child,
}

impl Served {
    fn start(ctx: &Ctx, ov: &Overlay, socket: &Path, log_file: &Path) -> Result<Served, String> {
        let _ = fs::remove_file(socket);
        let err = fs::File::create(log_file).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&ctx.bin);
        cmd.arg("-c").arg(&ov.cfg).arg("serve").arg("--socket").arg(socket);
        if let Some(nix) = &ctx.nix {
            cmd.envs(nix.env.iter().map(|(k, v)| (k, v)));
        }
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err).spawn().map_err(|e| format!("serve: {e}"))?;
        let mut s = Served { child };
        let t = Instant::now();
        while !fs::read_to_string(log_file).unwrap_or_default().contains("serving ") {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!("serve exited ({st}): {}", fs::read_to_string(log_file).unwrap_or_default().trim()));
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err("serve did not get ready in 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// CPU time of process `pid` (with `children`: of its reaped children, plus its own).
fn server_cpu(pid: u32, children: bool) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // utime, stime, cutime, cstime are fields 14-17, i.e. 11-14 after the state field.
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    let ticks = get(11) + get(12) + if children { get(13) + get(14) } else { 0 };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// 6: stock Nix clients through our `serve` (an overlay on `lower`, empty upper layer)
/// against `nix-daemon` serving `lower` itself: the same client, the same answers.
fn serve_benches(ctx: &Ctx, nix: &Nix, lower: &Lower, runs: usize) -> Vec<Bench> {
    log(ctx.start, &format!("serve: Nix clients through serve and through nix-daemon, the {} lower store", lower.label));
    let dir = ctx.scratch.join(format!("serve-{}", lower.label));
    let (ours_sock, nix_sock) = (dir.join("ours.socket"), dir.join("nix-daemon.socket"));
    let _ = fs::create_dir_all(&dir);
    let store = format!("{}-path lower store", lower.paths);
    let mut benches = Vec::new();
    let fail = |e: String, title: String| Bench {
        id: format!("serve-{}", lower.label),
        number: "6",
        title,
        store: store.clone(),
        contenders: vec![Contender { label: "ours".into(), cmd: String::new(), series: Err(e) }],
        target: Target::RatioAtLeast(3.0),
        other_load: 0.0,
        notes: Vec::new(),
    };
    let daemon = match Daemon::start(nix, &lower.root, &nix_sock, &dir.join("nix-daemon.log")) {
        Ok(d) => d,
        Err(e) => return vec![fail(e, "serve".into())],
    };
    let ov = match Overlay::new(&dir.join("ov"), "store", &local_lower(&lower.root), "") {
        Ok(o) => o,
        Err(e) => return vec![fail(e.to_string(), "serve".into())],
    };
    if let Err(e) = ov.cmd(&ctx.bin, &["init"]).output().and_then(|_| ov.mount(&ctx.bin)) {
        return vec![fail(e, "serve".into())];
    }
    let served = match Served::start(ctx, &ov, &ours_sock, &dir.join("serve.log")) {
        Ok(s) => s,
        Err(e) => return vec![fail(e, "serve".into())],
    };
    let client = |socket: &Path, program: &Path, args: &[&str]| {
        Cmd::new(program)
            .args(["--store", "daemon"])
            .args(args.iter().copied())
            .envs(&nix.env)
            .envs(&[("NIX_DAEMON_SOCKET_PATH".into(), socket.as_os_str().to_owned())])
    };
    let nix_cmd = nix.nix_store.with_file_name("nix");
    let probe = lower.core.clone();
    let batch = |socket: &Path| {
        // 16 clients at once, each `-q --requisites` of the system.
        let one = format!(
            "NIX_DAEMON_SOCKET_PATH='{}' '{}' --store daemon -q --requisites '{}' >/dev/null",
            socket.display(),
            nix.nix_store.display(),
            lower.system
        );
        Cmd::new("sh").arg("-c").arg(format!("for i in $(seq 16); do {one} & done; wait")).envs(&nix.env)
    };
    type MakeCmd<'a> = Box<dyn Fn(&Path) -> Cmd + 'a>;
    let cases: Vec<(&str, String, MakeCmd)> = vec![
        (
            "requisites",
            format!("`nix-store -q --requisites` of the system ({} paths) through the socket", lower.system_closure),
            Box::new(|s: &Path| client(s, &nix.nix_store, &["-q", "--requisites", &lower.system])),
        ),
        (
            "path-info",
            "`nix path-info` of one path through the socket".to_string(),
            Box::new(|s: &Path| client(s, &nix_cmd, &["path-info", &probe])),
        ),
        ("concurrent", "16 concurrent clients, each `-q --requisites` of the system".to_string(), Box::new(batch)),
    ];
    for (id, title, make) in cases {
        let mut notes = vec![format!(
            "the client is stock `{}` in both rows; ours serves an overlay (empty upper layer) on the lower store, nix-daemon serves the lower store itself",
            nix.version
        )];
        let entries = vec![
            Entry { label: "ours".into(), cmd: make(&ours_sock), before: Box::new(|| Ok(())), after: Box::new(|| Ok(())) },
            Entry { label: "nix-daemon".into(), cmd: make(&nix_sock), before: Box::new(|| Ok(())), after: Box::new(|| Ok(())) },
        ];
        let (ours0, nix0) = (server_cpu(served.child.id(), false), server_cpu(daemon.child.id(), true));
        let Measured { contenders, other_load, outputs } = measure(ctx, &format!("serve-{id}-{}", lower.label), entries, runs, &mut notes);
        let (ours1, nix1) = (server_cpu(served.child.id(), false), server_cpu(daemon.child.id(), true));
        let per_run = |a: Duration, b: Duration| (b.saturating_sub(a)).as_secs_f64() * 1000.0 / (runs + 1) as f64;
        notes.push(format!(
            "server CPU per run (from /proc, 10 ms ticks, the checking run included): ours {:.1} ms, nix-daemon {:.1} ms \
             (its per-connection children, reaped by it); the rest of the wall time is the stock client's",
            per_run(ours0, ours1),
            per_run(nix0, nix1)
        ));
        if outputs.len() == 2 && outputs[0] != outputs[1] {
            notes.push("**the two servers' answers differ**".into());
        }
        benches.push(Bench {
            id: format!("serve-{id}-{}", lower.label),
            number: "6",
            title,
            store: store.clone(),
            contenders,
            target: Target::RatioAtLeast(3.0),
            other_load,
            notes,
        });
    }
    drop(served);
    drop(daemon);
    let _ = ov.umount(&ctx.bin);
    benches
}

/// 4: overlay GC of `n` dead upper paths, without a policy and with lua/default.lua.
fn lua_bench(ctx: &Ctx, lower: &Lower, n: usize, runs: usize) -> Bench {
    log(ctx.start, &format!("lua: overlay gc of {n} dead upper paths, without and with lua/default.lua"));
    let dir = ctx.scratch.join("ov-gc");
    let spec = local_lower(&lower.root);
    let plain = Overlay::new(&dir, "store", &spec, "").expect("overlay config");
    let policy = ctx.repo.join("lua/default.lua");
    let lua = plain.variant("store-lua", &spec, &format!("policy = \"{}\"\n", policy.display())).expect("overlay config");
    let sd = StoreDir::new("/nix/store");
    let core = sd.parse_path(&lower.core).expect("core path");
    let core_info = {
        let mut c = gen::local_config(&lower.root);
        c.read_only = true;
        LocalStore::open(c).and_then(|s| s.path_info(&core)).expect("lower store").expect("core is valid")
    };
    let t = Instant::now();
    let objects = stores::upper_garbage(&ctx.scratch.join("tmp-upper"), n, &core, 0x5C4A_7C11).expect("upper garbage");
    let files: usize = objects.iter().map(|o| o.tree.files()).sum();
    let mut notes = vec![format!(
        "{} dead upper-only paths ({files} files, {:.1} MiB of NAR) in chains of five, each referring to `{}` of the lower store, \
         whose copied-up row is dead too: {} candidates; made in {}",
        objects.len(),
        objects.iter().map(|o| o.info.nar_size).sum::<u64>() as f64 / 1048576.0,
        lower.core,
        objects.len() + 1,
        dur(t.elapsed())
    )];
    notes.push(format!("policy: `{}` (its `gc` hook returns every candidate)", policy.display()));
    let bin = ctx.bin.clone();
    let regen_time = std::cell::RefCell::new(Vec::new());
    let regen = || -> Result<(), String> {
        let t = Instant::now();
        plain.clear(&bin)?;
        stores::write_objects(&plain.upper(), &objects).map_err(|e| format!("writing the upper layer: {e}"))?;
        let store = LocalStore::open(stores::upper_config(&plain.merged())).map_err(|e| e.to_string())?;
        let mut regs = vec![overlay_store::store::local::Registration { info: core_info.clone(), drv_outputs: Vec::new() }];
        regs.extend(objects.iter().map(Object::registration));
        store.register(&regs).map_err(|e| e.to_string())?;
        drop(store);
        plain.mount(&bin)?;
        regen_time.borrow_mut().push(t.elapsed());
        Ok(())
    };
    let check = || -> Result<(), String> {
        expect_rows(&plain, 0)?;
        let left = stores::count_entries(&plain.upper()).map_err(|e| e.to_string())?;
        if left != 0 {
            return Err(format!("{left} store paths left in the upper layer"));
        }
        Ok(())
    };
    let entries = vec![
        Entry { label: "no policy".into(), cmd: plain.cmd(&ctx.bin, &["gc"]), before: Box::new(regen), after: Box::new(check) },
        Entry { label: "lua/default.lua".into(), cmd: lua.cmd(&ctx.bin, &["gc"]), before: Box::new(regen), after: Box::new(check) },
    ];
    let Measured { contenders, other_load, .. } = measure(ctx, "lua-gc", entries, runs, &mut notes);
    let rt = regen_time.borrow().clone();
    if !rt.is_empty() {
        notes.push(format!("writing the upper garbage again (files and rows, untimed) took {} (median)", dur(run::median(rt))));
    }
    let _ = plain.umount(&ctx.bin);
    Bench {
        id: "lua-gc".into(),
        number: "4",
        title: format!("overlay `gc` of {n} dead upper paths: Lua `gc` hook overhead"),
        store: format!("overlay on the {}-path lower", lower.paths),
        contenders,
        target: Target::OverheadBelow(0.2),
        other_load,
        notes,
    }
}

/// 3: `gc` against `nix-store --gc` on the GC store, with `rm -rf` as the floor.
fn gc_bench(ctx: &Ctx, nix: &Nix, gcs: &stores::GcStore, root: &Path, runs: usize) -> Bench {
    log(ctx.start, &format!("gc: ours vs nix-store --gc, {} dead paths of {}", gcs.dead.len(), gcs.total()));
    let live = gcs.live;
    let real = root.join("nix/store");
    let state = root.join("nix/var/nix");
    let mut notes = vec![format!(
        "the store: {} paths, {} live (reachable from {} gcroots through {} environments referring to the graph's {} tops), {} dead with {} files \
         ({:.1} MiB of file data, {} references); before each run the dead paths' files and rows are written again; after each GC exactly \
         the {live} live paths must remain (rows and directories)",
        gcs.total(),
        live,
        gcs.roots,
        gcs.envs,
        gcs.tops,
        gcs.dead.len(),
        gcs.dead_files,
        gcs.dead_bytes as f64 / 1048576.0,
        gcs.dead_refs
    )];
    let regen_time = std::cell::RefCell::new(Vec::new());
    let regen = || -> Result<(), String> {
        let t = Instant::now();
        stores::restore_dead(root, &gcs.dead).map_err(|e| format!("restoring the dead paths: {e}"))?;
        regen_time.borrow_mut().push(t.elapsed());
        Ok(())
    };
    let check = || -> Result<(), String> {
        let rows = stores::count_rows(&state).map_err(|e| e.to_string())? as usize;
        let entries = stores::count_entries(&real).map_err(|e| e.to_string())?;
        if rows != live || entries != live {
            return Err(format!("after GC: {rows} rows and {entries} store directory entries, expected {live}"));
        }
        Ok(())
    };
    let dead_dirs: Vec<PathBuf> = gcs.dead.iter().map(|o| real.join(o.info.path.basename())).collect();
    let check_rm = || -> Result<(), String> {
        match dead_dirs.iter().find(|p| p.exists()) {
            Some(p) => Err(format!("{} is still there", p.display())),
            None => Ok(()),
        }
    };
    let uri = format!("local?root={}", root.display());
    let ours = Cmd::new(&ctx.bin).arg("--store").arg(&uri).arg("gc");
    let nix_cmd = Cmd::new(&nix.nix_store).arg("--store").arg(root).arg("--gc").envs(&nix.env);
    let rm = Cmd::new("rm").arg("-rf").args(dead_dirs.iter());
    let entries = vec![
        Entry { label: "ours".into(), cmd: ours, before: Box::new(regen), after: Box::new(check) },
        Entry { label: "Nix".into(), cmd: nix_cmd, before: Box::new(regen), after: Box::new(check) },
        Entry { label: "`rm -rf` floor".into(), cmd: rm, before: Box::new(regen), after: Box::new(check_rm) },
    ];
    let Measured { contenders, other_load, outputs } = measure(ctx, "gc-vs-nix", entries, runs, &mut notes);
    // The deletion summaries of the checking runs.
    for (label, out) in ["ours", "Nix"].iter().zip(&outputs) {
        let said: Vec<&str> = out.lines().filter(|l| l.contains("store paths deleted")).collect();
        if !said.is_empty() {
            notes.push(format!("{label} said: `{}`", said.join(" ")));
        }
    }
    let rt = regen_time.borrow().clone();
    if !rt.is_empty() {
        notes.push(format!("writing the dead part again (files and rows, untimed) took {} (median)", dur(run::median(rt))));
    }
    notes.push("`rm -rf` is given the dead paths' directories only; it leaves the rows (the next run's restore rewrites them)".into());
    Bench {
        id: "gc-vs-nix".into(),
        number: "3",
        title: format!("GC: {} dead paths, {} files, against `nix-store --gc`", gcs.dead.len(), gcs.dead_files),
        store: format!("{}-path local store", gcs.total()),
        contenders,
        target: Target::RatioAtLeast(1.3),
        other_load,
        notes,
    }
}

/// Where the bench executable's profile directory is (`<target>/release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).expect("<target>/release/deps/overlaybench-…").to_path_buf()
}

/// `cargo build --release --bin overlay-store`; the binary it made.
fn build_binary(manifest: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "overlay-store", "--manifest-path"])
        .arg(manifest.join("Cargo.toml"))
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build --release --bin overlay-store failed");
    let bin = profile_dir().join("overlay-store");
    assert!(bin.is_file(), "no binary at {}", bin.display());
    bin
}

fn machine_facts(repo: &Path, scratch: &Scratch, nix: Option<&Nix>, date: &str) -> Vec<(String, String)> {
    let scratch = if scratch.tmpfs {
        "tmpfs (mounted by the bench in its own mount namespace)".into()
    } else {
        format!("{} (OVERLAYBENCH_DIR)", scratch.dir.display())
    };
    let mut facts = machine::facts(scratch, repo);
    facts.push(("Nix".into(), nix.map_or("not found".into(), |n| n.version.clone())));
    facts.push(("date".into(), date.into()));
    facts
}

/// Other benchmarks and builds running now (they would disturb the timings).
fn other_benchmarks() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else { return found };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == me || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let program = cmd.split(' ').next().unwrap_or("");
        let builds = program.ends_with("/rustc") || program == "rustc" || program.ends_with("/cargo") || program == "cargo";
        if (cmd.contains("storebench") || builds) && !cmd.contains("overlaybench") {
            let short: String = cmd.trim().chars().take(70).collect();
            found.push(format!("`{short}{}` (pid {name})", if cmd.trim().chars().count() > 70 { "…" } else { "" }));
        }
    }
    found
}

fn store_row(name: &str, g: &gen::Generated, notes: String) -> StoreRow {
    StoreRow {
        name: name.into(),
        paths: g.paths,
        references: g.references,
        nar_mib: g.nar_bytes as f64 / 1048576.0,
        depth: g.depth,
        made_in: g.total_time(),
        notes,
    }
}

fn lower_from(label: &'static str, g: &gen::Generated, paths: usize) -> Lower {
    let a = g.anchors.as_ref().expect("a graph store");
    Lower { label, root: g.root.clone(), paths, system: a.system.clone(), system_closure: a.system_closure, core: a.core.clone() }
}

fn main() {
    // First, while single-threaded: our own mount namespace.
    if let Err(e) = private_mount_namespace() {
        eprintln!("overlaybench: cannot make a private mount namespace ({e}); run as root");
        std::process::exit(1);
    }
    let start = Instant::now();
    let quick = env_flag("OVERLAYBENCH_QUICK") || std::env::args().any(|a| a == "--quick");
    let plan = Plan::new(quick);
    let parts = Parts::from_env();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_path = match std::env::var_os("OVERLAYBENCH_OUT") {
        Some(p) => PathBuf::from(p),
        None if quick || !parts.all() => profile_dir().join(if quick { "overlaybench-quick.md" } else { "overlaybench-partial.md" }),
        None => repo.join("BENCHMARKS-overlay.md"),
    };
    let bin = match std::env::var_os("OVERLAYBENCH_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            log(start, "cargo build --release --bin overlay-store");
            build_binary(&repo)
        }
    };
    let scratch = Scratch::new();
    let nix = Nix::detect(&scratch.path("home"));
    log(
        start,
        &format!(
            "{} run; scratch {}{}; ours {}; Nix: {}; report: {}",
            if quick { "quick" } else { "full" },
            scratch.dir.display(),
            if scratch.tmpfs { " (tmpfs)" } else { "" },
            bin.display(),
            nix.as_ref().map_or("not found", |n| n.version.as_str()),
            out_path.display()
        ),
    );
    let date = machine::sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let disturbed = other_benchmarks();
    if !disturbed.is_empty() {
        log(start, &format!("warning: other benchmarks or builds are running: {}", disturbed.join(", ")));
    }
    let idle = CpuMeter::start();
    std::thread::sleep(Duration::from_secs(2));
    let load_before = idle.other_cores();
    let mut report = Report {
        quick,
        facts: machine_facts(&repo, &scratch, nix.as_ref(), &date),
        sizes: String::new(),
        benches: Vec::new(),
        stores: Vec::new(),
        extra: Vec::new(),
        elapsed: Duration::ZERO,
        date,
        load_before,
        disturbed,
    };
    let profile = std::env::var_os("OVERLAYBENCH_PROFILE").map(PathBuf::from);
    if let Some(p) = &profile {
        fs::create_dir_all(p).expect("create the OVERLAYBENCH_PROFILE directory");
    }
    let ctx = Ctx { start, bin, nix, scratch: scratch.dir.clone(), repo: repo.clone(), profile };

    // The stores.
    let need_small = parts.copyup || parts.import || parts.lua || parts.serve;
    let need_big = parts.copyup || parts.import || parts.daemon || parts.gc || parts.serve;
    let small = need_small.then(|| {
        log(start, &format!("generating the small lower store ({} paths)", plan.small_total));
        let g = gen::graph_store(&scratch.path("small"), &plan.shape(plan.small_total)).expect("generate the small store");
        report.stores.push(store_row(
            "small lower store",
            &g,
            format!("system closure {} paths", g.anchors.as_ref().map_or(0, |a| a.system_closure)),
        ));
        lower_from("small", &g, g.paths)
    });
    let big_root = scratch.path("big");
    let big = need_big.then(|| {
        let graph_total = plan.big_total - plan.gc.extra();
        log(
            start,
            &format!("generating the large lower store / GC store ({} paths: graph {graph_total} + roots and dead part)", plan.big_total),
        );
        let gcs = stores::gc_store(&big_root, &plan.shape(graph_total), &plan.gc).expect("generate the large store");
        report.stores.push(store_row(
            "large lower store: graph part",
            &gcs.graph,
            format!("system closure {} paths", gcs.graph.anchors.as_ref().map_or(0, |a| a.system_closure)),
        ));
        report.stores.push(StoreRow {
            name: "large lower store: roots, environments, dead part".into(),
            paths: plan.gc.extra(),
            references: gcs.dead_refs + gcs.tops + plan.gc.envs,
            nar_mib: gcs.dead.iter().map(|o| o.info.nar_size).sum::<u64>() as f64 / 1048576.0,
            depth: 10,
            made_in: gcs.extra_time,
            notes: format!(
                "{} gcroots → {} environments → the graph's {} tops; {} dead paths with {} files",
                plan.gc.roots,
                plan.gc.envs,
                gcs.tops,
                gcs.dead.len(),
                gcs.dead_files
            ),
        });
        let lower = lower_from("large", &gcs.graph, gcs.total());
        (lower, gcs)
    });
    let label = |n: usize| if n % 1000 == 0 { format!("{}k", n / 1000) } else { n.to_string() };
    report.sizes = format!(
        "Sizes ({} mode): lower stores of {} and {} paths (storebench's graph shape: base {}, system {}, system chain {}); \
         the large one is also the GC store ({} gcroots, {} environments, {} dead paths of 11 files each); {} dead upper paths \
         for the Lua hook. Runs per measurement: copy-up/import {}, daemon {}, Lua {}, GC {}.",
        if quick { "quick" } else { "full" },
        label(plan.small_total),
        label(plan.big_total),
        plan.shape(1).base,
        plan.shape(1).system,
        plan.shape(1).system_chain,
        plan.gc.roots,
        plan.gc.envs,
        plan.gc.dead,
        plan.upper_garbage,
        plan.copy_runs,
        plan.daemon_runs,
        plan.lua_runs,
        plan.gc_runs
    );
    let copy_target = Target::Below(Duration::from_millis(100));
    let import_target = Target::Below(Duration::from_millis(300));
    let lowers: Vec<&Lower> = small.iter().chain(big.as_ref().map(|(l, _)| l)).collect();
    if parts.copyup {
        report.benches.extend(copy_up_benches(&ctx, &lowers, plan.copy_runs, copy_target));
    }
    if parts.import {
        report.benches.extend(import_benches(&ctx, &lowers, plan.copy_runs, import_target));
    }
    if parts.lua {
        if let Some(l) = &small {
            report.benches.push(lua_bench(&ctx, l, plan.upper_garbage, plan.lua_runs));
        }
    }
    if parts.daemon {
        match (&ctx.nix, &big) {
            (Some(nix), Some((l, _))) => report.benches.push(daemon_bench(&ctx, nix, l, plan.daemon_runs)),
            _ => log(start, "daemon: skipped (no Nix)"),
        }
    }
    if parts.serve {
        match &ctx.nix {
            Some(nix) => {
                for l in &lowers {
                    report.benches.extend(serve_benches(&ctx, nix, l, plan.daemon_runs));
                }
            }
            None => log(start, "serve: skipped (no Nix)"),
        }
    }
    // GC last: it deletes from the large store (every overlay on it is unmounted by now).
    if parts.gc {
        match (&ctx.nix, &big) {
            (Some(nix), Some((_, gcs))) => report.benches.push(gc_bench(&ctx, nix, gcs, &big_root, plan.gc_runs)),
            _ => log(start, "gc: skipped (no Nix)"),
        }
    }
    for b in &report.benches {
        log(
            start,
            &format!(
                "{} [{}]: {} (target {}) {}",
                b.title,
                b.store,
                b.value(),
                b.target_text(),
                match b.pass() {
                    Some(true) => "pass",
                    Some(false) => "FAIL",
                    None => "",
                }
            ),
        );
    }
    report.elapsed = start.elapsed();
    let kept = report::kept_section(&out_path);
    fs::write(&out_path, report.render(&kept)).expect("write the report");
    log(start, &format!("wrote {}", out_path.display()));
    drop(ctx);
    drop(scratch);
}
