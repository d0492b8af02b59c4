//! `verify`: checks that every registered path exists and, with contents checking, that
//! its files still hash to the recorded NAR hash; also the `.links` pool. Messages are
//! Nix's words. Hashing runs on all cores.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use rayon::prelude::*;

use crate::format::hash::{Hash, HashAlgo, HashSink};
use crate::format::StorePath;
use crate::store::{topo_sort, PathInfo, Result, Store};

/// What verification found and did.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Human-readable findings, in Nix's words, in the order they happened.
    pub messages: Vec<String>,
    /// Problems that remain (the command should fail).
    pub errors: usize,
    /// Paths whose rows were removed because their files disappeared and nothing referred to them.
    pub removed: Vec<StorePath>,
    /// Paths whose contents do not match.
    pub modified: Vec<StorePath>,
    /// Paths whose files are gone while other paths still refer to them.
    pub missing_with_referrers: Vec<StorePath>,
    pub checked: usize,
}

/// The NAR hash and size of a file system object.
pub fn hash_path(path: &Path, algo: HashAlgo) -> std::io::Result<(Hash, u64)> {
    Ok(crate::store::fs::tree::dump(path, HashSink::new(algo))?.finish())
}

/// Hashes the given paths' files in parallel; `None` where a file could not be read.
pub fn hash_paths(store: &dyn Store, infos: &[PathInfo]) -> Vec<Option<(Hash, u64)>> {
    let jobs: Vec<_> = infos.iter().map(|i| (store.real_path(&i.path), i.nar_hash.algo())).collect();
    let progress =
        crate::progress::Task::new("verify", "paths hashed").with_total(infos.len() as u64, infos.iter().map(|i| i.nar_size).sum());
    jobs.par_iter()
        .map(|(real, algo)| {
            let r = hash_path(real, *algo).ok();
            progress.advance(1, r.as_ref().map_or(0, |(_, n)| *n));
            r
        })
        .collect()
}

/// A path's contents compared with its info; the message Nix prints when it differs.
pub fn modified_message(store_display: &str, info: &PathInfo, got: &Hash) -> String {
    format!("path '{store_display}' was modified! expected hash '{}', got '{}'", info.nar_hash.to_nix32_string(), got.to_nix32_string())
}

/// Plans and runs verification of `infos` (all paths the store registers). The caller
/// supplies deletion of rows for vanished paths (`forget`), and gets back fixes to apply.
pub struct Verifier<'a> {
    pub store: &'a dyn Store,
    pub check_contents: bool,
    pub notice: &'a mut dyn FnMut(&str),
}

/// A change verification wants written to the database.
#[derive(Debug)]
pub enum Fix {
    Forget(StorePath),
    SetHash(StorePath, Hash),
    SetSize(StorePath, u64),
}

