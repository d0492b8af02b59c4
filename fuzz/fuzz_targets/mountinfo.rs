//! `/proc/self/mountinfo` parsing (octal escapes, several lowerdirs) on any text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = overlay_store::store::overlay::mountinfo::parse(text);
    }
});
