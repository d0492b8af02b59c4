//! The worker-protocol primitives a daemon lower store reads: bounded, padded, strict.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlay_store::store::daemon::wire;

fuzz_target!(|data: &[u8]| {
    let mut r = &data[..];
    // A fixed mix of reads, in the order replies use them.
    for step in 0..64 {
        let ok = match step % 5 {
            0 => wire::read_u64(&mut r).is_ok(),
            1 => wire::read_string(&mut r).is_ok(),
            2 => wire::read_strings(&mut r).is_ok(),
            3 => wire::read_bool(&mut r).is_ok(),
            _ => wire::read_count(&mut r).is_ok(),
        };
        if !ok {
            break;
        }
    }
});
