//! The Nix local store: files under `real`, metadata under `state`, laid out, locked and
//! encoded as Nix 2.8 does, so either program can open a store the other wrote.
//!
//! ```text
//! <real>/<hash>-<name>          store objects (read-only, mtime 1)
//! <real>/<hash>-<name>.lock     per-path lock while a path is added
//! <real>/.links/                optimise pool (created, kept as Nix keeps it)
//! <state>/db/db.sqlite          the database (schema in db.rs)
//! <state>/db/schema             "10", no newline
//! <state>/db/big-lock           shared flock while open
//! <state>/db/reserved           space GC can free when the disk is full
//! <state>/gcroots/ profiles/ temproots/
//! ```

pub mod db;
pub mod ingest;
pub mod lock;
pub mod roots;
pub mod temproots;
pub mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::format::derivation;
use crate::format::export;
use crate::format::hash::{HashAlgo, HashSink};
use crate::format::{DrvOutput, Realisation, StoreDir, StorePath};
use crate::store::{io_err, topo_sort, PathInfo, Result, Store, StoreError};

pub use db::{Database, OpenMode, Registration};
pub use lock::{FileLock, LockKind, PathLock};

/// `nixSchemaVersion`: the only database schema version Nix 2.8 and later use.
pub const SCHEMA_VERSION: u32 = 10;
/// Size of `db/reserved`, as Nix's `reserved-size` default.
const RESERVED_SIZE: u64 = 8 * 1024 * 1024;

/// Where a local store lives; derived from a store spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    pub store_dir: StoreDir,
    pub real: PathBuf,
    pub state: PathBuf,
    /// Never write: no layout creation, database opened read-only.
    pub read_only: bool,
    /// The database never changes: SQLite immutable mode (implies read-only).
    pub immutable: bool,
    /// Read-only, and this process opens no writer on the same database (a one-shot
    /// read command): the connection then leaves the `-shm` file alone too
    /// ([`OpenMode::LoneReader`]). Implies read-only.
    pub lone_reader: bool,
    /// Create `<real>/.links` as Nix does. Off while an overlay's mount point is not
    /// mounted: a directory made there would be hidden by the mount.
    pub create_links_dir: bool,
}

impl LocalConfig {
    /// The local store a spec describes (its `real` and `state`, whatever its type).
    pub fn from_spec(spec: &crate::spec::StoreSpec) -> LocalConfig {
        LocalConfig {
            store_dir: StoreDir::new(&spec.store_dir.to_string_lossy()),
            real: spec.real.clone(),
            state: spec.state.clone(),
            read_only: spec.read_only,
            immutable: spec.immutable,
            lone_reader: false,
            create_links_dir: true,
        }
    }

    /// Whether the store is opened only to read (read-only, immutable or a lone reader).
    pub fn never_writes(&self) -> bool {
        self.read_only || self.immutable || self.lone_reader
    }

    pub fn db_dir(&self) -> PathBuf {
        self.state.join("db")
    }

    pub fn db_path(&self) -> PathBuf {
        self.db_dir().join("db.sqlite")
    }
}

pub struct LocalStore {
    config: LocalConfig,
    db: Database,
    temp_roots: std::sync::Mutex<temproots::TempRoots>,
    _big_lock: Option<FileLock>,
}

