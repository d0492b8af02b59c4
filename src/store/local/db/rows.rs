//! Reading path rows: infos, references, referrers, derivers, outputs, closures.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::OptionalExtension;

use super::*;
use crate::format::{ContentAddress, Hash, StorePath};
use crate::store::{PathInfo, Result, StoreError};

impl Database {
    pub(super) fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Db { path: self.path.clone(), source }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(super) fn parse_path(&self, s: &str) -> Result<StorePath> {
        Ok(self.store_dir.parse_path(s)?)
    }

    /// Decodes one `ValidPaths` row (columns in `INFO_COLUMNS` order), without references.
    pub(super) fn row_to_info(&self, row: &rusqlite::Row) -> Result<(i64, PathInfo)> {
        let e = self.err();
        let id: i64 = row.get(0).map_err(&e)?;
        let path_s: String = row.get(1).map_err(&e)?;
        let path = self.parse_path(&path_s)?;
        let corrupt = |what: String| StoreError::CorruptRow { path: path_s.clone(), what };
        let hash_s: String = row.get(2).map_err(&e)?;
        let nar_hash = Hash::parse_prefixed(&hash_s).map_err(|x| corrupt(x.to_string()))?;
        let deriver: Option<String> = row.get(4).map_err(&e)?;
        let deriver = match deriver.as_deref() {
            None | Some("") => None,
            Some(d) => Some(self.store_dir.parse_path(d).map_err(|x| corrupt(x.to_string()))?),
        };
        let sigs: Option<String> = row.get(7).map_err(&e)?;
        let ca: Option<String> = row.get(8).map_err(&e)?;
        let ca = match ca.as_deref() {
            None | Some("") => None,
            Some(c) => Some(ContentAddress::parse(c).map_err(|x| corrupt(x.to_string()))?),
        };
        Ok((
            id,
            PathInfo {
                path,
                deriver,
                nar_hash,
                references: BTreeSet::new(),
                registration_time: row.get::<_, Option<i64>>(3).map_err(&e)?.unwrap_or(0),
                nar_size: row.get::<_, Option<i64>>(5).map_err(&e)?.unwrap_or(0) as u64,
                ultimate: row.get::<_, Option<i64>>(6).map_err(&e)? == Some(1),
                sigs: sigs.unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect(),
                ca,
            },
        ))
    }

    pub fn id_of(&self, path: &StorePath) -> Result<Option<i64>> {
        let full = self.store_dir.display(path);
        self.conn
            .prepare_cached("select id from ValidPaths where path = ?")
            .and_then(|mut s| s.query_row([full], |r| r.get(0)).optional())
            .map_err(self.err())
    }

    pub fn is_valid(&self, path: &StorePath) -> Result<bool> {
        Ok(self.id_of(path)?.is_some())
    }

    /// Validity of each of `paths`, read in one snapshot (one lock, not one per path).
    pub fn valid_flags(&self, paths: &[&StorePath]) -> Result<Vec<bool>> {
        let _snap = self.read_snapshot()?;
        // Far fewer rows than questions (the first copy-up into a young upper database):
        // one scan of the rows answers all of them, instead of an index probe each. Ids
        // only grow, so the largest bounds the row count without counting.
        let max_id: i64 = self
            .conn
            .prepare_cached("select coalesce(max(id), 0) from ValidPaths")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(self.err())?;
        if paths.len() >= 64 && (max_id as usize) < paths.len() / 2 {
            let mut stmt = self.conn.prepare_cached("select path from ValidPaths").map_err(self.err())?;
            let rows: std::collections::HashSet<String> = stmt.query_map([], |r| r.get(0)).and_then(|r| r.collect()).map_err(self.err())?;
            return Ok(paths.iter().map(|p| rows.contains(&self.store_dir.display(p))).collect());
        }
        paths.iter().map(|p| self.is_valid(p)).collect()
    }

