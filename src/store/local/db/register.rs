//! Writing path rows: registration (Nix's `registerValidPaths`), deletion, fixes.

use std::collections::{BTreeSet, HashMap};

use rusqlite::{params, OptionalExtension};

use super::*;
use crate::format::{Hash, StorePath};
use crate::store::{Result, StoreError};

impl Database {
    /// Registers a batch of paths with their references in one transaction, as Nix's
    /// `registerValidPaths`: insert or update each row, then add each path's references
    /// (to those it already has, as Nix does); every reference must be valid already or be in the batch, and the
    /// batch must not form a cycle.
    pub fn register(&self, batch: &[Registration]) -> Result<()> {
        // Each reference as the index of its registration in the batch, if it is one:
        // the cycle check and the inserts work on these, nothing cloned or hashed twice.
        let index: HashMap<&StorePath, u32> = batch.iter().enumerate().map(|(i, r)| (&r.info.path, i as u32)).collect();
        let refs: Vec<Vec<Option<u32>>> = batch.iter().map(|r| r.info.references.iter().map(|p| index.get(p).copied()).collect()).collect();
        let in_batch: Vec<Vec<u32>> = refs.iter().map(|r| r.iter().flatten().copied().collect()).collect();
        crate::store::topo::check_acyclic(&in_batch).map_err(|i| StoreError::Cycle(batch[i as usize].info.path.to_string()))?;
        self.in_register_tx(|| self.register_in_tx(batch, &refs))
    }

