//! `query`, as `nix-store --query`: one operation, applied to every argument.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;

use clap::{ArgGroup, Args};

use overlay_store::format::StorePath;
use overlay_store::spec::StoreSpec;
use overlay_store::store::local::roots::RootFinder;
use overlay_store::store::{PathInfo, Store, StoreError};

use super::{out_err, paths, stdout, CliResult};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("op").required(true).multiple(false)))]
pub struct QueryArgs {
    /// The closure of the paths, dependencies first.
    #[arg(short = 'R', long, group = "op")]
    requisites: bool,
    /// The immediate references of the paths.
    #[arg(long, group = "op")]
    references: bool,
    /// The paths that refer to the paths.
    #[arg(long, group = "op")]
    referrers: bool,
    /// The closure of the paths under the referrer relation.
    #[arg(long = "referrers-closure", group = "op")]
    referrers_closure: bool,
    /// The derivation that produced each path, or `unknown-deriver`.
    #[arg(long, group = "op")]
    deriver: bool,
    /// The outputs of each derivation (a non-derivation stands for itself).
    #[arg(long, group = "op")]
    outputs: bool,
    /// The derivations in the store that have each path as an output.
    #[arg(long = "valid-derivers", group = "op")]
    valid_derivers: bool,
    /// The NAR hash of each path (`sha256:<nix32>`).
    #[arg(long, group = "op")]
    hash: bool,
    /// The NAR size of each path.
    #[arg(long, group = "op")]
    size: bool,
    /// The garbage collector roots that keep each path alive.
    #[arg(long, group = "op")]
    roots: bool,
    #[arg(required = true)]
    paths: Vec<String>,
}

fn info_of(store: &dyn Store, p: &StorePath) -> CliResult<PathInfo> {
    store.path_info(p)?.ok_or_else(|| StoreError::NotValid(store.store_dir().display(p)).into())
}

/// A set in the order `nix-store -q` prints its lists: dependencies first, over the
/// references inside the set ([`topo_sort`]).
fn nix_order(store: &dyn Store, set: BTreeSet<StorePath>) -> CliResult<Vec<StorePath>> {
    Ok(store.in_nix_order(&set)?)
}

/// Closure under referrers, breadth first.
fn referrers_closure(store: &dyn Store, roots: &[StorePath]) -> CliResult<BTreeSet<StorePath>> {
    let mut seen: BTreeSet<StorePath> = roots.iter().cloned().collect();
    let mut queue: VecDeque<StorePath> = roots.iter().cloned().collect();
    while let Some(p) = queue.pop_front() {
        for r in store.referrers(&p)? {
            if seen.insert(r.clone()) {
                queue.push_back(r);
            }
        }
    }
    Ok(seen)
}

/// The paths whose roots keep `roots` alive: the referrer closure, plus the outputs of
/// `.drv`s in it (keep-derivations) and the derivers of paths in it (keep-outputs).
fn referrers_closure_for_gc(store: &dyn Store, roots: &[StorePath], spec: &StoreSpec) -> CliResult<BTreeSet<StorePath>> {
    let mut seen: BTreeSet<StorePath> = roots.iter().cloned().collect();
    let mut queue: VecDeque<StorePath> = roots.iter().cloned().collect();
    while let Some(p) = queue.pop_front() {
        let mut next: Vec<StorePath> = store.referrers(&p)?.into_iter().collect();
        if spec.gc.keep_outputs {
            next.extend(store.valid_derivers(&p)?);
        }
        if spec.gc.keep_derivations && p.is_derivation() {
            for o in store.derivation_outputs(&p)?.into_values() {
                if store.is_valid(&o)? {
                    next.push(o);
                }
            }
        }
        for r in next {
            if seen.insert(r.clone()) {
                queue.push_back(r);
            }
        }
    }
    Ok(seen)
}

pub fn run(store: &dyn Store, args: &QueryArgs, spec: &StoreSpec) -> CliResult {
    let sd = store.store_dir().clone();
    let paths: Vec<StorePath> = args.paths.iter().map(|a| paths::resolve(store, a)).collect::<CliResult<_>>()?;
    let mut out = stdout();
    let mut line = |s: &str| writeln!(out, "{s}").map_err(out_err);
    if args.requisites {
        for p in &paths {
            info_of(store, p)?;
        }
        for p in store.requisites(&paths)? {
            line(&sd.display(&p))?;
        }
    } else if args.referrers_closure {
        for p in &paths {
            info_of(store, p)?;
        }
        for p in nix_order(store, referrers_closure(store, &paths)?)? {
            line(&sd.display(&p))?;
        }
    } else if args.references || args.referrers {
        let mut all = BTreeSet::new();
        for p in &paths {
            if args.references {
                all.extend(info_of(store, p)?.references);
            } else {
                all.extend(store.referrers(p)?);
            }
        }
        for p in nix_order(store, all)? {
            line(&sd.display(&p))?;
        }
    } else if args.valid_derivers {
        let mut all = BTreeSet::new();
        for p in &paths {
            all.extend(store.valid_derivers(p)?);
        }
        for p in all {
            line(&sd.display(&p))?;
        }
    } else if args.outputs {
        for p in &paths {
            if p.is_derivation() {
                let outs: BTreeMap<String, StorePath> = store.derivation_outputs(p)?;
                for o in outs.values() {
                    line(&sd.display(o))?;
                }
            } else {
                line(&sd.display(p))?;
            }
        }
    } else if args.deriver || args.hash || args.size {
        for p in &paths {
            let info = info_of(store, p)?;
            if args.deriver {
                line(&info.deriver.map(|d| sd.display(&d)).unwrap_or_else(|| "unknown-deriver".into()))?;
            } else if args.hash {
                line(&info.nar_hash.to_nix32_string())?;
            } else {
                line(&info.nar_size.to_string())?;
            }
        }
    } else if args.roots {
        for p in &paths {
            info_of(store, p)?;
        }
        let keep = referrers_closure_for_gc(store, &paths, spec)?;
        let mut notice = |m: &str| tracing::info!("{m}");
        let is_valid = |p: &StorePath| store.is_valid(p).unwrap_or(false);
        let roots = RootFinder { store_dir: &sd, state: &spec.state, is_valid: &is_valid, notice: &mut notice }.find_all(true)?;
        for (target, links) in &roots {
            if keep.contains(target) {
                for l in links {
                    line(&format!("{l} -> {}", sd.display(target)))?;
                }
            }
        }
    }
    drop(line);
    out.flush().map_err(out_err)
}