/// Creates the directories and files of a local store that are missing, as Nix does on
/// its first open. Idempotent.
pub fn create_layout(config: &LocalConfig) -> Result<()> {
    // Root needs no user database lookup (the common case, and it costs a start-up's worth).
    let uid = nix::unistd::geteuid();
    let user = if uid.is_root() { "root".to_string() } else { crate::accounts::user_name(uid.as_raw()).unwrap_or_else(|| uid.to_string()) };
    let mut dirs = vec![
        config.real.clone(),
        config.db_dir(),
        config.state.join("gcroots").join("per-user").join(&user),
        config.state.join("profiles").join("per-user").join(&user),
        config.state.join("temproots"),
    ];
    if config.create_links_dir {
        dirs.push(config.real.join(".links"));
    }
    for d in &dirs {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let profiles_link = config.state.join("gcroots").join("profiles");
    if fs::symlink_metadata(&profiles_link).is_err() {
        std::os::unix::fs::symlink(config.state.join("profiles"), &profiles_link).map_err(io_err(&profiles_link))?;
    }
    let reserved = config.db_dir().join("reserved");
    if fs::metadata(&reserved).map(|m| m.len() != RESERVED_SIZE).unwrap_or(true) {
        let f = fs::File::create(&reserved).map_err(io_err(&reserved))?;
        f.set_len(RESERVED_SIZE).map_err(io_err(&reserved))?;
    }
    Ok(())
}

/// Reads `db/schema`: `None` when missing (a new store).
fn read_schema_version(path: &Path) -> Result<Option<u32>> {
    match fs::read_to_string(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
        Ok(s) => s.parse::<u32>().map(Some).map_err(|_| StoreError::CorruptSchemaFile(path.to_path_buf())),
    }
}

/// The largest `.drv` file read (real ones are kilobytes).
pub const MAX_DRV_SIZE: u64 = 16 << 20;

impl LocalStore {
    /// Opens a store, creating its layout first unless it is read-only.
    pub fn open(config: LocalConfig) -> Result<LocalStore> {
        let read_only = config.never_writes();
        if !read_only {
            create_layout(&config)?;
        }
        let schema_file = config.db_dir().join("schema");
        let big_lock = if read_only {
            None
        } else {
            let p = config.db_dir().join("big-lock");
            FileLock::acquire(&p, LockKind::Shared, true).map_err(io_err(&p))?
        };
        let version = read_schema_version(&schema_file)?;
        match version {
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::SchemaVersion(v)),
            Some(v) if v < SCHEMA_VERSION => {
                return Err(StoreError::Other(format!(
                    "'{}' is schema version {v}; open it once with Nix to upgrade it",
                    schema_file.display()
                )))
            }
            _ => {}
        }
        let db_path = config.db_path();
        if read_only && !db_path.exists() {
            return Err(StoreError::Other(format!(
                "'{}' is not a Nix store: it has no database ('{}'). Name an existing store, or make one first (`overlay-store --store 'local?root=…' init`, or `nix copy --to`)",
                config.real.display(),
                db_path.display()
            )));
        }
        let mode = if config.immutable {
            OpenMode::Immutable
        } else if config.lone_reader {
            OpenMode::LoneReader
        } else if config.read_only {
            OpenMode::ReadOnly
        } else {
            OpenMode::ReadWrite
        };
        let db = Database::open(&db_path, mode, &config.store_dir, version.is_none())?;
        if version.is_none() && !read_only {
            fs::write(&schema_file, SCHEMA_VERSION.to_string()).map_err(io_err(&schema_file))?;
        }
        let temp_roots = std::sync::Mutex::new(temproots::TempRoots::new(&config.state, &config.store_dir));
        Ok(LocalStore { config, db, temp_roots, _big_lock: big_lock })
    }

    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn db_mut(&mut self) -> &mut Database {
        &mut self.db
    }

    /// Keeps `path` from being collected by any GC (ours or Nix's) while we run.
    pub fn add_temp_root(&self, path: &StorePath) -> Result<()> {
        let dir = self.config.state.join("temproots");
        self.temp_roots.lock().expect("temp roots").add(path).map_err(io_err(dir))
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.config.never_writes() {
            return Err(StoreError::ReadOnly(self.config.real.display().to_string()));
        }
        Ok(())
    }

    pub fn lock_path_of(&self, path: &StorePath) -> PathBuf {
        self.config.real.join(format!("{}.lock", path.basename()))
    }

    /// A fresh name in the real store dir for an object being written. It is shaped like
    /// a store path (`<random hash>-tmp-overlay-store-<what>`) and protected by a
    /// temporary root on that hash before anything is created, so neither our GC nor
    /// stock Nix's deletes it while we write; if we die, the root goes stale and the
    /// next GC collects it.
    pub(crate) fn temp_name(&self, what: &str) -> Result<PathBuf> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let seed = format!("{}:{n}:{nanos}:{}", std::process::id(), self.config.real.display());
        let digest = crate::format::Hash::sha256(seed.as_bytes());
        let name = StorePath::new(crate::format::store_path::compress_hash(digest.digest()), &format!("tmp-overlay-store-{what}"))?;
        self.add_temp_root(&name)?;
        Ok(self.config.real.join(name.basename()))
    }

    /// The `DerivationOutputs` rows of a `.drv` whose file is at `file`.
    /// (A `.drv` whose file is a symlink, a FIFO or huge is an error, not a read that
    /// follows it, blocks or fills memory: uploads come from untrusted clients too.)
    pub fn read_drv_outputs(&self, path: &StorePath, file: &Path) -> Result<Vec<(String, StorePath)>> {
        if !path.is_derivation() {
            return Ok(Vec::new());
        }
        let text = crate::store::fs::tree::read_small_file(file, MAX_DRV_SIZE).map_err(io_err(file))?;
        let outs = derivation::parse_outputs(&text)
            .map_err(|e| StoreError::Derivation { path: self.config.store_dir.display(path), what: e.to_string() })?;
        outs.into_iter().filter(|o| !o.path.is_empty()).map(|o| Ok((o.name, self.config.store_dir.parse_path(&o.path)?))).collect()
    }

    /// Registers new paths whose files are already in place, in one transaction.
    pub fn register(&self, batch: &[Registration]) -> Result<()> {
        self.check_writable()?;
        self.db.register(batch)
    }

    /// Registers realisations (their output paths must be valid here) in one
    /// transaction, then records the `ca-derivations` schema version as Nix does.
    pub fn register_realisations(&self, batch: &[Realisation]) -> Result<()> {
        self.check_writable()?;
        self.check_ca_schema()?;
        self.db.register_realisations(batch)?;
        self.note_ca_schema()
    }

    /// Realisations are written in Nix 2.8's layout (`db/ca-schema` 3); an older layout
    /// must be migrated by Nix first.
    pub(crate) fn check_ca_schema(&self) -> Result<()> {
        let file = self.config.db_dir().join("ca-schema");
        match fs::read_to_string(&file) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&file)(e)),
            Ok(v) if v.trim() == db::CA_SCHEMA_VERSION => Ok(()),
            Ok(v) => Err(StoreError::Other(format!(
                "'{}' is ca-schema version {}, not {}: open the store once with Nix 2.8 (with ca-derivations enabled) to migrate it",
                file.display(),
                v.trim(),
                db::CA_SCHEMA_VERSION
            ))),
        }
    }

    /// Writes `db/ca-schema` when the tables exist and the file does not. Written after
    /// the commit: a crash in between leaves tables without the file, which Nix (and we)
    /// handle by creating the tables `if not exists` again.
    pub(crate) fn note_ca_schema(&self) -> Result<()> {
        let file = self.config.db_dir().join("ca-schema");
        if !file.exists() && self.db.has_realisations()? {
            let tmp = self.config.db_dir().join(".ca-schema.tmp");
            fs::write(&tmp, db::CA_SCHEMA_VERSION).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &file).map_err(io_err(&file))?;
        }
        Ok(())
    }

    /// Writes the NAR of a path's files (as they are on disk) to `out`.
    pub fn dump<W: Write>(&self, path: &StorePath, out: W) -> Result<W> {
        let real = self.real_path(path);
        crate::store::fs::tree::dump(&real, out).map_err(io_err(real))
    }

    /// Writes an export stream of `paths` (not their closure), dependencies first,
    /// refusing paths whose files no longer match their recorded hash.
    pub fn export<W: Write>(&self, paths: &[StorePath], out: &mut W) -> Result<()> {
        export_paths(self, paths, out)
    }
}

