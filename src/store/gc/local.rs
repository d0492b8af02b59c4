//! The plain case: a local store collected in its own real directory.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::PathBuf;

use super::{FileRemover, GcTarget, Removed};
use crate::format::StorePath;
use crate::store::local::LocalStore;

/// A local store's files: `<real>/<basename>`.
pub struct RealDirRemover {
    pub real: PathBuf,
}

impl FileRemover for RealDirRemover {
    fn measure(&self, path: &StorePath) -> u64 {
        crate::store::fs::tree::measure(&self.real.join(path.basename()))
    }
    fn remove_files(&self, path: &StorePath) -> io::Result<Removed> {
        let p = self.real.join(path.basename());
        let had_files = fs::symlink_metadata(&p).is_ok();
        Ok(Removed { bytes: crate::store::fs::tree::remove(&p)?, had_files, bypassed_mount: false })
    }
    fn lock_path_of(&self, path: &StorePath) -> PathBuf {
        self.real.join(format!("{}.lock", path.basename()))
    }
}

impl GcTarget for LocalStore {
    fn remover(&self) -> Box<dyn FileRemover + '_> {
        Box::new(RealDirRemover { real: self.config().real.clone() })
    }
    fn local(&self) -> &LocalStore {
        self
    }
    fn root_is_valid(&self, path: &StorePath) -> bool {
        self.db().is_valid(path).unwrap_or(false)
    }
    fn garbage_dir(&self) -> PathBuf {
        self.config().real.clone()
    }
    fn real_dir(&self) -> PathBuf {
        self.config().real.clone()
    }
    fn remove_garbage(&self, name: &OsString) -> io::Result<Removed> {
        Ok(Removed { bytes: crate::store::fs::tree::remove(&self.config().real.join(name))?, had_files: true, bypassed_mount: false })
    }
}
