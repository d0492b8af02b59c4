//! The strict NAR reader on hostile bytes: an error, never a panic or a hang.
#![no_main]
use std::io::Read;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use overlay_store::format::nar::{self, NarError, NarVisitor};

struct Drain;
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

fuzz_target!(|data: &[u8]| {
    let _ = nar::parse(&mut &data[..], &mut Drain);
});