    /// Runs `f`, which may only read and register, in a transaction of its own with
    /// foreign-key enforcement off (or inside the caller's transaction, as the caller
    /// set it). `register_in_tx` looks up every row a new row points at in the same
    /// transaction, so the checks would only repeat those lookups: two per `Refs` row,
    /// a fifth of a copy-up's time. Deletions rely on `on delete cascade` and never run
    /// here.
    pub fn in_register_tx<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.conn.is_autocommit() {
            return f();
        }
        self.conn.execute_batch("pragma foreign_keys = 0").map_err(self.err())?;
        let result = self.in_tx(f);
        if !self.conn.is_autocommit() {
            // A commit and rollback that both failed: the pragma cannot change inside a
            // transaction, and checks must not stay off.
            let _ = self.conn.execute_batch("rollback");
        }
        let restored = self.conn.execute_batch("pragma foreign_keys = 1").map_err(self.err());
        let value = result?;
        restored?;
        Ok(value)
    }

    /// Runs `f` in a transaction, or inside the caller's when one is open (so several
    /// changes can commit together). `&self`: a validity query may copy lower metadata
    /// up; the connection is never shared across threads.
    pub fn in_tx<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.conn.is_autocommit() {
            return f();
        }
        self.conn.execute_batch("begin immediate").map_err(self.err())?;
        match f() {
            Ok(v) => {
                if let Err(e) = self.conn.execute_batch("commit") {
                    let _ = self.conn.execute_batch("rollback");
                    return Err(self.err()(e));
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("rollback");
                Err(e)
            }
        }
    }

    /// `refs[i][k]`: the batch index of the `k`th reference of `batch[i]`, if in the batch.
    pub(super) fn register_in_tx(&self, batch: &[Registration], refs: &[Vec<Option<u32>>]) -> Result<()> {
        let path = self.path.clone();
        let store_dir = self.store_dir.clone();
        let err = |source| StoreError::Db { path: path.clone(), source };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let tx = &self.conn;
        // Rows in path order: the unique index on `path` then grows at its end instead of
        // splitting pages all over (a copy-up arrives in hash-map order).
        let mut order: Vec<usize> = (0..batch.len()).collect();
        // Stable: of two registrations of one path, the later still wins (it updates).
        order.sort_by(|&a, &b| batch[a].info.path.cmp(&batch[b].info.path));
        // Per registration: its row id, and whether the row is new (then it has no
        // references yet and plain inserts suffice).
        let mut ids: Vec<(i64, bool)> = vec![(0, false); batch.len()];
        {
            let mut find = tx.prepare_cached("select id from ValidPaths where path = ?").map_err(err)?;
            let mut insert = tx
                .prepare_cached(
                    "insert or ignore into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca)
                     values (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .map_err(err)?;
            let mut update = tx
                .prepare_cached("update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?")
                .map_err(err)?;
            let mut out_stmt =
                tx.prepare_cached("insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)").map_err(err)?;
            for &i in &order {
                let reg = &batch[i];
                let info = &reg.info;
                let full = store_dir.display(&info.path);
                let sigs = (!info.sigs.is_empty()).then(|| info.sigs.iter().cloned().collect::<Vec<_>>().join(" "));
                let nar_size = (info.nar_size != 0).then_some(info.nar_size as i64);
                let ultimate = info.ultimate.then_some(1i64);
                let ca = info.ca.as_ref().map(|c| c.to_string());
                // Insert first: for a new row the unique index is probed once, by the insert.
                let time = if info.registration_time == 0 { now } else { info.registration_time };
                let hash = info.nar_hash.to_db_string();
                let deriver = info.deriver.as_ref().map(|d| store_dir.display(d));
                let added = insert.execute(params![full, hash, time, deriver, nar_size, ultimate, sigs, ca]).map_err(err)?;
                ids[i] = if added == 1 {
                    (tx.last_insert_rowid(), true)
                } else {
                    let id: i64 = find.query_row([&full], |r| r.get(0)).map_err(err)?;
                    update.execute(params![nar_size, hash, ultimate, sigs, ca, full]).map_err(err)?;
                    (id, false)
                };
                for (name, out) in &reg.drv_outputs {
                    out_stmt.execute(params![ids[i].0, name, store_dir.display(out)]).map_err(err)?;
                }
            }
            // A batch much bigger than the `Refs` table (the first copy-up into a new upper
            // database) builds the two secondary indexes afresh afterwards: one sort each
            // instead of a random b-tree insert per row.
            let new_refs: usize = batch.iter().map(|r| r.info.references.len()).sum();
            let old_refs: i64 = tx.query_row("select coalesce(max(rowid), 0) from Refs", [], |r| r.get(0)).map_err(err)?;
            // Only the indexes this database has: recent Nix drops `IndexReferrer` on purpose.
            let mut rebuilt: Vec<(&str, &str)> = Vec::new();
            if new_refs >= 4096 && new_refs as i64 > 2 * old_refs {
                for (name, column) in [("IndexReferrer", "referrer"), ("IndexReference", "reference")] {
                    let exists = tx
                        .prepare_cached("select 1 from sqlite_master where type = 'index' and name = ? and tbl_name = 'Refs'")
                        .and_then(|mut st| st.exists([name]))
                        .map_err(err)?;
                    if exists {
                        tx.execute_batch(&format!("drop index {name}")).map_err(err)?;
                        rebuilt.push((name, column));
                    }
                }
            }
            let mut add_ref = tx.prepare_cached("insert into Refs (referrer, reference) values (?, ?)").map_err(err)?;
            let mut replace_ref = tx.prepare_cached("insert or replace into Refs (referrer, reference) values (?, ?)").map_err(err)?;
            let mut targets = Vec::new();
            for &i in &order {
                let (from, fresh) = ids[i];
                targets.clear();
                for (r, j) in batch[i].info.references.iter().zip(&refs[i]) {
                    targets.push(match *j {
                        Some(j) => ids[j as usize].0,
                        None => find
                            .query_row([store_dir.display(r)], |row| row.get(0))
                            .optional()
                            .map_err(err)?
                            .ok_or_else(|| StoreError::NotValid(store_dir.display(r)))?,
                    });
                }
                targets.sort_unstable();
                for &to in &targets {
                    if fresh {
                        add_ref.execute([from, to]).map_err(err)?;
                    } else {
                        replace_ref.execute([from, to]).map_err(err)?;
                    }
                }
            }
            for (name, column) in rebuilt {
                tx.execute_batch(&format!("create index {name} on Refs({column})")).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Deletes rows in the given order (referrers first, or in the same call), in one
    /// transaction (the caller's, when one is open).
    pub fn delete_paths(&self, paths: &[StorePath]) -> Result<()> {
        self.in_tx(|| {
            let mut del = self.conn.prepare_cached("delete from ValidPaths where path = ?").map_err(self.err())?;
            for p in paths {
                del.execute([self.store_dir.display(p)]).map_err(self.err())?;
            }
            Ok(())
        })
    }

    /// Rewrites the hash and size of a row (verify's repairs of missing values).
    pub fn fix_hash_and_size(&self, path: &StorePath, hash: Option<&Hash>, size: Option<u64>) -> Result<()> {
        let full = self.store_dir.display(path);
        if let Some(h) = hash {
            self.conn.execute("update ValidPaths set hash = ? where path = ?", params![h.to_db_string(), full]).map_err(self.err())?;
        }
        if let Some(n) = size {
            self.conn.execute("update ValidPaths set narSize = ? where path = ?", params![n as i64, full]).map_err(self.err())?;
        }
        Ok(())
    }

    /// Adds signatures to a valid path's row (keeping those it has), as Nix does.
    pub fn add_signatures(&self, path: &StorePath, sigs: &[String]) -> Result<()> {
        self.in_tx(|| {
            let p = self.store_dir.display(path);
            let have: Option<Option<String>> =
                self.conn.query_row("select sigs from ValidPaths where path = ?", [&p], |r| r.get(0)).optional().map_err(self.err())?;
            let Some(have) = have else { return Err(StoreError::NotValid(p)) };
            let mut all: BTreeSet<String> = have.unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect();
            all.extend(sigs.iter().filter(|s| !s.is_empty() && !s.contains(' ')).cloned());
            let joined = all.into_iter().collect::<Vec<_>>().join(" ");
            self.conn.execute("update ValidPaths set sigs = ? where path = ?", [&joined, &p]).map_err(self.err())?;
            Ok(())
        })
    }
}