/// `nix-store --export` over any store: hash while writing, complain after, like Nix.
pub fn export_paths<W: Write>(store: &dyn Store, paths: &[StorePath], out: &mut W) -> Result<()> {
    let sd = store.store_dir().clone();
    let mut infos = Vec::new();
    for p in paths {
        infos.push(store.path_info(p)?.ok_or_else(|| StoreError::NotValid(sd.display(p)))?);
    }
    infos.sort_by(|a, b| a.path.cmp(&b.path));
    infos.dedup_by(|a, b| a.path == b.path);
    for info in topo_sort(infos)? {
        let real = store.real_path(&info.path);
        let mut got = None;
        export::write_item(out, &sd, &info.path, &info.references, info.deriver.as_ref(), |w| {
            let tee = Tee { a: w, b: HashSink::new(HashAlgo::Sha256) };
            let tee = crate::store::fs::tree::dump(&real, tee)?;
            got = Some(tee.b.finish().0);
            Ok(())
        })
        .map_err(io_err(&real))?;
        let got = got.expect("write_nar ran");
        if got != info.nar_hash {
            return Err(StoreError::HashChanged {
                path: sd.display(&info.path),
                expected: info.nar_hash.to_nix32_string(),
                got: got.to_nix32_string(),
            });
        }
    }
    export::write_end(out).map_err(io_err("<output>"))
}

