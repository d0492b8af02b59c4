//! The one topological sort: Nix's order for every list of paths.
//!
//! Nix (`topoSortPaths`) runs a depth-first search over the set in ascending base-name
//! order, visiting each path's edges in the same order, and emits a path once everything
//! it points at has been emitted. `nix-store -q` and `--export` print that post-order, so
//! the exact bytes of their output depend on it: any other valid order differs from Nix.

use std::collections::HashMap;

use crate::format::StorePath;
use crate::store::{PathInfo, Result, StoreError};

/// The post-order of a depth-first search over `edges` (`edges[i]`: what must come
/// before `i`), roots and edges taken in ascending order of `paths`. Self-edges are
/// ignored; `Err` names an index on a cycle.
pub fn topo_order(paths: &[StorePath], edges: &[Vec<u32>]) -> std::result::Result<Vec<u32>, u32> {
    let mut by_path: Vec<u32> = (0..paths.len() as u32).collect();
    by_path.sort_unstable_by(|&a, &b| paths[a as usize].cmp(&paths[b as usize]));
    post_order(&by_path, edges)
}

/// Fails with the index of a node on a cycle, if `edges` has one (self-edges aside).
pub fn check_acyclic(edges: &[Vec<u32>]) -> std::result::Result<(), u32> {
    let any: Vec<u32> = (0..edges.len() as u32).collect();
    post_order(&any, edges).map(drop)
}

/// Orders infos dependencies first (Nix's order), over references inside the set.
pub fn topo_sort(infos: Vec<PathInfo>) -> Result<Vec<PathInfo>> {
    let index: HashMap<&StorePath, u32> = infos.iter().enumerate().map(|(i, p)| (&p.path, i as u32)).collect();
    let edges: Vec<Vec<u32>> = infos.iter().map(|i| i.references.iter().filter_map(|r| index.get(r).copied()).collect()).collect();
    drop(index);
    let paths: Vec<StorePath> = infos.iter().map(|i| i.path.clone()).collect();
    let order = topo_order(&paths, &edges).map_err(|i| StoreError::Cycle(paths[i as usize].to_string()))?;
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    Ok(order.into_iter().map(|i| slots[i as usize].take().expect("each index once")).collect())
}

/// Iterative (a million-path chain must not overflow the stack). `by_rank` is the visit
/// order, a permutation of the indices.
fn post_order(by_rank: &[u32], edges: &[Vec<u32>]) -> std::result::Result<Vec<u32>, u32> {
    const NEW: u8 = 0;
    const OPEN: u8 = 1;
    const DONE: u8 = 2;
    let n = by_rank.len();
    let mut rank = vec![0u32; n];
    for (r, &i) in by_rank.iter().enumerate() {
        rank[i as usize] = r as u32;
    }
    let mut state = vec![NEW; n];
    let mut order = Vec::with_capacity(n);
    let mut stack: Vec<(u32, Vec<u32>, usize)> = Vec::new();
    let sorted_edges = |i: u32| {
        let mut e: Vec<u32> = edges[i as usize].iter().copied().filter(|&j| j != i).collect();
        e.sort_unstable_by_key(|&j| rank[j as usize]);
        e.dedup();
        e
    };
    for &root in by_rank {
        if state[root as usize] != NEW {
            continue;
        }
        state[root as usize] = OPEN;
        stack.push((root, sorted_edges(root), 0));
        while let Some((node, next, k)) = stack.last_mut() {
            if let Some(&j) = next.get(*k) {
                *k += 1;
                match state[j as usize] {
                    NEW => {
                        state[j as usize] = OPEN;
                        let e = sorted_edges(j);
                        stack.push((j, e, 0));
                    }
                    OPEN => return Err(j),
                    _ => {}
                }
            } else {
                let node = *node;
                state[node as usize] = DONE;
                order.push(node);
                stack.pop();
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, hash_char: char) -> StorePath {
        StorePath::from_basename(&format!("{}-{name}", hash_char.to_string().repeat(32))).unwrap()
    }

    #[test]
    fn depth_first_post_order_in_base_name_order() {
        // e (0…) -> d; a -> b, c; b -> c; c -> d. The visit starts at e, then a visits
        // b before c (edges in name order), and b reaches c and d.
        let paths = vec![p("a", 'a'), p("b", 'b'), p("c", 'c'), p("d", 'd'), p("e", '0')];
        let edges = vec![vec![2, 1], vec![2], vec![3], vec![], vec![3]];
        assert_eq!(topo_order(&paths, &edges).unwrap(), vec![3, 4, 2, 1, 0]);
        // x (a…) -> y (z…), z (b…) alone. A sort that takes the smallest ready path
        // (Kahn's) prints z before y; the depth-first search prints y, x, z.
        let paths = vec![p("x", 'a'), p("y", 'z'), p("z", 'b')];
        let edges = vec![vec![1], vec![], vec![]];
        assert_eq!(topo_order(&paths, &edges).unwrap(), vec![1, 0, 2]);
    }

    #[test]
    fn cycles_are_refused_and_self_edges_ignored() {
        let paths = vec![p("a", 'a'), p("b", 'b')];
        assert!(topo_order(&paths, &[vec![1], vec![0]]).is_err());
        assert_eq!(topo_order(&paths, &[vec![0], vec![1, 0]]).unwrap(), vec![0, 1]);
        assert!(check_acyclic(&[vec![1], vec![0]]).is_err());
        assert!(check_acyclic(&[vec![0], vec![0]]).is_ok());
    }

    #[test]
    fn a_long_chain_does_not_overflow() {
        let n = 200_000u32;
        let paths: Vec<StorePath> = (0..n).map(|i| StorePath::from_basename(&format!("{i:032}-p")).unwrap()).collect();
        let edges: Vec<Vec<u32>> = (0..n).map(|i| if i + 1 < n { vec![i + 1] } else { vec![] }).collect();
        let order = topo_order(&paths, &edges).unwrap();
        assert_eq!(order[0], n - 1);
        assert_eq!(order[n as usize - 1], 0);
    }
}
