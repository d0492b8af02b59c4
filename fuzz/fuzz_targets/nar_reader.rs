//! The strict NAR reader on hostile bytes: an error, never a panic or a hang.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlay_store::format::nar;

mod drain;

fuzz_target!(|data: &[u8]| {
    let _ = nar::parse(&mut &data[..], &mut drain::Drain);
});