    pub fn references_of_id(&self, id: i64) -> Result<BTreeSet<StorePath>> {
        let mut stmt =
            self.conn.prepare_cached("select path from Refs join ValidPaths on reference = id where referrer = ?").map_err(self.err())?;
        let rows: Vec<String> = stmt.query_map([id], |r| r.get(0)).and_then(|r| r.collect()).map_err(self.err())?;
        rows.iter().map(|p| self.parse_path(p)).collect()
    }

    pub fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        let full = self.store_dir.display(path);
        let mut stmt =
            self.conn.prepare_cached(&format!("select {INFO_COLUMNS} from ValidPaths v where v.path = ?")).map_err(self.err())?;
        let mut rows = stmt.query([full]).map_err(self.err())?;
        let Some(row) = rows.next().map_err(self.err())? else {
            return Ok(None);
        };
        let (id, mut info) = self.row_to_info(row)?;
        info.references = self.references_of_id(id)?;
        Ok(Some(info))
    }

    pub(super) fn path_list(&self, sql: &str, arg: &dyn rusqlite::ToSql) -> Result<BTreeSet<StorePath>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err())?;
        let rows: Vec<String> = stmt.query_map([arg], |r| r.get(0)).and_then(|r| r.collect()).map_err(self.err())?;
        rows.iter().map(|p| self.parse_path(p)).collect()
    }

    /// One join, no per-path lookups.
    pub fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.path_list(
            "select v.path from Refs r join ValidPaths v on r.referrer = v.id
             where r.reference = (select id from ValidPaths where path = ?)",
            &self.store_dir.display(path),
        )
    }

    pub fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.path_list(
            "select v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?",
            &self.store_dir.display(path),
        )
    }

    pub fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        let Some(id) = self.id_of(drv)? else {
            return Err(StoreError::NotValid(self.store_dir.display(drv)));
        };
        let mut stmt = self.conn.prepare_cached("select id, path from DerivationOutputs where drv = ?").map_err(self.err())?;
        let rows: Vec<(String, String)> =
            stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?))).and_then(|r| r.collect()).map_err(self.err())?;
        rows.into_iter().map(|(name, p)| Ok((name, self.parse_path(&p)?))).collect()
    }

    /// `derivation_outputs` of each of `drvs`, read in one snapshot.
    pub fn derivation_outputs_of(&self, drvs: &[StorePath]) -> Result<Vec<BTreeMap<String, StorePath>>> {
        let _snap = self.read_snapshot()?;
        drvs.iter().map(|d| self.derivation_outputs(d)).collect()
    }

    pub fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        let prefix = format!("{}/{hash_part}", self.store_dir.as_str());
        let mut stmt = self.conn.prepare_cached("select path from ValidPaths where path >= ? limit 1").map_err(self.err())?;
        let found: Option<String> = stmt.query_row([&prefix], |r| r.get(0)).optional().map_err(self.err())?;
        match found {
            Some(p) if p.starts_with(&prefix) => Ok(Some(self.parse_path(&p)?)),
            _ => Ok(None),
        }
    }

    pub fn all_paths(&self) -> Result<Vec<StorePath>> {
        let mut stmt = self.conn.prepare_cached("select path from ValidPaths").map_err(self.err())?;
        let rows: Vec<String> = stmt.query_map([], |r| r.get(0)).and_then(|r| r.collect()).map_err(self.err())?;
        rows.iter().map(|p| self.parse_path(p)).collect()
    }

    pub fn count_paths(&self) -> Result<u64> {
        self.conn.query_row("select count(*) from ValidPaths", [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(self.err())
    }

    /// The infos (with references) of the closure of `roots`, found with one recursive
    /// query and one join over `Refs`, rather than a lookup per path. Roots missing from
    /// this database are returned in the second list.
    pub fn closure(&self, roots: &[StorePath]) -> Result<(Vec<PathInfo>, Vec<StorePath>)> {
        let tx_guard = self.read_snapshot()?;
        let missing = self.fill_closure_ids(roots)?;
        let infos = self.collect_closure("with closure(id) as (select id from temp.ClosureIds)")?;
        drop(tx_guard);
        Ok((infos, missing))
    }

    /// Computes the closure of `roots` once into `temp.ClosureIds` (one recursive
    /// query); returns the roots this database lacks. Joins with the temp tables are
    /// `cross join`s: they have no statistics, and without the hint SQLite scans all of
    /// `Refs` and probes the (small) closure per row, which grows with the store.
    pub(super) fn fill_closure_ids(&self, roots: &[StorePath]) -> Result<Vec<StorePath>> {
        self.conn
            .execute_batch(
                "create temp table if not exists ClosureRoots (id integer primary key); delete from temp.ClosureRoots;
                 create temp table if not exists ClosureIds (id integer primary key); delete from temp.ClosureIds;",
            )
            .map_err(self.err())?;
        let mut missing = Vec::new();
        {
            let mut ins = self.conn.prepare_cached("insert or ignore into temp.ClosureRoots values (?)").map_err(self.err())?;
            for r in roots {
                match self.id_of(r)? {
                    Some(id) => {
                        ins.execute([id]).map_err(self.err())?;
                    }
                    None => missing.push(r.clone()),
                }
            }
        }
        self.conn
            .execute_batch(
                "insert into temp.ClosureIds
                 with recursive closure(id) as (
                     select id from temp.ClosureRoots
                     union
                     select r.reference from closure c cross join Refs r on r.referrer = c.id)
                 select id from closure;",
            )
            .map_err(self.err())?;
        Ok(missing)
    }

    /// The closure of `roots` as a graph: paths and, per path, the indices of its
    /// references (self-references left out). Cheaper than full infos when only the
    /// shape is needed (`query --requisites`).
    pub fn closure_graph(&self, roots: &[StorePath]) -> Result<(Vec<StorePath>, Vec<Vec<u32>>, Vec<StorePath>)> {
        let _snap = self.read_snapshot()?;
        let missing = self.fill_closure_ids(roots)?;
        let mut paths = Vec::new();
        let mut index: HashMap<i64, u32> = HashMap::new();
        {
            let mut stmt = self
                .conn
                .prepare("select v.id, v.path from temp.ClosureIds c cross join ValidPaths v on v.id = c.id")
                .map_err(self.err())?;
            let mut rows = stmt.query([]).map_err(self.err())?;
            while let Some(row) = rows.next().map_err(self.err())? {
                let id: i64 = row.get(0).map_err(self.err())?;
                let p = row.get_ref(1).map_err(self.err())?.as_str().map_err(|e| self.err()(e.into()))?;
                index.insert(id, paths.len() as u32);
                paths.push(self.parse_path(p)?);
            }
        }
        let mut refs = vec![Vec::new(); paths.len()];
        let mut stmt = self
            .conn
            .prepare("select r.referrer, r.reference from temp.ClosureIds c cross join Refs r on r.referrer = c.id")
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let (a, b): (i64, i64) = (row.get(0).map_err(self.err())?, row.get(1).map_err(self.err())?);
            if a != b {
                if let (Some(&a), Some(&b)) = (index.get(&a), index.get(&b)) {
                    refs[a as usize].push(b);
                }
            }
        }
        Ok((paths, refs, missing))
    }

    /// Runs a `with … closure(id)` prefix and loads the rows and references it names.
    /// The rows come in id order (the walk is over a rowid-ordered table, so the order
    /// costs no sort), so an id's info is found by binary search and no path is cloned
    /// but into the reference sets.
    pub(super) fn collect_closure(&self, with: &str) -> Result<Vec<PathInfo>> {
        let mut ids: Vec<i64> = Vec::new();
        let mut infos: Vec<PathInfo> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare(&format!("{with} select {INFO_COLUMNS} from closure c cross join ValidPaths v on v.id = c.id order by c.id"))
                .map_err(self.err())?;
            let mut rows = stmt.query([]).map_err(self.err())?;
            while let Some(row) = rows.next().map_err(self.err())? {
                let (id, info) = self.row_to_info(row)?;
                ids.push(id);
                infos.push(info);
            }
        }
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare(&format!("{with} select r.referrer, r.reference from closure c cross join Refs r on r.referrer = c.id"))
                .map_err(self.err())?;
            let mut rows = stmt.query([]).map_err(self.err())?;
            while let Some(row) = rows.next().map_err(self.err())? {
                let (from, to): (i64, i64) = (row.get(0).map_err(self.err())?, row.get(1).map_err(self.err())?);
                if let (Ok(a), Ok(b)) = (ids.binary_search(&from), ids.binary_search(&to)) {
                    pairs.push((a as u32, b as u32));
                }
            }
        }
        for (a, b) in pairs {
            let p = infos[b as usize].path.clone();
            infos[a as usize].references.insert(p);
        }
        Ok(infos)
    }

    /// All infos, with references: the whole graph in two scans.
    pub fn all_infos(&self) -> Result<Vec<PathInfo>> {
        let _snap = self.read_snapshot()?;
        self.collect_closure("with closure(id) as (select id from ValidPaths)")
    }

    /// The references of each path, in one snapshot with one cached statement (no full
    /// rows): what ordering a large list needs. A path that is not valid has none.
    pub fn references_of_paths(&self, paths: &[StorePath]) -> Result<Vec<BTreeSet<StorePath>>> {
        let _snapshot = self.read_snapshot()?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "select r.path from ValidPaths v join Refs on referrer = v.id join ValidPaths r on r.id = reference where v.path = ?",
            )
            .map_err(self.err())?;
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            let rows: Vec<String> =
                stmt.query_map([self.store_dir.display(p)], |r| r.get(0)).and_then(|r| r.collect()).map_err(self.err())?;
            out.push(rows.iter().map(|s| self.parse_path(s)).collect::<Result<_>>()?);
        }
        Ok(out)
    }

    /// The references among `paths` themselves, as indices into `paths` (what ordering a
    /// list needs): two statements in one snapshot, rows by id, no path parsed. Paths
    /// that are not valid here have none.
    pub fn edges_within(&self, paths: &[StorePath]) -> Result<Vec<Vec<u32>>> {
        let _snapshot = self.read_snapshot()?;
        let names: Vec<String> = paths.iter().map(|p| self.store_dir.display(p)).collect();
        let names = serde_json::to_string(&names).expect("strings serialise");
        let mut by_id: HashMap<i64, u32> = HashMap::with_capacity(paths.len());
        {
            let mut stmt = self
                .conn
                .prepare_cached("select v.id, j.key from json_each(?1) j join ValidPaths v on v.path = j.value")
                .map_err(self.err())?;
            let mut rows = stmt.query([&names]).map_err(self.err())?;
            while let Some(row) = rows.next().map_err(self.err())? {
                by_id.insert(row.get(0).map_err(self.err())?, row.get::<_, i64>(1).map_err(self.err())? as u32);
            }
        }
        let ids = serde_json::to_string(&by_id.keys().collect::<Vec<_>>()).expect("ids serialise");
        let mut edges = vec![Vec::new(); paths.len()];
        let mut stmt = self
            .conn
            .prepare_cached("select referrer, reference from Refs where referrer in (select value from json_each(?1))")
            .map_err(self.err())?;
        let mut rows = stmt.query([&ids]).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let (from, to): (i64, i64) = (row.get(0).map_err(self.err())?, row.get(1).map_err(self.err())?);
            if let (Some(&f), Some(&t)) = (by_id.get(&from), by_id.get(&to)) {
                edges[f as usize].push(t);
            }
        }
        Ok(edges)
    }

    /// A read transaction, so multi-statement reads see one snapshot of a live database.
    pub(super) fn read_snapshot(&self) -> Result<SnapshotGuard<'_>> {
        if self.conn.is_autocommit() {
            self.conn.execute_batch("begin").map_err(self.err())?;
            Ok(SnapshotGuard { conn: Some(&self.conn) })
        } else {
            Ok(SnapshotGuard { conn: None })
        }
    }
}
