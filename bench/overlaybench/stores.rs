//! What the overlay benchmarks need beyond storebench's graph stores (`gen.rs`):
//!
//! - the **GC store**: a graph store made live by a handful of gcroots, plus a dead part
//!   of many small files that is written and registered again before every timed GC;
//! - **upper garbage**: small dead paths to put in an overlay's upper layer and upper
//!   database before every timed overlay GC.
//!
//! Everything is made with the library (`nar::dump_path` into a `HashSink`,
//! `make_fixed_output_path`, `canonicalise`, `LocalStore::register`). Objects that get
//! deleted by the benchmarks are kept in memory (their file trees and path infos), so
//! writing them again gives byte-identical files and rows, run after run.
//!
//! The GC store's shape:
//!
//! ```text
//! roots     `roots` profile paths, one gcroot symlink each (state/gcroots/overlaybench-K)
//! envs      `envs` user environments; root K refers to every roots-th of them
//! graph     the graph store; every path nothing else refers to (its "tops", the system
//!           among them) is referred to by exactly one environment, so all of it is live
//! dead      `dead` packages in chains of ten (an old generation refers to the one before
//!           it), each also referring to live paths; 11 small files in 7 directories each
//! ```

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::canonical::{canonicalise_dir, canonicalise_file, canonicalise_symlink, remove_tree};
use overlay_store::format::hash::{HashAlgo, HashSink};
use overlay_store::format::{ContentAddress, FileIngestion, StoreDir, StorePath};
use overlay_store::store::fs::tree::dump as dump_path;
use overlay_store::store::local::{LocalConfig, LocalStore, Registration};
use overlay_store::store::PathInfo;

use crate::gen::{self, Rng};

/// A file system object to write.
pub enum Tree {
    File {
        exec: bool,
        data: Vec<u8>,
    },
    Dir(Vec<(String, Tree)>),
    #[allow(dead_code)]
    Link(String),
}

impl Tree {
    /// Regular files in the tree.
    pub fn files(&self) -> usize {
        match self {
            Tree::File { .. } => 1,
            Tree::Dir(e) => e.iter().map(|(_, t)| t.files()).sum(),
            Tree::Link(_) => 0,
        }
    }

    /// Bytes in regular files.
    pub fn bytes(&self) -> u64 {
        match self {
            Tree::File { data, .. } => data.len() as u64,
            Tree::Dir(e) => e.iter().map(|(_, t)| t.bytes()).sum(),
            Tree::Link(_) => 0,
        }
    }

    /// Writes the tree at `path` (which must not exist), canonicalised as a store
    /// object's files are: read-only modes, mtime 1.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        match self {
            Tree::File { exec, data } => {
                let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(path)?;
                f.write_all(data)?;
                drop(f);
                canonicalise_file(path, *exec)
            }
            Tree::Dir(entries) => {
                fs::create_dir(path)?;
                for (name, t) in entries {
                    t.write(&path.join(name))?;
                }
                canonicalise_dir(path)
            }
            Tree::Link(target) => {
                std::os::unix::fs::symlink(target, path)?;
                canonicalise_symlink(path)
            }
        }
    }
}

/// A store object whose files and row can be written again after a GC removed them.
pub struct Object {
    pub info: PathInfo,
    pub tree: Tree,
}

impl Object {
    pub fn registration(&self) -> Registration {
        Registration { info: self.info.clone(), drv_outputs: Vec::new() }
    }
}

/// Writes `tree` under a temporary name in `dir`, NAR-hashes it, names it as a `source`
/// path with `refs`, and moves it to its store path in `dir` (`keep`) or removes it.
pub fn make_object(dir: &Path, sd: &StoreDir, name: &str, tree: Tree, refs: BTreeSet<StorePath>, keep: bool) -> io::Result<Object> {
    let tmp = dir.join(format!(".overlaybench-tmp-{name}"));
    tree.write(&tmp)?;
    let (nar_hash, nar_size) = dump_path(&tmp, HashSink::new(HashAlgo::Sha256))?.finish();
    let path = sd
        .make_fixed_output_path(name, FileIngestion::Recursive, &nar_hash, &refs, false)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    if keep {
        fs::rename(&tmp, dir.join(path.basename()))?;
    } else {
        remove_tree(&tmp)?;
    }
    let info = PathInfo {
        path,
        deriver: None,
        nar_hash,
        references: refs,
        registration_time: 0,
        nar_size,
        ultimate: false,
        sigs: BTreeSet::new(),
        ca: Some(ContentAddress::Fixed(FileIngestion::Recursive, nar_hash)),
    };
    Ok(Object { info, tree })
}

