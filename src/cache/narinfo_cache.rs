//! A local cache of narinfos already fetched (and of paths a cache did not have), so a
//! second `copy --from` of the same closure asks the network only for what changed.
//! `narinfo-cache-positive-ttl` and `-negative-ttl` bound how long an answer is reused.
//!
//! One file per answer, under a directory per cache URL: `<hash part>.narinfo` with the
//! text, or an empty `<hash part>.missing`; the file's mtime is when it was learnt.
//! Cached narinfos are checked (signatures, hashes) exactly as fetched ones are, so the
//! cache needs no more trust than the network.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::format::Hash;

#[derive(Debug, Clone)]
pub struct NarinfoCache {
    dir: Option<PathBuf>,
    positive_ttl: Duration,
    negative_ttl: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Cached {
    Narinfo(String),
    Missing,
    Unknown,
}

impl NarinfoCache {
    /// A cache under `dir` (created when first written); `None` caches nothing.
    pub fn new(dir: Option<PathBuf>, positive_ttl_secs: u64, negative_ttl_secs: u64) -> NarinfoCache {
        NarinfoCache { dir, positive_ttl: Duration::from_secs(positive_ttl_secs), negative_ttl: Duration::from_secs(negative_ttl_secs) }
    }

    fn cache_dir(&self, cache: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(&Hash::sha256(cache.as_bytes()).to_base16()[..16]))
    }

    pub fn lookup(&self, cache: &str, hash_part: &str) -> Cached {
        let Some(dir) = self.cache_dir(cache) else { return Cached::Unknown };
        let fresh = |p: &Path, ttl: Duration| {
            fs::metadata(p)
                .ok()
                .and_then(|m| m.modified().ok())
                .is_some_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < ttl)
        };
        let info = dir.join(format!("{hash_part}.narinfo"));
        if !self.positive_ttl.is_zero() && fresh(&info, self.positive_ttl) {
            if let Ok(bytes) = crate::store::fs::tree::read_small_file(&info, crate::format::narinfo::MAX_NARINFO_BYTES as u64) {
                if let Ok(text) = String::from_utf8(bytes) {
                    return Cached::Narinfo(text);
                }
            }
        }
        if !self.negative_ttl.is_zero() && fresh(&dir.join(format!("{hash_part}.missing")), self.negative_ttl) {
            return Cached::Missing;
        }
        Cached::Unknown
    }

    /// Remembers an answer; failing to is only a missed optimisation.
    pub fn remember(&self, cache: &str, hash_part: &str, narinfo: Option<&str>) {
        let Some(dir) = self.cache_dir(cache) else { return };
        if fs::create_dir_all(&dir).is_err() {
            return;
        }
        let (name, other, body) = match narinfo {
            Some(text) => (format!("{hash_part}.narinfo"), format!("{hash_part}.missing"), text.as_bytes()),
            None => (format!("{hash_part}.missing"), format!("{hash_part}.narinfo"), &b""[..]),
        };
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}", std::process::id()));
        if fs::write(&tmp, body).is_ok() && fs::rename(&tmp, dir.join(&name)).is_ok() {
            let _ = fs::remove_file(dir.join(other));
        } else {
            let _ = fs::remove_file(&tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_remembered_per_cache_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let c = NarinfoCache::new(Some(dir.path().to_path_buf()), 3600, 3600);
        assert_eq!(c.lookup("file:///a", "h1"), Cached::Unknown);
        c.remember("file:///a", "h1", Some("StorePath: x\n"));
        c.remember("file:///a", "h2", None);
        assert_eq!(c.lookup("file:///a", "h1"), Cached::Narinfo("StorePath: x\n".into()));
        assert_eq!(c.lookup("file:///a", "h2"), Cached::Missing);
        assert_eq!(c.lookup("file:///b", "h1"), Cached::Unknown, "per cache URL");
        c.remember("file:///a", "h2", Some("now here\n"));
        assert_eq!(c.lookup("file:///a", "h2"), Cached::Narinfo("now here\n".into()));
        let no_negative = NarinfoCache::new(Some(dir.path().to_path_buf()), 3600, 0);
        no_negative.remember("file:///a", "h3", None);
        assert_eq!(no_negative.lookup("file:///a", "h3"), Cached::Unknown);
        assert_eq!(NarinfoCache::new(None, 1, 1).lookup("file:///a", "h1"), Cached::Unknown);
    }
}
