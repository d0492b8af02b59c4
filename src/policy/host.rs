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

/// Runs a program without a shell and captures its output.
pub fn run_program(argv: &[String]) -> Result<ExecResult> {
    let (prog, args) = argv.split_first().ok_or_else(|| StoreError::Other("overlay.exec needs at least the program".into()))?;
    let out = Command::new(prog).args(args).output().map_err(|e| StoreError::Other(format!("overlay.exec: cannot run '{prog}': {e}")))?;
    Ok(ExecResult {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
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
        run_program(argv)
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
