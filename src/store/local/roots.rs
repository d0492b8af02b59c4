//! Garbage collector roots, found exactly where and how Nix 2.8 finds them:
//! `${state}/gcroots` and `${state}/profiles` (direct and one-level indirect symlinks,
//! regular files named after store paths), temporary roots in `${state}/temproots/<pid>`,
//! and runtime roots of running processes under `/proc`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::format::{StoreDir, StorePath};
use crate::store::local::lock::{open_lock_file, FileLock, LockKind};
use crate::store::{io_err, Result, StoreError};

/// Roots by target: each store path and the links (or `{temp:PID}`, `/proc/…`) that hold it.
pub type Roots = BTreeMap<StorePath, BTreeSet<String>>;

/// Where to look, and how to judge a direct root.
pub struct RootFinder<'a> {
    pub store_dir: &'a StoreDir,
    pub state: &'a Path,
    pub is_valid: &'a dyn Fn(&StorePath) -> bool,
    /// Messages Nix prints on stderr (`skipping invalid root …`, `removing stale …`).
    pub notice: &'a mut dyn FnMut(&str),
}

impl RootFinder<'_> {
    /// Permanent roots (gcroots and profiles), then temporary, then runtime roots.
    pub fn find_all(&mut self, runtime: bool) -> Result<Roots> {
        let mut roots = Roots::new();
        self.find_permanent(&mut roots);
        find_temp_roots(self.store_dir, self.state, &mut roots, self.notice)?;
        if runtime {
            find_runtime_roots(self.store_dir, &mut roots);
        }
        Ok(roots)
    }

    pub fn find_permanent(&mut self, roots: &mut Roots) {
        let gcroots = self.state.join("gcroots");
        let profiles = self.state.join("profiles");
        self.scan(&gcroots, &gcroots.join("auto"), roots);
        self.scan(&profiles, &gcroots.join("auto"), roots);
    }

    fn store_prefix(&self) -> String {
        format!("{}/", self.store_dir.as_str())
    }

    fn add_direct(&mut self, link: &Path, target: &str, roots: &mut Roots) {
        match self.store_dir.parse_path_prefix(target) {
            Ok(p) if (self.is_valid)(&p) => {
                roots.entry(p).or_default().insert(link.display().to_string());
            }
            _ => (self.notice)(&format!("skipping invalid root from '{}' to '{}'", link.display(), target)),
        }
    }

    fn scan(&mut self, dir: &Path, auto_dir: &Path, roots: &mut Roots) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        names.sort();
        for path in names {
            let Ok(meta) = fs::symlink_metadata(&path) else { continue };
            let ft = meta.file_type();
            if ft.is_dir() {
                self.scan(&path, auto_dir, roots);
            } else if ft.is_symlink() {
                let Ok(target) = fs::read_link(&path) else { continue };
                let t = target.to_string_lossy().to_string();
                if t.starts_with(&self.store_prefix()) {
                    self.add_direct(&path, &t, roots);
                    continue;
                }
                // Indirect: one level, through the user's link.
                let abs = if target.is_absolute() { target.clone() } else { path.parent().unwrap_or(Path::new("/")).join(&target) };
                match fs::symlink_metadata(&abs) {
                    Err(_) => {
                        if path.starts_with(auto_dir) {
                            (self.notice)(&format!("removing stale link from '{}' to '{}'", path.display(), abs.display()));
                            let _ = fs::remove_file(&path);
                        }
                    }
                    Ok(m) if m.file_type().is_symlink() => {
                        if let Ok(t2) = fs::read_link(&abs) {
                            let t2 = t2.to_string_lossy().to_string();
                            if t2.starts_with(&self.store_prefix()) {
                                self.add_direct(&abs, &t2, roots);
                            }
                        }
                    }
                    Ok(_) => {}
                }
            } else if ft.is_file() {
                let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                if let Ok(p) = StorePath::from_basename(&name) {
                    if (self.is_valid)(&p) {
                        roots.entry(p).or_default().insert(path.display().to_string());
                    }
                }
            }
        }
    }
}

