//! The worker-protocol server on hostile clients: after a valid handshake, any bytes as
//! requests, against a real (scratch) local store. An error frame or a closed
//! connection, never a panic or a hang.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use overlay_store::spec::StoreSpec;

fn spec() -> &'static StoreSpec {
    static SPEC: OnceLock<(tempfile::TempDir, StoreSpec)> = OnceLock::new();
    &SPEC
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let spec = StoreSpec::from_uri(&format!("local?root={}", dir.path().display())).unwrap();
            (dir, spec)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let mut input = Vec::with_capacity(32 + data.len());
    for n in [0x6e69_7863u64, 0x122, 0, 0] {
        input.extend_from_slice(&n.to_le_bytes());
    }
    input.extend_from_slice(data);
    let _ = overlay_store::serve::replay(spec(), input);
});
