//! Realisations of content-addressed derivation outputs (`ca-derivations`).

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, OptionalExtension};

use super::*;
use crate::format::{DrvOutput, Realisation};
use crate::store::{Result, StoreError};

impl Database {
    /// Whether the `ca-derivations` tables exist (Nix creates them only with the
    /// experimental feature on).
    pub fn has_realisations(&self) -> Result<bool> {
        self.conn
            .prepare_cached("select 1 from sqlite_master where type = 'table' and name = 'Realisations'")
            .and_then(|mut s| s.exists([]))
            .map_err(self.err())
    }

    pub fn realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>> {
        if !self.has_realisations()? {
            return Ok(None);
        }
        let _snap = self.read_snapshot()?;
        let row: Option<(i64, String, Option<String>)> = self
            .conn
            .prepare_cached(
                "select r.id, v.path, r.signatures from Realisations r join ValidPaths v on v.id = r.outputPath
                 where r.drvPath = ? and r.outputName = ?",
            )
            .and_then(|mut s| s.query_row(params![id.hash_key(), id.output], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
            .map_err(self.err())?;
        let Some((rid, out, sigs)) = row else { return Ok(None) };
        let mut dependent = BTreeMap::new();
        let deps: Vec<(String, String, String)> = self
            .conn
            .prepare_cached(
                "select d.drvPath, d.outputName, v.path from RealisationsRefs x
                 join Realisations d on d.id = x.realisationReference join ValidPaths v on v.id = d.outputPath
                 where x.referrer = ?",
            )
            .and_then(|mut s| s.query_map([rid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
            .map_err(self.err())?;
        let corrupt = |what: String| StoreError::CorruptRow { path: format!("realisation {id}"), what };
        for (hash, name, path) in deps {
            let dep = DrvOutput::parse(&format!("{hash}!{name}")).map_err(|e| corrupt(e.to_string()))?;
            dependent.insert(dep, self.parse_path(&path)?);
        }
        Ok(Some(Realisation {
            id: id.clone(),
            out_path: self.parse_path(&out)?,
            signatures: sigs.unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            dependent,
        }))
    }

    /// Registers realisations as Nix's `registerDrvOutput` does, all in one transaction
    /// (or the caller's): the output paths must be valid here, and every dependent
    /// realisation registered here or in the batch, with the same output path. A
    /// realisation already known with the same output path gains the new signatures; one
    /// with another output path is an error. Returns whether the tables were created.
    pub fn register_realisations(&self, batch: &[Realisation]) -> Result<bool> {
        let created = !self.has_realisations()?;
        self.in_tx(|| {
            if created {
                self.conn.execute_batch(CA_SCHEMA).map_err(self.err())?;
                self.conn.execute_batch(REALISATION_CLEANUP).map_err(self.err())?;
            }
            let find = "select r.id, v.path, r.signatures from Realisations r join ValidPaths v on v.id = r.outputPath
                        where r.drvPath = ? and r.outputName = ?";
            let lookup = |id: &DrvOutput| -> Result<Option<(i64, String, Option<String>)>> {
                self.conn
                    .prepare_cached(find)
                    .and_then(|mut s| s.query_row(params![id.hash_key(), id.output], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
                    .map_err(self.err())
            };
            let mut ids = Vec::with_capacity(batch.len());
            for r in batch {
                let out = self.store_dir.display(&r.out_path);
                let rid = match lookup(&r.id)? {
                    Some((rid, have, sigs)) => {
                        if have != out {
                            return Err(StoreError::Other(format!(
                                "cannot register the realisation of '{}' as '{out}': this store already has it as '{have}'",
                                r.id
                            )));
                        }
                        // As Nix's `isCompatibleWith`: the dependencies must agree too,
                        // unless one side has none recorded (older Nix wrote none).
                        let deps = self.realisation(&r.id)?.map(|x| x.dependent).unwrap_or_default();
                        if !deps.is_empty() && !r.dependent.is_empty() && deps != r.dependent {
                            return Err(StoreError::Other(format!(
                                "cannot register the realisation of '{}': this store already has it with other dependencies",
                                r.id
                            )));
                        }
                        let mut all: BTreeSet<String> =
                            sigs.unwrap_or_default().split(' ').filter(|s| !s.is_empty()).map(str::to_string).collect();
                        all.extend(r.signatures.iter().cloned());
                        self.conn
                            .execute(
                                "update Realisations set signatures = ? where id = ?",
                                params![all.into_iter().collect::<Vec<_>>().join(" "), rid],
                            )
                            .map_err(self.err())?;
                        rid
                    }
                    None => {
                        let out_id = self.id_of(&r.out_path)?.ok_or_else(|| StoreError::NotValid(out.clone()))?;
                        self.conn
                            .prepare_cached("insert into Realisations (drvPath, outputName, outputPath, signatures) values (?, ?, ?, ?)")
                            .and_then(|mut s| {
                                s.execute(params![
                                    r.id.hash_key(),
                                    r.id.output,
                                    out_id,
                                    r.signatures.iter().cloned().collect::<Vec<_>>().join(" ")
                                ])
                            })
                            .map_err(self.err())?;
                        self.conn.last_insert_rowid()
                    }
                };
                ids.push(rid);
            }
            for (r, &rid) in batch.iter().zip(&ids) {
                for (dep, dep_out) in &r.dependent {
                    let Some((dep_id, have, _)) = lookup(dep)? else {
                        return Err(StoreError::Other(format!(
                            "cannot register the realisation of '{}': it depends on '{dep}', which this store has no realisation of",
                            r.id
                        )));
                    };
                    if have != self.store_dir.display(dep_out) {
                        return Err(StoreError::Other(format!(
                            "cannot register the realisation of '{}': it depends on '{dep}' built as '{}', but this store has '{have}'",
                            r.id,
                            self.store_dir.display(dep_out)
                        )));
                    }
                    let known = self
                        .conn
                        .prepare_cached("select 1 from RealisationsRefs where referrer = ? and realisationReference = ?")
                        .and_then(|mut s| s.exists([rid, dep_id]))
                        .map_err(self.err())?;
                    if !known {
                        self.conn
                            .prepare_cached("insert into RealisationsRefs (referrer, realisationReference) values (?, ?)")
                            .and_then(|mut s| s.execute([rid, dep_id]))
                            .map_err(self.err())?;
                    }
                }
            }
            Ok(created)
        })
    }
}
