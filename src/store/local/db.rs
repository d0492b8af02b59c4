//! The store database, `${state}/db/db.sqlite`, with Nix's schema and column encodings,
//! so a row we write is the row Nix would write and we read every row Nix writes.
//!
//! Writers use Nix's connection settings (foreign keys on, WAL, `synchronous=normal`, a
//! one-hour busy timeout). A lower store's database is opened read-only and read live:
//! it may grow between and during our queries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::format::{ContentAddress, DrvOutput, Hash, Realisation, StoreDir, StorePath};
use crate::store::{PathInfo, Result, StoreError};

/// The 2.8 schema. `if not exists` everywhere, so it also runs on a database Nix made.
const SCHEMA: &str = "
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
";

/// The `ca-derivations` tables as Nix 2.8 creates them (with `db/ca-schema` at
/// [`CA_SCHEMA_VERSION`]); created on the first realisation registered.
const CA_SCHEMA: &str = "
create table if not exists Realisations (
    id integer primary key autoincrement not null,
    drvPath text not null,
    outputName text not null,
    outputPath integer not null,
    signatures text,
    foreign key (outputPath) references ValidPaths(id) on delete cascade
);
create index if not exists IndexRealisations on Realisations(drvPath, outputName);
create table if not exists RealisationsRefs (
    referrer integer not null,
    realisationReference integer,
    foreign key (referrer) references Realisations(id) on delete cascade,
    foreign key (realisationReference) references Realisations(id) on delete restrict
);
create index if not exists IndexRealisationsRefs on RealisationsRefs(referrer);
create index if not exists IndexRealisationsRefsOnOutputPath on Realisations(outputPath);
";

/// What Nix 2.8 writes to `db/ca-schema` once the tables above exist.
pub const CA_SCHEMA_VERSION: &str = "3";

/// Deleting a path cascades to the realisations built to it; a realisation another one
/// depends on would then stop the deletion (`on delete restrict`). This connection-only
/// trigger drops those dependency edges first, as recent Nix's schema does, without
/// changing the schema Nix 2.8 sees.
const REALISATION_CLEANUP: &str = "
create temp trigger if not exists DropRealisationRefsOfDeletedPath before delete on main.ValidPaths
begin
    delete from RealisationsRefs where realisationReference in (select id from Realisations where outputPath = old.id);
end;
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Creates the schema if missing; Nix's writer settings.
    ReadWrite,
    /// Never writes; sees what other writers commit.
    ReadOnly,
    /// [`OpenMode::ReadOnly`], and never writes the `-shm` file either (SQLite's
    /// `readonly_shm`). The first process to open a WAL database's shared memory
    /// otherwise truncates it, writes it back page by page and rebuilds the WAL index
    /// under exclusive locks: a dozen syscalls and file-system metadata updates, a tenth
    /// of a one-path query. Read-only, SQLite instead keeps the index in its own memory
    /// when no other process has the database open (reading the WAL, normally empty,
    /// itself), and uses the shared one when another process does. Only for a process
    /// that opens no writer on the same database: SQLite shares one `-shm` handle per
    /// file within a process, and a writer opened after this reader would find it
    /// read-only.
    LoneReader,
    /// Promised never to change (SQLite `immutable=1`): no locking at all.
    Immutable,
}

/// Opens a connection and reads the schema, so that a file SQLite cannot read fails here.
fn connect(path: &Path, mode: OpenMode) -> rusqlite::Result<Connection> {
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match mode {
        OpenMode::ReadWrite => Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?,
        OpenMode::ReadOnly => Connection::open_with_flags(path, read_only)?,
        OpenMode::LoneReader => Connection::open_with_flags(sqlite_uri(path, "readonly_shm=1"), read_only | OpenFlags::SQLITE_OPEN_URI)?,
        OpenMode::Immutable => Connection::open_with_flags(sqlite_uri(path, "immutable=1"), read_only | OpenFlags::SQLITE_OPEN_URI)?,
    };
    conn.busy_timeout(Duration::from_secs(3600))?;
    // A bigger page cache keeps closure walks over 100k-path stores in memory.
    // Closure walks fill temp tables: keep them in memory, not in temp files.
    conn.execute_batch("pragma cache_size = -65536; pragma mmap_size = 1073741824; pragma temp_store = memory;")?;
    Ok(conn)
}

