//! A NAR visitor that reads and drops everything, shared by the NAR and export targets.
use std::io::Read;
use std::path::Path;

use overlay_store::format::nar::{NarError, NarVisitor};

pub struct Drain;

impl NarVisitor for Drain {
    fn directory(&mut self, _: &Path) -> Result<(), NarError> {
        Ok(())
    }
    fn file(&mut self, _: &Path, _: bool, _: u64, c: &mut dyn Read) -> Result<(), NarError> {
        let _ = std::io::copy(c, &mut std::io::sink());
        Ok(())
    }
    fn symlink(&mut self, _: &Path, _: &[u8]) -> Result<(), NarError> {
        Ok(())
    }
}
