//! Synthetic stores, written with the library itself.
//!
//! A store is planned in memory first: a list of nodes, each naming its references by
//! index, always to earlier nodes, so index order is a topological order. Then each node
//! is realised on disk in dependency waves (all nodes whose references are done, in
//! parallel): its files are written under a temporary name in the real store directory,
//! with every reference's full store path in the contents (so a reference scanner would
//! find exactly the recorded references), NAR-hashed with `nar::dump_path`, named with
//! `make_fixed_output_path` (a `source` path with references), moved into place and
//! canonicalised. Last, everything is registered with `LocalStore::register` in big
//! batches, in index order, so every batch is closed under references or refers to
//! paths registered before it.
//!
//! The graph store has the shape of a real machine's store:
//!
//! ```text
//! base    shared libraries; node 0 is `core` (glibc-like), node 1 is `libmid`
//! system  packages of the running system, one deep chain among them
//! root    the system: refers to every base/system node nothing else refers to,
//!         so its closure is exactly base + system + itself
//! rest    everything else (old generations, dev shells, sources), with deep chains;
//!         refers to base, system and earlier rest nodes
//! ```
//!
//! A quarter of all nodes refer to `core` (wide fan-in); `libmid` has a fixed number of
//! referrers, all in the system, so it has the same referrers in every store size. Base,
//! system and root come from their own random stream, so two stores with the same shape
//! parameters except `total` have the *same* system closure, path for path: queries on
//! it can be compared across store sizes.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::canonical as canonicalise;
use overlay_store::format::hash::{HashAlgo, HashSink};
use overlay_store::format::{ContentAddress, FileIngestion, Hash, StoreDir, StorePath};
use overlay_store::store::fs::tree::dump as dump_path;
use overlay_store::store::local::{LocalConfig, LocalStore, Registration};
use overlay_store::store::PathInfo;

