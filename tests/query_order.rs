//! Oracle property tests: on generated stores (random reference graphs), every list query
//! prints exactly the bytes `nix-store -q` prints for the same database, one argument or
//! several, on a local store and through an overlay; `export` writes the same stream.
//!
//! `ORACLE_SEED` and `ORACLE_PATHS` choose the store (CI uses the fixed default);
//! `ORACLE_QUERIES` how many paths are asked about.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use overlay_store::format::export;
use overlay_store::format::nar::NarWriter;
use overlay_store::format::{StoreDir, StorePath};

const FLAGS: [&str; 4] = ["--requisites", "--references", "--referrers", "--referrers-closure"];

/// splitmix64: small, seedable, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A generated store as an export stream: path `i` refers to a few earlier paths (mostly
/// recent ones, sometimes any), now and then to itself; names and hashes are random, so
/// name order has nothing to do with the graph. `refs_into` are extra paths (already in
/// another store) the new paths may also refer to.
struct Generated {
    paths: Vec<StorePath>,
    stream: Vec<u8>,
}

fn generate(rng: &mut Rng, n: usize, refs_into: &[StorePath]) -> Generated {
    const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let sd = StoreDir::new("/nix/store");
    let mut paths: Vec<StorePath> = Vec::with_capacity(n);
    let mut stream = Vec::new();
    for i in 0..n {
        let hash: String = (0..32).map(|_| NIX32[rng.below(32)] as char).collect();
        let name = format!("{}-{i}", ["lib", "bin", "dev", "doc", "env"][rng.below(5)]);
        let path = StorePath::from_basename(&format!("{hash}-{name}")).unwrap();
        let mut refs = BTreeSet::new();
        for _ in 0..rng.below(5) {
            if !paths.is_empty() {
                let j = if rng.below(3) == 0 { rng.below(paths.len()) } else { paths.len() - 1 - rng.below(paths.len().min(30)) };
                refs.insert(paths[j].clone());
            }
        }
        if !refs_into.is_empty() && rng.below(2) == 0 {
            refs.insert(refs_into[rng.below(refs_into.len())].clone());
        }
        if rng.below(10) == 0 {
            refs.insert(path.clone());
        }
        let contents: String = refs.iter().map(|r| format!("{}\n", sd.display(r))).collect();
        export::write_item(&mut stream, &sd, &path, &refs, None, |w| {
            let mut nw = NarWriter::new(w);
            nw.magic()?;
            nw.strs(&["(", "type", "regular", "contents"])?;
            nw.str(contents.as_bytes())?;
            nw.str(b")")
        })
        .unwrap();
        paths.push(path);
    }
    export::write_end(&mut stream).unwrap();
    Generated { paths, stream }
}

/// The argument lists to ask about: single paths, and a few sets of two or three.
fn samples(rng: &mut Rng, paths: &[StorePath], count: usize) -> Vec<Vec<String>> {
    let sd = StoreDir::new("/nix/store");
    let mut out = Vec::new();
    for k in 0..count {
        let arity = if k % 4 == 3 { 2 + rng.below(2) } else { 1 };
        out.push((0..arity).map(|_| sd.display(&paths[rng.below(paths.len())])).collect());
    }
    out
}

/// Every flag on every sample: our output against `nix-store -q` on `nix_store_uri`.
fn compare(s: &Scratch, ours_store: &str, nix_store_uri: &str, samples: &[Vec<String>], flags: &[&str]) {
    let mut compared = 0;
    for args in samples {
        for flag in flags {
            let mut a: Vec<&str> = vec!["-q", flag];
            a.extend(args.iter().map(String::as_str));
            let mut b: Vec<&str> = vec!["--store", nix_store_uri];
            b.extend_from_slice(&a);
            let nix_out = nix(s, "nix-store", &b, None).ok().stdout;
            let mut q: Vec<&str> = vec!["query", flag];
            q.extend(args.iter().map(String::as_str));
            let our_out = ours(ours_store, &q).ok().stdout;
            assert_eq!(
                String::from_utf8_lossy(&our_out),
                String::from_utf8_lossy(&nix_out),
                "query {flag} {args:?} differs from nix-store -q"
            );
            compared += 1;
        }
    }
    assert!(compared > 0);
}

#[test]
fn list_queries_and_export_match_nix_on_a_generated_local_store() {
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let mut rng = Rng(env_num("ORACLE_SEED", 0x5eed));
    let g = generate(&mut rng, env_num("ORACLE_PATHS", 2000) as usize, &[]);
    let root = s.join("store");
    let store = format!("local?root={}", root.display());
    ours_in(&store, &["import"], Some(&g.stream)).ok();
    let samples = samples(&mut rng, &g.paths, env_num("ORACLE_QUERIES", 40) as usize);
    compare(&s, &store, root.to_str().unwrap(), &samples, &FLAGS);
    // `export` of a set (given in any order) writes Nix's stream, byte for byte.
    for args in samples.iter().filter(|a| a.len() > 1).take(3) {
        let closure =
            ours(&store, &[&["query", "--requisites"][..], &args.iter().map(String::as_str).collect::<Vec<_>>()].concat()).ok().lines();
        let mut shuffled = closure.clone();
        shuffled.reverse();
        let mut e: Vec<&str> = vec!["export"];
        e.extend(shuffled.iter().map(String::as_str));
        let ours_stream = ours(&store, &e).ok().stdout;
        let mut n: Vec<&str> = vec!["--store", root.to_str().unwrap(), "--export"];
        n.extend(shuffled.iter().map(String::as_str));
        let nix_stream = nix(&s, "nix-store", &n, None).ok().stdout;
        assert!(ours_stream == nix_stream, "export of {} paths differs from nix-store --export", closure.len());
    }
}

#[test]
fn list_queries_match_nix_through_an_overlay() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let s = Scratch::new();
        let l = Layers::new(&base);
        let mut rng = Rng(env_num("ORACLE_SEED", 0x5eed) ^ 0x0f0f);
        let lower = generate(&mut rng, env_num("ORACLE_PATHS", 2000) as usize, &[]);
        ours_in(&l.lower_uri(), &["import"], Some(&lower.stream)).ok();
        let cfg = l.config();
        ours(&cfg, &["mount"]).ok();
        // Nothing upper yet: every list through the overlay is the lower store's.
        let queries = env_num("ORACLE_QUERIES", 40) as usize;
        let lower_samples = samples(&mut rng, &lower.paths, queries / 2);
        compare(&s, &cfg, l.lower().to_str().unwrap(), &lower_samples, &FLAGS);
        // New upper paths referring into the lower store: their closures are copied up,
        // so stock Nix reading the upper database is the oracle for them.
        let upper = generate(&mut rng, 200, &lower.paths);
        ours_in(&cfg, &["import"], Some(&upper.stream)).ok();
        let upper_samples = samples(&mut rng, &upper.paths, queries / 2);
        compare(&s, &cfg, &l.nix_view(), &upper_samples, &["--requisites", "--references"]);
        assert!(Path::new(&l.upper()).read_dir().unwrap().count() >= 200);
    });
}
