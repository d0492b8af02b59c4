//! The export stream reader (`nix-store --import` input) on hostile bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlay_store::format::export;
use overlay_store::format::StoreDir;

mod drain;

fuzz_target!(|data: &[u8]| {
    let sd = StoreDir::new("/nix/store");
    let mut r = &data[..];
    for _ in 0..64 {
        match export::read_item(&mut r, &sd, &mut drain::Drain) {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
});