/// SplitMix64: small, fast, deterministic; plenty for synthetic data.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); n > 0.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Log-uniform in [lo, hi].
    pub fn log_uniform(&mut self, lo: f64, hi: f64) -> f64 {
        (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// What a node's files look like.
#[derive(Clone, Debug)]
enum Body {
    /// A small text file of about `size` bytes.
    File { size: usize },
    /// A small package: `bin/<name>` (executable), `<name>.conf`, `share` (a symlink).
    Package { size: usize },
    /// One file of `size` pseudo-random bytes (for the contents-checking store).
    Blob { size: u64 },
}

#[derive(Clone, Debug)]
struct Node {
    name: String,
    refs: Vec<u32>,
    body: Body,
    deriver: bool,
}

/// The parameters of a graph store.
#[derive(Clone, Debug)]
pub struct GraphShape {
    /// All paths, the system root included.
    pub total: usize,
    /// Shared libraries, `core` and `libmid` among them.
    pub base: usize,
    /// System packages besides the base.
    pub system: usize,
    /// Length of the chain inside the system.
    pub system_chain: usize,
    /// Length of each chain among the other paths.
    pub rest_chain: usize,
    /// Referrers of `libmid`, all inside the system.
    pub libmid_referrers: usize,
    pub seed: u64,
}

/// Paths of a generated store worth querying, with what the queries must answer.
#[derive(Clone, Debug)]
pub struct Anchors {
    pub system: String,
    pub system_closure: usize,
    pub core: String,
    pub core_referrers: usize,
    pub libmid: String,
    pub libmid_referrers: usize,
    /// An ordinary path in the system, for start-up plus one lookup.
    pub probe: String,
}

/// A generated store: where it is, what is in it, and how long it took to make.
#[derive(Clone, Debug)]
pub struct Generated {
    pub root: PathBuf,
    pub paths: usize,
    pub references: usize,
    pub nar_bytes: u64,
    /// Longest reference chain (in nodes).
    pub depth: usize,
    pub write_time: Duration,
    pub register_time: Duration,
    pub anchors: Option<Anchors>,
}

impl Generated {
    pub fn total_time(&self) -> Duration {
        self.write_time + self.register_time
    }
}

const PREFIXES: &[&str] = &[
    "lib", "gtk", "py", "perl", "gnu", "qt", "x", "ssl", "curl", "font", "icu", "boost", "mesa", "llvm", "rust", "go", "node", "ruby",
    "lua", "gst", "kde", "gnome", "haskell", "ocaml", "tex", "sys", "net", "audio", "video", "cups",
];
const STEMS: &[&str] = &[
    "core", "utils", "base", "util", "parse", "xml", "json", "crypt", "compress", "image", "render", "shell", "dbus", "input", "proto",
    "fs", "http", "locale", "theme", "tools", "plugins", "daemon", "client", "server", "common",
];

fn package_name(rng: &mut Rng) -> String {
    let p = PREFIXES[rng.below(PREFIXES.len())];
    let s = STEMS[rng.below(STEMS.len())];
    format!("{p}{s}-{}.{}.{}", rng.below(12), rng.below(40), rng.below(10))
}

fn small_body(rng: &mut Rng) -> Body {
    let size = rng.log_uniform(64.0, 8192.0) as usize;
    if rng.chance(0.4) {
        Body::Package { size }
    } else {
        Body::File { size }
    }
}

/// Number of ordinary references: exponential with mean about 3.5, at most 24.
fn ref_count(rng: &mut Rng) -> usize {
    ((-(1.0 - rng.unit()).ln()) * 4.0).min(24.0) as usize
}

/// A popular base node: early base nodes are picked far more often (preferential).
/// Never `core` or `libmid`, which get their referrers explicitly.
fn pick_base(rng: &mut Rng, available: usize) -> Option<u32> {
    if available <= 2 {
        return None;
    }
    let u = rng.unit();
    Some(2 + ((available - 2) as f64 * u * u * u) as u32)
}

/// A nearby earlier node in `[start, i)`: packages mostly depend on their neighbours.
fn pick_near(rng: &mut Rng, start: usize, i: usize, window: usize) -> Option<u32> {
    if i <= start {
        return None;
    }
    let span = (i - start).min(window);
    Some((i - 1 - rng.below(span)) as u32)
}

fn finish_refs(mut refs: Vec<u32>) -> Vec<u32> {
    refs.sort_unstable();
    refs.dedup();
    refs
}

/// Plans the graph store: the nodes, the system root's index and the probe's index.
fn plan_graph(shape: &GraphShape) -> (Vec<Node>, usize, usize) {
    assert!(shape.base >= 3 && shape.total > shape.base + shape.system);
    let mut nodes: Vec<Node> = Vec::with_capacity(shape.total);
    let mut sys = Rng::new(shape.seed);
    // Base libraries.
    nodes.push(Node { name: "glibc-2.35-224".into(), refs: vec![], body: Body::Package { size: 4096 }, deriver: true });
    nodes.push(Node { name: "zlib-1.2.13".into(), refs: vec![0], body: Body::Package { size: 2048 }, deriver: true });
    for i in 2..shape.base {
        let mut refs = Vec::new();
        if sys.chance(0.25) {
            refs.push(0);
        }
        for _ in 0..ref_count(&mut sys).min(8) {
            refs.extend(pick_base(&mut sys, i));
        }
        nodes.push(Node { name: package_name(&mut sys), refs: finish_refs(refs), body: small_body(&mut sys), deriver: true });
    }
    // System packages, with one deep chain (think of the stages of a bootstrap).
    let sys_start = shape.base;
    let sys_end = shape.base + shape.system;
    let chain_start = sys_start + shape.system / 4;
    let libmid_every = (shape.system / shape.libmid_referrers.max(1)).max(1);
    for i in sys_start..sys_end {
        let mut refs = Vec::new();
        if sys.chance(0.25) {
            refs.push(0);
        }
        if (i - sys_start) % libmid_every == 0 && (i - sys_start) / libmid_every < shape.libmid_referrers {
            refs.push(1);
        }
        if i > chain_start && i < chain_start + shape.system_chain {
            refs.push((i - 1) as u32);
        }
        for _ in 0..ref_count(&mut sys) {
            if sys.chance(0.55) {
                refs.extend(pick_base(&mut sys, shape.base));
            } else {
                refs.extend(pick_near(&mut sys, sys_start, i, 300));
            }
        }
        nodes.push(Node { name: package_name(&mut sys), refs: finish_refs(refs), body: small_body(&mut sys), deriver: true });
    }
    // The system: refers to everything in base + system that nothing else refers to.
    let mut referred = vec![false; sys_end];
    for n in &nodes {
        for &r in &n.refs {
            referred[r as usize] = true;
        }
    }
    let tops: Vec<u32> = (0..sys_end).filter(|&i| !referred[i]).map(|i| i as u32).collect();
    let system = nodes.len();
    nodes.push(Node { name: "nixos-system-bench-22.05".into(), refs: tops, body: Body::Package { size: 1024 }, deriver: true });
    let probe = sys_start + shape.system / 2;
    // Everything else, from its own stream; a fifth of it in deep chains.
    let rest_start = nodes.len();
    let mut rest = Rng::new(shape.seed ^ 0x5E_ED0F_4E57);
    for i in rest_start..shape.total {
        let k = i - rest_start;
        let mut refs = Vec::new();
        if rest.chance(0.25) {
            refs.push(0);
        }
        let chain_len = shape.rest_chain.max(1);
        if (k / chain_len) % 5 == 0 && k % chain_len != 0 {
            refs.push((i - 1) as u32);
        }
        for _ in 0..ref_count(&mut rest) {
            let u = rest.unit();
            if u < 0.4 {
                refs.extend(pick_base(&mut rest, shape.base));
            } else if u < 0.6 {
                refs.push((sys_start + rest.below(shape.system)) as u32);
            } else {
                refs.extend(pick_near(&mut rest, rest_start, i, 500));
            }
        }
        nodes.push(Node { name: package_name(&mut rest), refs: finish_refs(refs), body: small_body(&mut rest), deriver: rest.chance(0.8) });
    }
    (nodes, system, probe)
}

/// Plans the contents-checking store: `count` blobs summing to `total_bytes`, sizes
/// log-uniform (many small, a few of several MiB), each referring to the first.
fn plan_blobs(count: usize, total_bytes: u64, seed: u64) -> Vec<Node> {
    let mut rng = Rng::new(seed);
    let raw: Vec<f64> = (0..count).map(|_| rng.log_uniform(1024.0, 8.0 * 1024.0 * 1024.0)).collect();
    let scale = total_bytes as f64 / raw.iter().sum::<f64>();
    raw.iter()
        .enumerate()
        .map(|(i, s)| Node {
            name: format!("blob-{i}.dat"),
            refs: if i == 0 { vec![] } else { vec![0] },
            body: Body::Blob { size: (s * scale) as u64 },
            deriver: true,
        })
        .collect()
}

/// A file system object to write.
enum Obj {
    File { exec: bool, data: Vec<u8> },
    Blob { size: u64, seed: u64 },
    Dir(Vec<(String, Obj)>),
    Link(String),
}

fn filler(text: &mut String, size: usize, rng: &mut Rng) {
    let mut k = 0;
    while text.len() < size {
        text.push_str(&format!("setting_{k} = {:016x}{:08x}\n", rng.next_u64(), rng.next_u64() as u32));
        k += 1;
    }
}

/// The files of node `idx`, mentioning every reference's full store path.
fn object(idx: usize, node: &Node, refs: &[String], seed: u64) -> Obj {
    let mut rng = Rng::new(seed ^ (idx as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let header = format!("# storebench object {idx}: {}\n", node.name);
    match node.body {
        Body::Blob { size } => Obj::Blob { size, seed: rng.next_u64() },
        Body::File { size } => {
            let mut text = header;
            for r in refs {
                text.push_str(&format!("ref {r}\n"));
            }
            filler(&mut text, size, &mut rng);
            Obj::File { exec: false, data: text.into_bytes() }
        }
        Body::Package { size } => {
            let (a, b) = refs.split_at(refs.len() / 2);
            let mut script = format!("#!{}/bin/sh\n{header}", a.first().map(String::as_str).unwrap_or(""));
            for r in a {
                script.push_str(&format!("export PATH={r}/bin:$PATH\n"));
            }
            filler(&mut script, size / 2, &mut rng);
            let mut conf = header;
            for r in b {
                conf.push_str(&format!("path = {r}/lib\n"));
            }
            filler(&mut conf, size / 2, &mut rng);
            let share = refs.first().map(|r| format!("{r}/share")).unwrap_or_else(|| "bin".into());
            Obj::Dir(vec![
                ("bin".into(), Obj::Dir(vec![(node.name.clone(), Obj::File { exec: true, data: script.into_bytes() })])),
                (format!("{}.conf", node.name), Obj::File { exec: false, data: conf.into_bytes() }),
                ("share".into(), Obj::Link(share)),
            ])
        }
    }
}

fn write_obj(path: &Path, obj: &Obj) -> io::Result<()> {
    match obj {
        Obj::File { exec, data } => {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(if *exec { 0o755 } else { 0o644 }).open(path)?;
            f.write_all(data)
        }
        Obj::Blob { size, seed } => {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(path)?;
            write_random(&mut f, *size, *seed)
        }
        Obj::Dir(entries) => {
            fs::create_dir(path)?;
            entries.iter().try_for_each(|(name, o)| write_obj(&path.join(name), o))
        }
        Obj::Link(target) => std::os::unix::fs::symlink(target, path),
    }
}

/// Writes `size` pseudo-random bytes, a MiB at a time.
pub fn write_random(out: &mut dyn Write, size: u64, seed: u64) -> io::Result<()> {
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = buf.len().min(left as usize);
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Children first, as a store object's modes and mtimes must end up.
fn canonicalise_obj(path: &Path, obj: &Obj) -> io::Result<()> {
    match obj {
        Obj::File { exec, .. } => canonicalise::canonicalise_file(path, *exec),
        Obj::Blob { .. } => canonicalise::canonicalise_file(path, false),
        Obj::Link(_) => canonicalise::canonicalise_symlink(path),
        Obj::Dir(entries) => {
            entries.iter().try_for_each(|(name, o)| canonicalise_obj(&path.join(name), o))?;
            canonicalise::canonicalise_dir(path)
        }
    }
}

/// One realised node.
struct Made {
    path: StorePath,
    nar_hash: Hash,
    nar_size: u64,
}

pub fn local_config(root: &Path) -> LocalConfig {
    LocalConfig {
        store_dir: StoreDir::new("/nix/store"),
        real: root.join("nix/store"),
        state: root.join("nix/var/nix"),
        read_only: false,
        immutable: false,
        lone_reader: false,
        create_links_dir: true,
    }
}

fn realise_one(real: &Path, sd: &StoreDir, idx: usize, node: &Node, made: &[Option<Made>], seed: u64) -> io::Result<Made> {
    let refs: BTreeSet<StorePath> =
        node.refs.iter().map(|&r| made[r as usize].as_ref().expect("references come first").path.clone()).collect();
    let ref_strings: Vec<String> = node.refs.iter().map(|&r| sd.display(&made[r as usize].as_ref().expect("done").path)).collect();
    let obj = object(idx, node, &ref_strings, seed);
    let tmp = real.join(format!(".storebench-tmp-{idx}"));
    write_obj(&tmp, &obj)?;
    let (nar_hash, nar_size) = dump_path(&tmp, HashSink::new(HashAlgo::Sha256))?.finish();
    let path = sd
        .make_fixed_output_path(&node.name, FileIngestion::Recursive, &nar_hash, &refs, false)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let dest = real.join(path.basename());
    fs::rename(&tmp, &dest)?;
    canonicalise_obj(&dest, &obj)?;
    Ok(Made { path, nar_hash, nar_size })
}

/// Writes, hashes, names and registers `nodes` as a new store at `root`.
fn build(root: &Path, nodes: &[Node], seed: u64, batch: usize) -> io::Result<(Generated, Vec<StorePath>)> {
    let t0 = Instant::now();
    let store = LocalStore::open(local_config(root)).map_err(|e| io::Error::other(e.to_string()))?;
    let sd = StoreDir::new("/nix/store");
    let real = store.config().real.clone();
    // Waves: a node's wave is one more than its deepest reference's.
    let mut wave = vec![0usize; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        wave[i] = n.refs.iter().map(|&r| wave[r as usize] + 1).max().unwrap_or(0);
    }
    let depth = wave.iter().copied().max().map_or(0, |d| d + 1);
    let mut waves: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (i, &w) in wave.iter().enumerate() {
        waves[w].push(i);
    }
    let mut made: Vec<Option<Made>> = (0..nodes.len()).map(|_| None).collect();
    for w in &waves {
        let done: Vec<io::Result<Made>> = w.par_iter().map(|&i| realise_one(&real, &sd, i, &nodes[i], &made, seed)).collect();
        for (&i, m) in w.iter().zip(done) {
            made[i] = Some(m?);
        }
    }
    let write_time = t0.elapsed();
    let t1 = Instant::now();
    let made: Vec<Made> = made.into_iter().map(|m| m.expect("every node realised")).collect();
    let mut references = 0;
    for start in (0..nodes.len()).step_by(batch) {
        let regs: Vec<Registration> = (start..(start + batch).min(nodes.len()))
            .map(|i| {
                let m = &made[i];
                let refs: BTreeSet<StorePath> = nodes[i].refs.iter().map(|&r| made[r as usize].path.clone()).collect();
                references += refs.len();
                let deriver = nodes[i].deriver.then(|| {
                    let h = Hash::sha256(format!("storebench-drv:{}", m.path.basename()).as_bytes());
                    let mut digest = [0u8; 20];
                    digest.copy_from_slice(&h.digest()[..20]);
                    StorePath::new(digest, &format!("{}.drv", nodes[i].name)).expect("valid name")
                });
                Registration {
                    info: PathInfo {
                        path: m.path.clone(),
                        deriver,
                        nar_hash: m.nar_hash,
                        references: refs,
                        registration_time: 0,
                        nar_size: m.nar_size,
                        ultimate: false,
                        sigs: BTreeSet::new(),
                        ca: Some(ContentAddress::Fixed(FileIngestion::Recursive, m.nar_hash)),
                    },
                    drv_outputs: vec![],
                }
            })
            .collect();
        store.register(&regs).map_err(|e| io::Error::other(e.to_string()))?;
    }
    drop(store); // closes the database: the WAL is checkpointed and removed
    let register_time = t1.elapsed();
    let generated = Generated {
        root: root.to_path_buf(),
        paths: nodes.len(),
        references,
        nar_bytes: made.iter().map(|m| m.nar_size).sum(),
        depth,
        write_time,
        register_time,
        anchors: None,
    };
    Ok((generated, made.into_iter().map(|m| m.path).collect()))
}

/// The closure size of node `root` (in memory, over the plan).
fn closure_size(nodes: &[Node], root: usize) -> usize {
    let mut seen = vec![false; nodes.len()];
    let mut stack = vec![root];
    seen[root] = true;
    let mut n = 0;
    while let Some(i) = stack.pop() {
        n += 1;
        for &r in &nodes[i].refs {
            if !seen[r as usize] {
                seen[r as usize] = true;
                stack.push(r as usize);
            }
        }
    }
    n
}

/// Generates a graph store of `shape` at `root`.
pub fn graph_store(root: &Path, shape: &GraphShape) -> io::Result<Generated> {
    let (nodes, system, probe) = plan_graph(shape);
    let (mut generated, paths) = build(root, &nodes, shape.seed, 25_000)?;
    let referrers_of = |t: u32| nodes.iter().filter(|n| n.refs.contains(&t)).count();
    let sd = StoreDir::new("/nix/store");
    generated.anchors = Some(Anchors {
        system: sd.display(&paths[system]),
        system_closure: closure_size(&nodes, system),
        core: sd.display(&paths[0]),
        core_referrers: referrers_of(0),
        libmid: sd.display(&paths[1]),
        libmid_referrers: referrers_of(1),
        probe: sd.display(&paths[probe]),
    });
    Ok(generated)
}

/// Generates the contents-checking store: `count` blobs, `total_bytes` in all.
pub fn blob_store(root: &Path, count: usize, total_bytes: u64, seed: u64) -> io::Result<Generated> {
    let nodes = plan_blobs(count, total_bytes, seed);
    Ok(build(root, &nodes, seed, 25_000)?.0)
}

/// A source tree for `add`: `files` files of pseudo-random bytes (a tenth executable),
/// `total_bytes` in all, in two levels of directories of about 100 files each.
pub fn source_tree(dir: &Path, files: usize, total_bytes: u64, seed: u64) -> io::Result<()> {
    let mut rng = Rng::new(seed);
    let raw: Vec<f64> = (0..files).map(|_| rng.log_uniform(256.0, 256.0 * 1024.0)).collect();
    let scale = total_bytes as f64 / raw.iter().sum::<f64>();
    let mut sizes: Vec<u64> = raw.iter().map(|s| (s * scale) as u64).collect();
    let short = total_bytes - sizes.iter().sum::<u64>();
    sizes[0] += short;
    let jobs: Vec<(PathBuf, u64, bool, u64)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let d = dir.join(format!("part{:02}", i / 500)).join(format!("sub{:02}", (i / 100) % 5));
            (d.join(format!("file{i:05}.bin")), size, rng.chance(0.1), rng.next_u64())
        })
        .collect();
    for (p, ..) in &jobs {
        fs::create_dir_all(p.parent().expect("has parent"))?;
    }
    jobs.par_iter().try_for_each(|(p, size, exec, seed)| -> io::Result<()> {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(if *exec { 0o755 } else { 0o644 }).open(p)?;
        write_random(&mut f, *size, *seed)
    })
}