/// Makes sure a WAL database's `-shm` file exists, as an empty file with the database's
/// mode and owner if it did not: what SQLite itself creates before the first connection
/// initialises it. Nix's last connection deletes the file on close, and a `readonly_shm`
/// reader cannot create it; a plain reader would, then truncate it and write it page by
/// page, which is what the lone reader avoids. A database in rollback-journal mode uses
/// no `-shm` file and gets none.
fn create_shm_file(db: &Path) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    match std::fs::symlink_metadata(&shm) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    // SQLite puts the file beside a symlinked database's target; leave that case to it.
    if std::fs::symlink_metadata(db)?.file_type().is_symlink() {
        return Ok(());
    }
    let mut db_file = std::fs::File::open(db)?;
    let mut header = [0u8; 20];
    db_file.read_exact(&mut header)?;
    // File format versions (bytes 18 and 19) of 2: WAL mode.
    if header[18] != 2 {
        return Ok(());
    }
    let meta = db_file.metadata()?;
    let mode = meta.mode() & 0o777;
    let file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&shm) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    // The database's mode whatever the umask, and root's file owned by the database's
    // owner so that it stays usable to them: as SQLite creates it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
    }
    Ok(())
}

/// A `readonly_shm` reader cannot start when the `-shm` file is gone (Nix's last
/// connection deletes it) or needs a recovery only a writer may run; a plain reader can.
/// (Only at open. The `-shm` file cannot go while this connection is open: no other
/// process can then close the database as its last user. A recovery can, rarely, become
/// necessary between the transactions of a long read, if a writer crashes while another
/// process has the database open; that read then fails with SQLite's error. A lone
/// reader is for one-shot commands.)
fn shared_memory_unusable(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi;
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.extended_code, ffi::SQLITE_READONLY_RECOVERY | ffi::SQLITE_READONLY_CANTINIT) || f.code == rusqlite::ErrorCode::CannotOpen)
}

/// `file:` URI of a database file with a query string; `%`, `?` and `#` in the path are
/// escaped so that they stay part of it.
fn sqlite_uri(path: &Path, query: &str) -> PathBuf {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut uri = if path.is_absolute() { b"file://".to_vec() } else { b"file:".to_vec() };
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' => uri.extend_from_slice(format!("%{b:02X}").as_bytes()),
            _ => uri.push(b),
        }
    }
    uri.push(b'?');
    uri.extend_from_slice(query.as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(uri))
}

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

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Db { path: self.path.clone(), source }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn parse_path(&self, s: &str) -> Result<StorePath> {
        Ok(self.store_dir.parse_path(s)?)
    }

    /// Decodes one `ValidPaths` row (columns in `INFO_COLUMNS` order), without references.
    fn row_to_info(&self, row: &rusqlite::Row) -> Result<(i64, PathInfo)> {
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

    fn path_list(&self, sql: &str, arg: &dyn rusqlite::ToSql) -> Result<BTreeSet<StorePath>> {
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
    fn fill_closure_ids(&self, roots: &[StorePath]) -> Result<Vec<StorePath>> {
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
    fn collect_closure(&self, with: &str) -> Result<Vec<PathInfo>> {
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

    /// A read transaction, so multi-statement reads see one snapshot of a live database.
    fn read_snapshot(&self) -> Result<SnapshotGuard<'_>> {
        if self.conn.is_autocommit() {
            self.conn.execute_batch("begin").map_err(self.err())?;
            Ok(SnapshotGuard { conn: Some(&self.conn) })
        } else {
            Ok(SnapshotGuard { conn: None })
        }
    }

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
    fn register_in_tx(&self, batch: &[Registration], refs: &[Vec<Option<u32>>]) -> Result<()> {
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

    /// Deletes rows (referrers must go first or in the same call), in one transaction.
    pub fn delete_paths(&mut self, paths: &[StorePath]) -> Result<()> {
        let path = self.path.clone();
        let err = |source| StoreError::Db { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut del = tx.prepare_cached("delete from ValidPaths where path = ?").map_err(err)?;
            for p in paths {
                del.execute([self.store_dir.display(p)]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
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
struct SnapshotGuard<'a> {
    conn: Option<&'a Connection>,
}

impl Drop for SnapshotGuard<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn {
            let _ = c.execute_batch("commit");
        }
    }
}

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

impl Database {
    /// Deletes rows in the given order (referrers first) in one transaction.
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

    pub fn delete_paths_in_order(&self, paths: &[StorePath]) -> Result<()> {
        self.in_tx(|| {
            let mut del = self.conn.prepare_cached("delete from ValidPaths where path = ?").map_err(self.err())?;
            for p in paths {
                del.execute([self.store_dir.display(p)]).map_err(self.err())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
