//! The store database, `${state}/db/db.sqlite`, with Nix's schema and column encodings,
//! so a row we write is the row Nix would write and we read every row Nix writes.
//!
//! Writers use Nix's connection settings (foreign keys on, WAL, `synchronous=normal`, a
//! one-hour busy timeout). A lower store's database is opened read-only and read live:
//! it may grow between and during our queries.

//!
//! By concept: `schema` (tables, connection settings), `rows` (reading paths),
//! `register` (writing them), `realisations`, `graph` (the whole graph for GC).

mod graph;
mod realisations;
mod register;
mod rows;
mod schema;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

pub use graph::Graph;
use schema::*;
pub use schema::{OpenMode, CA_SCHEMA_VERSION};

use crate::format::{StoreDir, StorePath};
use crate::store::{PathInfo, Result, StoreError};

pub struct Database {
    conn: Connection,
    path: PathBuf,
    store_dir: StoreDir,
}

/// One registration: the info plus the outputs to record if it is a `.drv`.
pub struct Registration {
    pub info: PathInfo,
    pub drv_outputs: Vec<(String, StorePath)>,
}

const INFO_COLUMNS: &str = "v.id, v.path, v.hash, v.registrationTime, v.deriver, v.narSize, v.ultimate, v.sigs, v.ca";

impl Database {
    /// Opens the database; `create_schema` runs the schema (for a new store, or one whose
    /// `db/schema` file is missing, as Nix does).
    pub fn open(path: &Path, mode: OpenMode, store_dir: &StoreDir, create_schema: bool) -> Result<Database> {
        let db_err = |source| StoreError::Db { path: path.to_path_buf(), source };
        let conn = match mode {
            OpenMode::LoneReader if create_shm_file(path).is_ok() => match connect(path, mode) {
                Err(e) if shared_memory_unusable(&e) => connect(path, OpenMode::ReadOnly),
                r => r,
            },
            OpenMode::LoneReader => connect(path, OpenMode::ReadOnly),
            _ => connect(path, mode),
        }
        .map_err(db_err)?;
        if mode == OpenMode::ReadWrite {
            conn.execute_batch(
                "pragma foreign_keys = 1;
                 pragma synchronous = normal;
                 pragma wal_autocheckpoint = 40000;",
            )
            .map_err(db_err)?;
            let jm: String = conn.query_row("pragma main.journal_mode", [], |r| r.get(0)).map_err(db_err)?;
            if jm != "wal" {
                conn.query_row("pragma main.journal_mode = wal", [], |_| Ok(())).map_err(db_err)?;
            }
            // Keep the WAL file between processes (as recent Nix does), so each short
            // command does not recreate and delete it.
            let mut persist: std::os::raw::c_int = 1;
            // SAFETY: a valid connection handle and a pointer to an int, as the opcode requires.
            unsafe {
                rusqlite::ffi::sqlite3_file_control(
                    conn.handle(),
                    c"main".as_ptr(),
                    rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
                    (&mut persist as *mut std::os::raw::c_int).cast(),
                );
            }
            if create_schema {
                conn.execute_batch(SCHEMA).map_err(db_err)?;
            }
        }
        let db = Database { conn, path: path.to_path_buf(), store_dir: store_dir.clone() };
        if mode == OpenMode::ReadWrite && db.has_realisations()? {
            db.conn.execute_batch(REALISATION_CLEANUP).map_err(db.err())?;
        }
        Ok(db)
    }
}

/// The WAL file is kept between processes (persistent WAL), and closing the last
/// connection checkpoints it but leaves its frames in place: the next process to open
/// the database would rebuild its index from them and read every page it needs with a
/// `pread` from the WAL instead of through the memory map (26,000 reads for one copy-up
/// from a 100k-path lower store). A size limit of zero makes the closing checkpoint
/// truncate the file instead; it never blocks (it only applies when that checkpoint
/// succeeded).
impl Drop for Database {
    fn drop(&mut self) {
        if !self.conn.is_readonly(rusqlite::DatabaseName::Main).unwrap_or(true) {
            let _ = self.conn.execute_batch("pragma journal_size_limit = 0");
        }
    }
}

/// Ends a read transaction when dropped.
pub(super) struct SnapshotGuard<'a> {
    conn: Option<&'a Connection>,
}

impl Drop for SnapshotGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn {
            let _ = c.execute_batch("commit");
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Hash;
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn path(i: usize) -> StorePath {
        let mut d = [0u8; 20];
        d[..8].copy_from_slice(&(i as u64).to_be_bytes());
        StorePath::new(d, &format!("p{i}")).unwrap()
    }

