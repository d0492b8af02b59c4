//! TOML store specs: any text gives a spec or an error with a location, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlay_store::spec::StoreSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Includes resolve next to this (absent) file, so none is found.
    let _ = StoreSpec::from_toml_str(text, std::path::Path::new("/nonexistent-fuzz-dir/store.toml"));
});
