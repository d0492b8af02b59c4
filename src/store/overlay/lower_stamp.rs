//! What the lower store looked like when the overlay was mounted, so `doctor` can tell
//! when it changed underneath a live mount. OverlayFS does not support changing a lower
//! layer while it is mounted: entries added or removed there may show stale or not at
//! all until the overlay is mounted again.
//!
//! The stamp is the store directory's mtime (an entry added, removed or renamed changes
//! it) and, for a local lower store, its database's row count and highest row id (a
//! registration or a deletion changes them; a WAL checkpoint, which touches the files but
//! not the rows, does not). It is written next to the upper database, keyed by the
//! kernel's id of the mount it describes.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mountinfo;

/// `${state}/overlay-lower-stamp`.
pub fn stamp_path(state: &Path) -> PathBuf {
    state.join("overlay-lower-stamp")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowerStamp {
    /// The mount's id in `/proc/self/mountinfo`, and the boot it is from (ids are
    /// reused: a later mount may get a freed one, and a reboot starts over).
    pub mount_id: u64,
    pub boot_id: String,
    /// Seconds since the epoch.
    pub mounted_at: u64,
    pub lowerdir: PathBuf,
    pub dir_mtime_ns: i128,
    pub lower_db: Option<PathBuf>,
    /// `(count, max id)` of the lower database's `ValidPaths`.
    pub rows: Option<(u64, u64)>,
}

/// What a stamp says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampCheck {
    /// No stamp for the current mount: it was mounted by something else (fstab, a unit).
    Unrecorded,
    Unchanged {
        mounted_at: u64,
    },
    /// What changed, in words, since `mounted_at`.
    Changed {
        mounted_at: u64,
        what: Vec<String>,
    },
}

fn dir_mtime_ns(dir: &Path) -> Option<i128> {
    let m = std::fs::metadata(dir).ok()?;
    Some(m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128)
}

/// Read-only, as the overlay itself opens the lower database (SQLite may create its
/// `-wal` and `-shm` files, as for any reader of a WAL database that may).
fn rows(db: &Path) -> Option<(u64, u64)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    // A writer in the middle of a commit (rollback-journal mode) is waited for, not
    // taken for a change.
    conn.busy_timeout(std::time::Duration::from_secs(5)).ok()?;
    conn.query_row("SELECT count(*), coalesce(max(id), 0) FROM ValidPaths", [], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
    .ok()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn mount_id_at(real: &Path) -> Option<u64> {
    let entries = mountinfo::read_self().ok()?;
    let real = std::fs::canonicalize(real).ok()?;
    mountinfo::top_mount_at(&entries, &real).map(|m| m.id)
}

/// Takes the stamp of the mount now at `real`.
pub fn take(real: &Path, lowerdir: &Path, lower_db: Option<&Path>) -> Option<LowerStamp> {
    Some(LowerStamp {
        mount_id: mount_id_at(real)?,
        boot_id: boot_id(),
        mounted_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        lowerdir: lowerdir.to_path_buf(),
        dir_mtime_ns: dir_mtime_ns(lowerdir)?,
        lower_db: lower_db.map(Path::to_path_buf),
        rows: lower_db.and_then(rows),
    })
}

/// Forgets the stamp (the mount it describes is going or gone).
pub fn forget(file: &Path) {
    let _ = std::fs::remove_file(file);
}

/// Records `stamp` at `file` (atomically: a torn stamp would read as a change).
pub fn record(file: &Path, stamp: &LowerStamp) -> std::io::Result<()> {
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(stamp).expect("a stamp serialises"))?;
    std::fs::rename(&tmp, file)
}

/// Compares the recorded stamp with the mount now at `real` and the lower store now.
pub fn check(file: &Path, real: &Path) -> StampCheck {
    let Some(stamp) = std::fs::read(file).ok().and_then(|b| serde_json::from_slice::<LowerStamp>(&b).ok()) else {
        return StampCheck::Unrecorded;
    };
    if mount_id_at(real) != Some(stamp.mount_id) || stamp.boot_id != boot_id() {
        return StampCheck::Unrecorded;
    }
    let mut what = Vec::new();
    if dir_mtime_ns(&stamp.lowerdir) != Some(stamp.dir_mtime_ns) {
        what.push(format!("entries of the lower store directory '{}' were added or removed", stamp.lowerdir.display()));
    }
    if let Some(db) = &stamp.lower_db {
        let now = rows(db);
        if now != stamp.rows {
            let words = |r: Option<(u64, u64)>| r.map_or("unreadable".to_string(), |(n, id)| format!("{n} paths, last id {id}"));
            what.push(format!("the lower database '{}' changed ({} then, {} now)", db.display(), words(stamp.rows), words(now)));
        }
    }
    if what.is_empty() {
        StampCheck::Unchanged { mounted_at: stamp.mounted_at }
    } else {
        StampCheck::Changed { mounted_at: stamp.mounted_at, what }
    }
}