    fn reg(i: usize, refs: &[usize]) -> Registration {
        Registration {
            info: PathInfo {
                path: path(i),
                deriver: None,
                nar_hash: Hash::sha256(format!("{i}").as_bytes()),
                references: refs.iter().map(|&r| path(r)).collect(),
                registration_time: 0,
                nar_size: 8,
                ultimate: false,
                sigs: BTreeSet::new(),
                ca: None,
            },
            drv_outputs: Vec::new(),
        }
    }

    fn open(dir: &Path) -> Database {
        Database::open(&dir.join("db.sqlite"), OpenMode::ReadWrite, &StoreDir::default(), true).unwrap()
    }

    fn indexes(db: &Database) -> Vec<String> {
        let mut s = db.conn.prepare("select name from sqlite_master where type = 'index' and tbl_name = 'Refs' order by name").unwrap();
        s.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    fn foreign_keys(db: &Database) -> i64 {
        db.conn.query_row("pragma foreign_keys", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_bulk_registration_rebuilds_the_refs_indexes_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let before = indexes(&db);
        // 3,000 paths with 3 references each: over the bulk threshold.
        let batch: Vec<Registration> = (0..3000).map(|i| reg(i, &[(i + 1) % 3000, (i + 7) % 3000, i]).clone_acyclic(i)).collect();
        db.register(&batch).unwrap();
        assert_eq!(indexes(&db), before);
        assert_eq!(foreign_keys(&db), 1, "foreign keys are enforced again after a registration");
        assert_eq!(db.count_paths().unwrap(), 3000);
        let info = db.path_info(&path(10)).unwrap().unwrap();
        assert_eq!(info.references, batch[10].info.references);
        let referrers = db.referrers(&path(2999)).unwrap();
        assert!(referrers.contains(&path(2999)) && referrers.contains(&path(2998)), "{referrers:?}");
        assert_eq!(db.conn.query_row("pragma integrity_check", [], |r| r.get::<_, String>(0)).unwrap(), "ok");
    }

    #[test]
    fn validity_flags_agree_whether_rows_are_scanned_or_probed() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.register(&(0..10).map(|i| reg(i, &[])).collect::<Vec<_>>()).unwrap();
        let asked: Vec<StorePath> = (0..300).map(|i| path(i * 7 % 20)).collect();
        let refs: Vec<&StorePath> = asked.iter().collect();
        // 10 rows, 300 questions: answered from one scan.
        let scanned = db.valid_flags(&refs).unwrap();
        // 3 questions: a probe each.
        let probed: Vec<bool> = refs.chunks(3).flat_map(|c| db.valid_flags(c).unwrap()).collect();
        let want: Vec<bool> = (0..300).map(|i| i * 7 % 20 < 10).collect();
        assert_eq!(scanned, want);
        assert_eq!(probed, want);
    }

    #[test]
    fn a_bulk_registration_does_not_bring_back_an_index_recent_nix_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.conn.execute_batch("drop index IndexReferrer").unwrap();
        let batch: Vec<Registration> = (0..3000).map(|i| reg(i, &[(i + 1) % 3000, (i + 7) % 3000, i]).clone_acyclic(i)).collect();
        db.register(&batch).unwrap();
        assert_eq!(indexes(&db), vec!["IndexReference".to_string(), "sqlite_autoindex_Refs_1".to_string()]);
    }

