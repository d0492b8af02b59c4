//! Policy files: any text is loaded in the sandbox and its hooks called on sample data
//! (`policy check`), converting whatever they return; errors, never panics or hangs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlay_store::spec::PolicyLimits;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.lua");
    std::fs::write(&file, data).unwrap();
    let limits = PolicyLimits { instructions: 200_000, memory_mib: 16, wall_clock_secs: 1 };
    let _ = overlay_store::policy::check::check(&file, &limits);
});