/// Writes every object's files under `dir` (replacing what is there) on all cores.
pub fn write_objects(dir: &Path, objects: &[Object]) -> io::Result<()> {
    objects.par_iter().try_for_each(|o| {
        let p = dir.join(o.info.path.basename());
        remove_tree(&p)?;
        o.tree.write(&p)
    })
}

/// Pseudo-random text of about `size` bytes (configuration-file-like lines).
fn text(rng: &mut Rng, size: usize, head: &str) -> Vec<u8> {
    let mut s = String::with_capacity(size + 64);
    s.push_str(head);
    let mut k = 0;
    while s.len() < size {
        s.push_str(&format!("option_{k} = {:016x}{:08x}\n", rng.next_u64(), rng.next_u64() as u32));
        k += 1;
    }
    s.into_bytes()
}

fn small(rng: &mut Rng, head: &str) -> Vec<u8> {
    let size = rng.log_uniform(64.0, 4096.0) as usize;
    text(rng, size, head)
}

fn file(data: Vec<u8>, exec: bool) -> Tree {
    Tree::File { exec, data }
}

/// A dead package: 11 small files in 7 directories, mentioning its references.
fn dead_tree(rng: &mut Rng, name: &str, refs: &[String]) -> Tree {
    let script = |rng: &mut Rng| small(rng, &format!("#!/bin/sh\nexec {} \"$@\"\n", refs.first().map_or("true", |s| s.as_str())));
    Tree::Dir(vec![
        ("bin".into(), Tree::Dir(vec![(name.into(), file(script(rng), true)), (format!("{name}-helper"), file(script(rng), true))])),
        ("etc".into(), Tree::Dir(vec![(format!("{name}.conf"), file(small(rng, "# configuration\n"), false))])),
        (
            "lib".into(),
            Tree::Dir(vec![
                (format!("lib{name}.a"), file(small(rng, "!<arch>\n"), false)),
                (format!("lib{name}.la"), file(small(rng, "# libtool library file\n"), false)),
                (format!("lib{name}.so.1"), file(small(rng, "\x7fELF"), false)),
            ]),
        ),
        (
            "nix-support".into(),
            Tree::Dir(vec![
                ("propagated-build-inputs".into(), file(format!("{}\n", refs.join(" ")).into_bytes(), false)),
                ("setup-hook".into(), file(small(rng, "addToSearchPath PATH \"$1/bin\"\n"), false)),
            ]),
        ),
        (
            "share".into(),
            Tree::Dir(vec![(
                "doc".into(),
                Tree::Dir(vec![
                    ("COPYING".into(), file(small(rng, "Permission is hereby granted\n"), false)),
                    ("NEWS".into(), file(small(rng, "Changes\n"), false)),
                    ("README".into(), file(small(rng, "About\n"), false)),
                ]),
            )]),
        ),
    ])
}

/// Sizes of the GC store's extra parts.
#[derive(Clone, Debug)]
pub struct GcShape {
    pub dead: usize,
    pub envs: usize,
    pub roots: usize,
    pub seed: u64,
}

impl GcShape {
    /// Paths besides the graph.
    pub fn extra(&self) -> usize {
        self.dead + self.envs + self.roots
    }
}

pub struct GcStore {
    pub graph: gen::Generated,
    /// Paths that stay: graph + environments + roots.
    pub live: usize,
    pub dead: Vec<Object>,
    pub dead_files: usize,
    pub dead_bytes: u64,
    pub dead_refs: usize,
    pub tops: usize,
    pub envs: usize,
    pub roots: usize,
    pub extra_time: Duration,
}

