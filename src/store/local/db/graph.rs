//! The whole reference graph at once, as indices (what GC and pivot need).

use std::collections::HashMap;

use super::*;
use crate::format::StorePath;
use crate::store::Result;

/// The reference graph of a whole database, loaded in three scans, as indices: what GC
/// needs, without per-path queries or per-path allocations beyond the path itself.
pub struct Graph {
    pub paths: Vec<StorePath>,
    pub nar_size: Vec<u64>,
    pub registration_time: Vec<i64>,
    /// The deriver's index, when the deriver is registered here.
    pub deriver: Vec<Option<u32>>,
    pub refs: Vec<Vec<u32>>,
    pub referrers: Vec<Vec<u32>>,
    /// For a registered `.drv`: the indices of its registered outputs.
    pub outputs: Vec<Vec<u32>>,
    pub index: HashMap<StorePath, u32>,
}

impl Graph {
    /// `members` (indices) ordered referrers first, so deleting in this order never
    /// leaves a dangling reference; the one topological sort, over referrer edges.
    pub fn referrers_first(&self, members: &[u32]) -> Vec<u32> {
        let local: HashMap<u32, u32> = members.iter().enumerate().map(|(k, &i)| (i, k as u32)).collect();
        let paths: Vec<StorePath> = members.iter().map(|&i| self.paths[i as usize].clone()).collect();
        let edges: Vec<Vec<u32>> =
            members.iter().map(|&i| self.referrers[i as usize].iter().filter_map(|r| local.get(r).copied()).collect()).collect();
        match crate::store::topo::topo_order(&paths, &edges) {
            Ok(order) => order.into_iter().map(|k| members[k as usize]).collect(),
            // Registration refuses cycles, so only a database someone else wrote has one:
            // then name order, and the referrer re-check inside the deleting transaction
            // keeps whatever is still referred to.
            Err(_) => {
                let mut by_name = members.to_vec();
                by_name.sort_by(|&a, &b| self.paths[a as usize].cmp(&self.paths[b as usize]));
                by_name
            }
        }
    }
}

impl Database {
    pub fn load_graph(&self) -> Result<Graph> {
        let _snap = self.read_snapshot()?;
        let mut id_index: HashMap<i64, u32> = HashMap::new();
        let mut g = Graph {
            paths: Vec::new(),
            nar_size: Vec::new(),
            registration_time: Vec::new(),
            deriver: Vec::new(),
            refs: Vec::new(),
            referrers: Vec::new(),
            outputs: Vec::new(),
            index: HashMap::new(),
        };
        let mut derivers: Vec<Option<String>> = Vec::new();
        {
            let mut stmt = self.conn.prepare("select id, path, narSize, registrationTime, deriver from ValidPaths").map_err(self.err())?;
            let mut rows = stmt.query([]).map_err(self.err())?;
            while let Some(row) = rows.next().map_err(self.err())? {
                let id: i64 = row.get(0).map_err(self.err())?;
                let p: String = row.get(1).map_err(self.err())?;
                let path = self.parse_path(&p)?;
                let i = g.paths.len() as u32;
                id_index.insert(id, i);
                g.index.insert(path.clone(), i);
                g.paths.push(path);
                g.nar_size.push(row.get::<_, Option<i64>>(2).map_err(self.err())?.unwrap_or(0) as u64);
                g.registration_time.push(row.get::<_, Option<i64>>(3).map_err(self.err())?.unwrap_or(0));
                derivers.push(row.get(4).map_err(self.err())?);
            }
        }
        let n = g.paths.len();
        g.refs = vec![Vec::new(); n];
        g.referrers = vec![Vec::new(); n];
        g.outputs = vec![Vec::new(); n];
        g.deriver = derivers
            .iter()
            .map(|d| d.as_deref().and_then(|d| self.store_dir.parse_path(d).ok()).and_then(|p| g.index.get(&p).copied()))
            .collect();
        {
            let mut stmt = self.conn.prepare("select referrer, reference from Refs").map_err(self.err())?;
            let mut rows = stmt.query([]).map_err(self.err())?;
            while let Some(row) = rows.next().map_err(self.err())? {
                let (a, b): (i64, i64) = (row.get(0).map_err(self.err())?, row.get(1).map_err(self.err())?);
                if let (Some(&a), Some(&b)) = (id_index.get(&a), id_index.get(&b)) {
                    g.refs[a as usize].push(b);
                    g.referrers[b as usize].push(a);
                }
            }
        }
        {
            let mut stmt = self.conn.prepare("select drv, path from DerivationOutputs").map_err(self.err())?;
            let mut rows = stmt.query([]).map_err(self.err())?;
            while let Some(row) = rows.next().map_err(self.err())? {
                let drv: i64 = row.get(0).map_err(self.err())?;
                let out: String = row.get(1).map_err(self.err())?;
                let Some(&d) = id_index.get(&drv) else { continue };
                if let Some(&o) = self.store_dir.parse_path(&out).ok().and_then(|p| g.index.get(&p)) {
                    g.outputs[d as usize].push(o);
                }
            }
        }
        Ok(g)
    }
}