struct Tee<A: Write, B: Write> {
    a: A,
    b: B,
}

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.a.write_all(buf)?;
        self.b.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.a.flush()
    }
}

impl Store for LocalStore {
    fn store_dir(&self) -> &StoreDir {
        &self.config.store_dir
    }

    fn references_of(&self, paths: &[StorePath]) -> Result<Vec<std::collections::BTreeSet<StorePath>>> {
        self.db.references_of_paths(paths)
    }

    fn edges_within(&self, paths: &[StorePath]) -> Result<Vec<Vec<u32>>> {
        self.db.edges_within(paths)
    }

    fn real_path(&self, path: &StorePath) -> PathBuf {
        self.config.real.join(path.basename())
    }

    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        self.db.path_info(path)
    }

    fn is_valid(&self, path: &StorePath) -> Result<bool> {
        self.db.is_valid(path)
    }

    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.db.referrers(path)
    }

    fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        self.db.valid_derivers(path)
    }

    fn derivation_outputs(&self, drv: &StorePath) -> Result<BTreeMap<String, StorePath>> {
        self.db.derivation_outputs(drv)
    }

    fn derivation_outputs_of(&self, drvs: &[StorePath]) -> Result<Vec<BTreeMap<String, StorePath>>> {
        self.db.derivation_outputs_of(drvs)
    }

    fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>> {
        crate::format::store_path::validate_hash_part(hash_part)?;
        self.db.path_from_hash_part(hash_part)
    }

    fn realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>> {
        self.db.realisation(id)
    }

    fn closure(&self, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
        let (infos, missing) = self.db.closure(roots)?;
        if let Some(m) = missing.first() {
            return Err(StoreError::NotValid(self.config.store_dir.display(m)));
        }
        Ok(infos)
    }

    fn all_paths(&self) -> Result<Vec<StorePath>> {
        self.db.all_paths()
    }

    fn requisites(&self, roots: &[StorePath]) -> Result<Vec<StorePath>> {
        let (paths, refs, missing) = self.db.closure_graph(roots)?;
        if let Some(m) = missing.first() {
            return Err(StoreError::NotValid(self.config.store_dir.display(m)));
        }
        let order = crate::store::topo::topo_order(&paths, &refs).map_err(|i| StoreError::Cycle(paths[i as usize].to_string()))?;
        let mut slots: Vec<Option<StorePath>> = paths.into_iter().map(Some).collect();
        Ok(order.into_iter().map(|i| slots[i as usize].take().expect("each once")).collect())
    }
}