    #[test]
    fn a_failed_bulk_registration_leaves_nothing_and_the_indexes_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let before = indexes(&db);
        let mut batch: Vec<Registration> = (0..3000).map(|i| reg(i, &[(i + 1) % 3000, i]).clone_acyclic(i)).collect();
        batch.push(reg(5000, &[6000])); // 6000 is neither valid nor in the batch
        assert!(matches!(db.register(&batch), Err(StoreError::NotValid(p)) if p.ends_with("-p6000")));
        assert_eq!(db.count_paths().unwrap(), 0);
        assert_eq!(indexes(&db), before);
        assert_eq!(foreign_keys(&db), 1);
    }

    #[test]
    fn closing_a_writer_leaves_an_empty_wal_for_the_next_reader() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.register(&(0..500).map(|i| reg(i, &[i])).collect::<Vec<_>>()).unwrap();
        let wal = dir.path().join("db.sqlite-wal");
        assert!(wal.metadata().unwrap().len() > 0, "the registration went through the WAL");
        drop(db);
        assert_eq!(wal.metadata().unwrap().len(), 0, "the closing checkpoint truncates the (persistent) WAL");
    }

    fn open_reader(dir: &Path) -> Database {
        Database::open(&dir.join("db.sqlite"), OpenMode::LoneReader, &StoreDir::default(), false).unwrap()
    }

    #[test]
    fn a_reader_leaves_the_shared_memory_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).register(&[reg(1, &[])]).unwrap();
        let shm = dir.path().join("db.sqlite-shm");
        let before = std::fs::read(&shm).expect("a writer's close leaves the -shm file");
        let modified = shm.metadata().unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let reader = open_reader(dir.path());
        assert!(reader.path_info(&path(1)).unwrap().is_some());
        drop(reader);
        assert_eq!(shm.metadata().unwrap().modified().unwrap(), modified, "not truncated or rewritten");
        assert_eq!(std::fs::read(&shm).unwrap(), before);
    }

    /// (Writers in another process while the reader is open: tests/local_store.rs.)
    #[test]
    fn a_lone_reader_shares_the_index_of_a_writer_already_open() {
        let dir = tempfile::tempdir().unwrap();
        let writer = open(dir.path());
        writer.register(&[reg(1, &[])]).unwrap();
        let reader = open_reader(dir.path());
        writer.register(&[reg(2, &[1])]).unwrap();
        assert_eq!(reader.path_info(&path(2)).unwrap().unwrap().references, BTreeSet::from([path(1)]));
        assert_eq!(reader.count_paths().unwrap(), 2);
    }

    #[test]
    fn a_reader_opens_a_database_whose_shared_memory_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).register(&[reg(1, &[])]).unwrap();
        let shm = dir.path().join("db.sqlite-shm");
        std::fs::remove_file(&shm).unwrap();
        std::fs::remove_file(dir.path().join("db.sqlite-wal")).unwrap();
        assert!(open_reader(dir.path()).path_info(&path(1)).unwrap().is_some());
        assert_eq!(shm.metadata().unwrap().len(), 0, "created empty and left so");
        // A writer initialises it as usual, and readers then share it.
        let writer = open(dir.path());
        writer.register(&[reg(2, &[])]).unwrap();
        assert!(open_reader(dir.path()).path_info(&path(2)).unwrap().is_some());
    }

    #[test]
    fn a_reader_of_a_rollback_journal_database_creates_no_shared_memory_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.register(&[reg(1, &[])]).unwrap();
        db.conn.query_row("pragma journal_mode = delete", [], |_| Ok(())).unwrap();
        drop(db);
        for leftover in ["db.sqlite-shm", "db.sqlite-wal"] {
            let _ = std::fs::remove_file(dir.path().join(leftover));
        }
        assert!(open_reader(dir.path()).path_info(&path(1)).unwrap().is_some());
        assert!(!dir.path().join("db.sqlite-shm").exists());
    }

    #[test]
    fn database_paths_with_uri_characters_open() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a?b#c%41d");
        std::fs::create_dir(&dir).unwrap();
        open(&dir).register(&[reg(1, &[])]).unwrap();
        assert!(open_reader(&dir).path_info(&path(1)).unwrap().is_some());
        let immutable = Database::open(&dir.join("db.sqlite"), OpenMode::Immutable, &StoreDir::default(), false).unwrap();
        assert!(immutable.path_info(&path(1)).unwrap().is_some());
        assert!(!root.path().join("a").exists(), "nothing created at the path cut at '?'");
    }

    #[test]
    fn a_cycle_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let batch = vec![reg(1, &[2]), reg(2, &[3]), reg(3, &[1, 3]), reg(4, &[4])];
        assert!(matches!(db.register(&batch), Err(StoreError::Cycle(_))));
        assert_eq!(db.count_paths().unwrap(), 0);
        // Self-references alone are no cycle.
        db.register(&[reg(4, &[4])]).unwrap();
        assert_eq!(db.path_info(&path(4)).unwrap().unwrap().references, BTreeSet::from([path(4)]));
    }

    #[test]
    fn registering_again_adds_to_the_references_of_existing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.register(&[reg(1, &[]), reg(2, &[]), reg(3, &[1])]).unwrap();
        db.register(&[reg(3, &[2])]).unwrap();
        assert_eq!(db.path_info(&path(3)).unwrap().unwrap().references, BTreeSet::from([path(1), path(2)]));
    }

    impl Registration {
        /// Keeps only references to itself or to higher indices, so the batch has no cycle.
        fn clone_acyclic(self, i: usize) -> Registration {
            let mut r = self;
            r.info.references.retain(|p| {
                let s = p.to_string();
                let n: usize = s.rsplit("-p").next().unwrap().parse().unwrap();
                n >= i
            });
            r
        }
    }
}