impl GcStore {
    pub fn total(&self) -> usize {
        self.live + self.dead.len()
    }
}

/// Makes the GC store at `root`: `gen::graph_store(graph)`, then roots, environments
/// and the dead part (registered, files in place).
pub fn gc_store(root: &Path, graph: &gen::GraphShape, shape: &GcShape) -> io::Result<GcStore> {
    let generated = gen::graph_store(root, graph)?;
    let t0 = Instant::now();
    let sd = StoreDir::new("/nix/store");
    let config = gen::local_config(root);
    let real = config.real.clone();
    let store = LocalStore::open(config.clone()).map_err(other)?;
    // The tops: paths no other path refers to.
    let tops: Vec<StorePath> = {
        let mut stmt = store
            .db()
            .connection()
            .prepare(
                "select path from ValidPaths v where not exists
                   (select 1 from Refs r where r.reference = v.id and r.referrer <> v.id) order by path",
            )
            .map_err(other)?;
        let rows: Vec<String> = stmt.query_map([], |r| r.get(0)).and_then(|r| r.collect()).map_err(other)?;
        rows.iter().map(|p| sd.parse_path(p).map_err(other)).collect::<io::Result<_>>()?
    };
    let graph_paths = store.db().all_paths().map_err(other)?;
    // Environments, each referring to a slice of the tops.
    let n = tops.len();
    let envs: Vec<Object> = (0..shape.envs)
        .into_par_iter()
        .map(|k| {
            let refs: BTreeSet<StorePath> = tops[k * n / shape.envs..(k + 1) * n / shape.envs].iter().cloned().collect();
            let listing: String = refs.iter().map(|r| format!("{}\n", sd.display(r))).collect();
            let tree = Tree::Dir(vec![("manifest".into(), file(listing.into_bytes(), false))]);
            make_object(&real, &sd, &format!("user-environment-{k:04}"), tree, refs, true)
        })
        .collect::<io::Result<_>>()?;
    // Roots: root K refers to environments K, K + roots, K + 2 roots, …
    let roots: Vec<Object> = (0..shape.roots)
        .map(|k| {
            let refs: BTreeSet<StorePath> = envs.iter().skip(k).step_by(shape.roots).map(|e| e.info.path.clone()).collect();
            let listing: String = refs.iter().map(|r| format!("{}\n", sd.display(r))).collect();
            let tree = Tree::Dir(vec![("generation".into(), file(listing.into_bytes(), false))]);
            make_object(&real, &sd, &format!("profile-{k}-link"), tree, refs, true)
        })
        .collect::<io::Result<_>>()?;
    let regs: Vec<Registration> = envs.iter().chain(&roots).map(Object::registration).collect();
    store.register(&regs).map_err(other)?;
    let gcroots = config.state.join("gcroots");
    for (k, r) in roots.iter().enumerate() {
        let link = gcroots.join(format!("overlaybench-{k}"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(sd.display(&r.info.path), &link)?;
    }
    // The dead part: chains of ten, made chain by chain on all cores.
    let core = graph_paths.iter().find(|p| p.name().starts_with("glibc-")).cloned().expect("the graph has core");
    const CHAIN: usize = 10;
    let chains: Vec<Vec<Object>> = (0..shape.dead.div_ceil(CHAIN))
        .into_par_iter()
        .map(|c| {
            let mut chain: Vec<Object> = Vec::new();
            for j in c * CHAIN..((c + 1) * CHAIN).min(shape.dead) {
                let mut rng = Rng::new(shape.seed ^ (j as u64).wrapping_mul(0x9E37_79B9));
                let mut refs = BTreeSet::new();
                if rng.chance(0.5) {
                    refs.insert(core.clone());
                }
                for _ in 0..1 + rng.below(3) {
                    refs.insert(graph_paths[rng.below(graph_paths.len())].clone());
                }
                if let Some(prev) = chain.last() {
                    refs.insert(prev.info.path.clone());
                }
                let ref_text: Vec<String> = refs.iter().map(|r| sd.display(r)).collect();
                let name = format!("stale{j:05}");
                let tree = dead_tree(&mut rng, &name, &ref_text);
                chain.push(make_object(&real, &sd, &format!("{name}-0.{}", j % 10), tree, refs, true)?);
            }
            Ok(chain)
        })
        .collect::<io::Result<_>>()?;
    let dead: Vec<Object> = chains.into_iter().flatten().collect();
    store.register(&dead.iter().map(Object::registration).collect::<Vec<_>>()).map_err(other)?;
    drop(store);
    Ok(GcStore {
        live: generated.paths + envs.len() + roots.len(),
        dead_files: dead.iter().map(|o| o.tree.files()).sum(),
        dead_bytes: dead.iter().map(|o| o.tree.bytes()).sum(),
        dead_refs: dead.iter().map(|o| o.info.references.len()).sum(),
        dead,
        tops: n,
        envs: envs.len(),
        roots: roots.len(),
        graph: generated,
        extra_time: t0.elapsed(),
    })
}

/// Writes the GC store's dead part again (files, then rows), as it was made.
pub fn restore_dead(root: &Path, dead: &[Object]) -> io::Result<()> {
    let config = gen::local_config(root);
    write_objects(&config.real, dead)?;
    let store = LocalStore::open(config).map_err(other)?;
    store.register(&dead.iter().map(Object::registration).collect::<Vec<_>>()).map_err(other)
}

/// `n` small dead paths for an overlay's upper layer, in chains of five, each referring
/// to `lower_ref` (a lower path with no references): three files in three directories.
/// Made (hashed) in `tmp`, not kept there.
pub fn upper_garbage(tmp: &Path, n: usize, lower_ref: &StorePath, seed: u64) -> io::Result<Vec<Object>> {
    let sd = StoreDir::new("/nix/store");
    const CHAIN: usize = 5;
    fs::create_dir_all(tmp)?;
    let chains: Vec<Vec<Object>> = (0..n.div_ceil(CHAIN))
        .into_par_iter()
        .map(|c| {
            let mut chain: Vec<Object> = Vec::new();
            for j in c * CHAIN..((c + 1) * CHAIN).min(n) {
                let mut rng = Rng::new(seed ^ (j as u64).wrapping_mul(0xA24B_AED4_963E_E407));
                let mut refs = BTreeSet::from([lower_ref.clone()]);
                if let Some(prev) = chain.last() {
                    refs.insert(prev.info.path.clone());
                }
                let name = format!("scratch{j:05}");
                let head: String = refs.iter().map(|r| format!("{}\n", sd.display(r))).collect();
                let tree = Tree::Dir(vec![
                    ("bin".into(), Tree::Dir(vec![(name.clone(), file(small(&mut rng, &format!("#!/bin/sh\n{head}")), true))])),
                    ("etc".into(), Tree::Dir(vec![(format!("{name}.conf"), file(small(&mut rng, "# conf\n"), false))])),
                    ("share".into(), Tree::Dir(vec![(format!("{name}.txt"), file(small(&mut rng, "notes\n"), false))])),
                ]);
                chain.push(make_object(tmp, &sd, &name, tree, refs, false)?);
            }
            Ok(chain)
        })
        .collect::<io::Result<_>>()?;
    Ok(chains.into_iter().flatten().collect())
}

/// An overlay's upper store as a plain local store (state under the merged root), for
/// writing rows while the overlay is not mounted.
pub fn upper_config(merged_root: &Path) -> LocalConfig {
    LocalConfig {
        store_dir: StoreDir::new("/nix/store"),
        real: merged_root.join("nix/store"),
        state: merged_root.join("nix/var/nix"),
        read_only: false,
        immutable: false,
        lone_reader: false,
        create_links_dir: false,
    }
}

/// Store-path entries (not `.links`, locks or temporaries) in a store directory.
pub fn count_entries(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        let s = name.to_string_lossy();
        if !s.starts_with('.') && !s.ends_with(".lock") && StorePath::from_basename(&s).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Rows in a store database, read without opening the store for writing.
pub fn count_rows(state: &Path) -> io::Result<u64> {
    let db = state.join("db/db.sqlite");
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(other)?;
    conn.query_row("select count(*) from ValidPaths", [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(other)
}

pub fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}
