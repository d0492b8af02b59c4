//! What binary caches send: narinfos, `nix-cache-info`, keys and signatures. Never a
//! panic; a narinfo that parses renders to text that parses to the same info.
#![no_main]
use libfuzzer_sys::fuzz_target;
use overlay_store::format::narinfo::{CacheInfo, NarInfo};
use overlay_store::format::signing::{PublicKey, SecretKey};
use overlay_store::format::StoreDir;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let sd = StoreDir::default();
    if let Ok(info) = NarInfo::parse(text, &sd) {
        let again = NarInfo::parse(&info.render(&sd), &sd).expect("a rendered narinfo parses");
        assert_eq!(again, info);
    }
    let _ = CacheInfo::parse(text);
    if let Ok(pk) = PublicKey::parse(text) {
        let _ = pk.verifies("1;/nix/store/x;sha256:0;1;", text);
    }
    let _ = SecretKey::parse(text);
});