/// Reads `temproots/<pid>` files. A file whose owner is gone (its exclusive lock can be
/// taken) is stale and removed, as Nix does. A file that cannot be read is an error, not
/// something to skip: it may hold the only root of a path being added right now.
pub fn find_temp_roots(store_dir: &StoreDir, state: &Path, roots: &mut Roots, notice: &mut dyn FnMut(&str)) -> Result<()> {
    let dir = state.join("temproots");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io_err(&dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let file = match open_lock_file(&path, false) {
            Ok(f) => f,
            // Its owner finished and removed it meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(temp_roots_err(&path, e)),
        };
        if let Ok(Some(lock)) = FileLock::from_file(file, &path, LockKind::Exclusive, false) {
            notice(&format!("removing stale temporary roots file '{}'", path.display()));
            let _ = fs::remove_file(&path);
            let _ = (&*lock.file()).write_all(b"d");
            continue;
        }
        let mut content = Vec::new();
        match fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut content)) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(temp_roots_err(&path, e)),
        }
        for item in content.split(|&b| b == 0).filter(|s| !s.is_empty()) {
            let s = String::from_utf8_lossy(item);
            if let Ok(p) = store_dir.parse_path_prefix(&s) {
                roots.entry(p).or_default().insert(format!("{{temp:{name}}}"));
            }
        }
    }
    Ok(())
}

fn temp_roots_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Other(format!(
        "cannot read temporary roots file '{}': {e}; it may protect paths being added, so nothing is collected (fix its permissions or remove it if its process is gone)",
        path.display()
    ))
}

/// Store paths mentioned by running processes: executables, working directories, open
/// files, memory maps and environments (logical store paths, as Nix reads them).
pub fn find_runtime_roots(store_dir: &StoreDir, roots: &mut Roots) {
    let prefix = format!("{}/", store_dir.as_str());
    let mut add = |text: &str, link: String| {
        let mut rest = text;
        while let Some(i) = rest.find(&prefix) {
            let tail = &rest[i + prefix.len()..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c))).unwrap_or(tail.len());
            if let Ok(p) = StorePath::from_basename(&tail[..end]) {
                roots.entry(p).or_default().insert(link.clone());
            }
            rest = &tail[end..];
        }
    };
    let Ok(procs) = fs::read_dir("/proc") else { return };
    let me = std::process::id().to_string();
    for e in procs.filter_map(|e| e.ok()) {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let base = e.path();
        for l in ["exe", "cwd"] {
            if let Ok(t) = fs::read_link(base.join(l)) {
                add(&t.to_string_lossy(), format!("/proc/{pid}/{l}"));
            }
        }
        if let Ok(fds) = fs::read_dir(base.join("fd")) {
            for fd in fds.filter_map(|f| f.ok()) {
                if let Ok(t) = fs::read_link(fd.path()) {
                    add(&t.to_string_lossy(), format!("/proc/{pid}/fd/{}", fd.file_name().to_string_lossy()));
                }
            }
        }
        if let Ok(maps) = fs::read(base.join("maps")) {
            add(&String::from_utf8_lossy(&maps), format!("/proc/{pid}/maps"));
        }
        if let Ok(env) = fs::read(base.join("environ")) {
            add(&String::from_utf8_lossy(&env), format!("/proc/{pid}/environ"));
        }
    }
    for f in ["/proc/sys/kernel/modprobe", "/proc/sys/kernel/fbsplash", "/proc/sys/kernel/poweroff_cmd"] {
        if let Ok(t) = fs::read(f) {
            add(&String::from_utf8_lossy(&t), f.to_string());
        }
    }
}

/// Formats roots as `nix-store --gc --print-roots` does: sorted by (link, path).
pub fn print_roots_lines(store_dir: &StoreDir, roots: &Roots) -> Vec<String> {
    let mut pairs: Vec<(String, String)> =
        roots.iter().flat_map(|(p, links)| links.iter().map(move |l| (l.clone(), store_dir.display(p)))).collect();
    pairs.sort();
    pairs.into_iter().map(|(l, p)| format!("{l} -> {p}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_temp_roots_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tr = dir.path().join("temproots");
        fs::create_dir_all(&tr).unwrap();
        let sd = StoreDir::new("/nix/store");
        let mut roots = Roots::new();
        // A symlink planted there is not read through (and not skipped either).
        std::os::unix::fs::symlink("/etc/passwd", tr.join("1234")).unwrap();
        let err = find_temp_roots(&sd, dir.path(), &mut roots, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("cannot read temporary roots file"), "{err}");
        fs::remove_file(tr.join("1234")).unwrap();
        fs::write(tr.join("1234"), "/nix/store/00000000000000000000000000000000-x\0").unwrap();
        find_temp_roots(&sd, dir.path(), &mut roots, &mut |_| {}).unwrap();
        assert!(roots.is_empty(), "a stale file (nobody holds its lock) is removed: {roots:?}");
    }
}
