//! The export stream reader (`nix-store --import` input) on hostile bytes.
#![no_main]
use std::io::Read;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use overlay_store::format::export;
use overlay_store::format::nar::{NarError, NarVisitor};
use overlay_store::format::StoreDir;

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
    let sd = StoreDir::new("/nix/store");
    let mut r = &data[..];
    for _ in 0..64 {
        match export::read_item(&mut r, &sd, &mut Drain) {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
});
