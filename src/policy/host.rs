//! What a policy can ask of the store it runs in: the `overlay.*` functions.
//!
//! `OverlayStore` answers for real; `SampleHost` answers from sample data for
//! `policy check`, where nothing may be touched.

use std::collections::BTreeSet;
use std::process::Command;

use crate::format::StorePath;
use crate::store::overlay::{mount, OverlayStore};
use crate::store::{PathInfo, Result, Store, StoreError};

/// `overlay.exec{…}`'s result.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

pub trait PolicyHost {
    fn parse(&self, path: &str) -> Result<StorePath>;
    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>>;
    fn in_lower(&self, path: &StorePath) -> Result<bool>;
    fn in_upper(&self, path: &StorePath) -> Result<bool>;
    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>>;
    fn closure_size(&self, path: &StorePath) -> Result<u64>;
    fn display(&self, path: &StorePath) -> String;
    fn remount(&self) -> Result<()>;
    fn mount(&self) -> Result<()>;
    fn umount(&self) -> Result<()>;
    fn exec(&self, argv: &[String]) -> Result<ExecResult>;
}

/// How long `overlay.exec` waits for a program before killing it (and its process group).
pub const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How much of each of a program's output streams `overlay.exec` keeps.
pub const EXEC_MAX_OUTPUT: usize = 1 << 20;

/// Runs a program without a shell and captures its output: at most `EXEC_MAX_OUTPUT`
/// bytes of each stream (the rest is read and dropped, so the program never blocks on a
/// full pipe), killed with its process group after `timeout`.
pub fn run_program(argv: &[String], timeout: std::time::Duration) -> Result<ExecResult> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let (prog, args) = argv.split_first().ok_or_else(|| StoreError::Other("overlay.exec needs at least the program".into()))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| StoreError::Other(format!("overlay.exec: cannot run '{prog}': {e}")))?;
    let capture = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut r) = r {
                let _ = r.by_ref().take(EXEC_MAX_OUTPUT as u64).read_to_end(&mut kept);
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    };
    let out = capture(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = capture(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(5)),
            Ok(None) | Err(_) => {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                // Grandchildren holding the pipes were killed with the group.
                let _ = (out.join(), err.join());
                return Err(StoreError::Other(format!(
                    "overlay.exec: '{prog}' did not finish within {} s and was killed",
                    timeout.as_secs_f64()
                )));
            }
        }
    };
    Ok(ExecResult { status: status.code().unwrap_or(-1), stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}

impl PolicyHost for OverlayStore {
    fn parse(&self, path: &str) -> Result<StorePath> {
        Ok(self.store_dir().parse_path(path)?)
    }
    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        Store::path_info(self, path)
    }
    fn in_lower(&self, path: &StorePath) -> Result<bool> {
        Ok(self.lower().path_info(path)?.is_some())
    }
    fn in_upper(&self, path: &StorePath) -> Result<bool> {
        self.upper().db().is_valid(path)
    }
    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        Store::referrers(self, path)
    }
    fn closure_size(&self, path: &StorePath) -> Result<u64> {
        Ok(self.closure(std::slice::from_ref(path))?.iter().map(|i| i.nar_size).sum())
    }
    fn display(&self, path: &StorePath) -> String {
        self.store_dir().display(path)
    }
    fn remount(&self) -> Result<()> {
        Ok(mount::remount(&self.plan().real)?)
    }
    fn mount(&self) -> Result<()> {
        self.plan().mount()?;
        Ok(())
    }
    fn umount(&self) -> Result<()> {
        self.plan().umount()?;
        Ok(())
    }
    fn exec(&self, argv: &[String]) -> Result<ExecResult> {
        run_program(argv, EXEC_TIMEOUT)
    }
}

/// Sample data for `policy check`: a small closure, half of it in the lower store.
pub struct SampleHost {
    pub infos: Vec<(PathInfo, bool)>,
    pub store_dir: crate::format::StoreDir,
}