impl Verifier<'_> {
    pub fn run(&mut self, infos: Vec<PathInfo>, links_dir: Option<&Path>) -> Result<(VerifyReport, Vec<Fix>)> {
        let sd = self.store.store_dir().clone();
        let mut report = VerifyReport::default();
        let mut fixes = Vec::new();
        (self.notice)("reading the Nix store...");
        (self.notice)("checking path existence...");
        // Referrers first, so a vanished path whose only referrers also vanished can go.
        let mut order = topo_sort(infos)?;
        order.reverse();
        let mut forgotten: BTreeSet<StorePath> = BTreeSet::new();
        let mut present = Vec::new();
        for info in order {
            let real = self.store.real_path(&info.path);
            let shown = sd.display(&info.path);
            match fs::symlink_metadata(&real) {
                Ok(_) => {
                    present.push(info);
                    continue;
                }
                // Only "no such file" means the path disappeared. EACCES, EIO or a dead
                // mount's ENOTCONN say nothing about the path: report, change nothing.
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    let m = format!("cannot check path '{shown}': {e}");
                    (self.notice)(&m);
                    report.messages.push(m);
                    report.errors += 1;
                    continue;
                }
                Err(_) => {}
            }
            let referrers = self.store.referrers(&info.path)?;
            let live_referrers = referrers.iter().any(|r| r != &info.path && !forgotten.contains(r));
            if live_referrers {
                let m = format!("path '{shown}' disappeared, but it still has valid referrers!");
                (self.notice)(&m);
                report.messages.push(m);
                report.errors += 1;
                report.missing_with_referrers.push(info.path.clone());
            } else {
                let m = format!("path '{shown}' disappeared, removing from database...");
                (self.notice)(&m);
                report.messages.push(m);
                forgotten.insert(info.path.clone());
                report.removed.push(info.path.clone());
                fixes.push(Fix::Forget(info.path));
            }
        }
        if self.check_contents {
            (self.notice)("checking link hashes...");
            if let Some(links) = links_dir {
                self.check_links(links, &mut report);
            }
            (self.notice)("checking store hashes...");
            present.sort_by(|a, b| a.path.cmp(&b.path));
            let hashes = hash_paths(self.store, &present);
            for (info, got) in present.iter().zip(hashes) {
                report.checked += 1;
                let shown = sd.display(&info.path);
                let Some((hash, size)) = got else {
                    let m = format!("path '{shown}' could not be read");
                    (self.notice)(&m);
                    report.messages.push(m);
                    report.errors += 1;
                    continue;
                };
                if info.nar_hash.digest().iter().all(|&b| b == 0) {
                    let m = format!("fixing missing hash on '{shown}'");
                    (self.notice)(&m);
                    fixes.push(Fix::SetHash(info.path.clone(), hash));
                } else if hash != info.nar_hash {
                    let m = modified_message(&shown, info, &hash);
                    (self.notice)(&m);
                    report.messages.push(m);
                    report.modified.push(info.path.clone());
                    report.errors += 1;
                    continue;
                }
                if info.nar_size == 0 {
                    let m = format!("updating size field on '{shown}' to {size}");
                    (self.notice)(&m);
                    fixes.push(Fix::SetSize(info.path.clone(), size));
                }
            }
        }
        Ok((report, fixes))
    }

    /// Every file in `.links` is named after the nix32 SHA-256 of its own NAR.
    fn check_links(&mut self, links: &Path, report: &mut VerifyReport) {
        let Ok(entries) = fs::read_dir(links) else { return };
        let files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        let results: Vec<_> = files.par_iter().map(|p| (p, hash_path(p, HashAlgo::Sha256).ok())).collect();
        for (p, got) in results {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some((h, _)) = got {
                if h.to_nix32() != name {
                    let m = format!("link '{}' was modified! expected hash '{name}', got '{}'", p.display(), h.to_nix32());
                    (self.notice)(&m);
                    report.messages.push(m);
                    report.errors += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::StoreDir;
    use crate::store::local::{ingest, LocalConfig, LocalStore};

    /// A store whose directory fails with ELOOP (it was swapped for a symlink loop after
    /// the open): every path is reported, none is forgotten.
    #[test]
    fn only_enoent_means_disappeared() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalConfig {
            store_dir: StoreDir::new("/nix/store"),
            real: dir.path().join("store"),
            state: dir.path().join("state"),
            read_only: false,
            immutable: false,
            lone_reader: false,
            create_links_dir: true,
        };
        let mut store = LocalStore::open(config.clone()).unwrap();
        std::fs::write(dir.path().join("a"), "a\n").unwrap();
        let p = ingest::add_path(&mut store, &dir.path().join("a")).unwrap();
        std::fs::rename(&config.real, dir.path().join("away")).unwrap();
        std::os::unix::fs::symlink(&config.real, &config.real).unwrap();
        let infos = store.db().all_infos().unwrap();
        let mut seen = Vec::new();
        let mut notice = |m: &str| seen.push(m.to_string());
        let (report, fixes) = Verifier { store: &store, check_contents: false, notice: &mut notice }.run(infos, None).unwrap();
        assert!(fixes.is_empty(), "{fixes:?}");
        assert_eq!(report.errors, 1);
        assert!(report.removed.is_empty());
        assert!(seen.iter().any(|m| m.starts_with(&format!("cannot check path '/nix/store/{}'", p.basename()))), "{seen:?}");
        // Really gone: forgotten, as Nix does.
        std::fs::remove_file(&config.real).unwrap();
        std::fs::create_dir(&config.real).unwrap();
        let infos = store.db().all_infos().unwrap();
        let mut quiet = |_: &str| {};
        let (report, fixes) = Verifier { store: &store, check_contents: false, notice: &mut quiet }.run(infos, None).unwrap();
        assert_eq!(report.removed, vec![p]);
        assert_eq!(fixes.len(), 1);
    }
}
