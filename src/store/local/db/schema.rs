//! Nix 2.8's schema, the `ca-derivations` tables, and how connections are opened
//! (settings, read-only and lone readers, the shared-memory file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// The 2.8 schema. `if not exists` everywhere, so it also runs on a database Nix made.
pub(super) const SCHEMA: &str = "
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
pub(super) const CA_SCHEMA: &str = "
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
pub(super) const REALISATION_CLEANUP: &str = "
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
pub(super) fn connect(path: &Path, mode: OpenMode) -> rusqlite::Result<Connection> {
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
pub(super) fn create_shm_file(db: &Path) -> std::io::Result<()> {
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
pub(super) fn shared_memory_unusable(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi;
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.extended_code, ffi::SQLITE_READONLY_RECOVERY | ffi::SQLITE_READONLY_CANTINIT) || f.code == rusqlite::ErrorCode::CannotOpen)
}

/// `file:` URI of a database file with a query string; `%`, `?` and `#` in the path are
/// escaped so that they stay part of it.
pub(super) fn sqlite_uri(path: &Path, query: &str) -> PathBuf {
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