impl SampleHost {
    pub fn new() -> SampleHost {
        let sd = crate::format::StoreDir::default();
        let mk = |hash: &str, name: &str, refs: &[&StorePath], time: i64, size: u64| {
            let path = StorePath::from_basename(&format!("{hash}-{name}")).expect("sample path");
            PathInfo {
                references: refs.iter().map(|r| (*r).clone()).collect(),
                path,
                deriver: None,
                nar_hash: crate::format::Hash::sha256(name.as_bytes()),
                registration_time: time,
                nar_size: size,
                ultimate: false,
                sigs: BTreeSet::new(),
                ca: None,
            }
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let glibc = mk("00000000000000000000000000000001", "glibc-2.40", &[], now - 90 * 86400, 30_000_000);
        let bash = mk("00000000000000000000000000000002", "bash-5.2", &[&glibc.path], now - 30 * 86400, 5_000_000);
        let app = mk("00000000000000000000000000000003", "my-app-1.0", &[&bash.path, &glibc.path], now - 86400, 1_000_000);
        let tmp = mk("00000000000000000000000000000004", "build-tmp-cache", &[], now - 3600, 200_000_000);
        SampleHost { infos: vec![(glibc, true), (bash, true), (app, false), (tmp, false)], store_dir: sd }
    }

    fn find(&self, p: &StorePath) -> Option<&(PathInfo, bool)> {
        self.infos.iter().find(|(i, _)| &i.path == p)
    }
}

impl Default for SampleHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyHost for SampleHost {
    fn parse(&self, path: &str) -> Result<StorePath> {
        Ok(self.store_dir.parse_path(path)?)
    }
    fn path_info(&self, path: &StorePath) -> Result<Option<PathInfo>> {
        Ok(self.find(path).map(|(i, _)| i.clone()))
    }
    fn in_lower(&self, path: &StorePath) -> Result<bool> {
        Ok(self.find(path).is_some_and(|(_, l)| *l))
    }
    fn in_upper(&self, path: &StorePath) -> Result<bool> {
        Ok(self.find(path).is_some())
    }
    fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>> {
        Ok(self.infos.iter().filter(|(i, _)| i.references.contains(path)).map(|(i, _)| i.path.clone()).collect())
    }
    fn closure_size(&self, path: &StorePath) -> Result<u64> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![path.clone()];
        let mut total = 0;
        while let Some(p) = stack.pop() {
            if let Some((i, _)) = self.find(&p) {
                if seen.insert(p) {
                    total += i.nar_size;
                    stack.extend(i.references.iter().cloned());
                }
            }
        }
        Ok(total)
    }
    fn display(&self, path: &StorePath) -> String {
        self.store_dir.display(path)
    }
    fn remount(&self) -> Result<()> {
        tracing::info!("policy check: would remount the overlay");
        Ok(())
    }
    fn mount(&self) -> Result<()> {
        tracing::info!("policy check: would mount the overlay");
        Ok(())
    }
    fn umount(&self) -> Result<()> {
        tracing::info!("policy check: would unmount the overlay");
        Ok(())
    }
    fn exec(&self, argv: &[String]) -> Result<ExecResult> {
        tracing::info!("policy check: would run {argv:?}");
        Ok(ExecResult { status: 0, stdout: String::new(), stderr: String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn exec_is_bounded_in_time_and_output() {
        let r = run_program(&argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]), EXEC_TIMEOUT).unwrap();
        assert_eq!((r.status, r.stdout.as_str(), r.stderr.as_str()), (3, "out\n", "err\n"));
        let started = std::time::Instant::now();
        let e = run_program(&argv(&["sh", "-c", "sleep 100 & sleep 100"]), std::time::Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("did not finish within"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let r = run_program(&argv(&["sh", "-c", "head -c 5000000 /dev/zero"]), EXEC_TIMEOUT).unwrap();
        assert_eq!(r.stdout.len(), EXEC_MAX_OUTPUT);
    }
}
