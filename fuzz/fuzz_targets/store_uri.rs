//! Store URIs: parse, and every URI we print must parse again to the same URI.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlay_store::spec::StoreSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(uri) = std::str::from_utf8(data) else { return };
    if let Ok(spec) = StoreSpec::from_uri(uri) {
        let printed = spec.to_uri();
        let again = StoreSpec::from_uri(&printed).unwrap_or_else(|e| panic!("our URI {printed:?} does not parse: {e}"));
        assert_eq!(again.to_uri(), printed);
    }
});
