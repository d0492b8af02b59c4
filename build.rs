//! Links the `overlay-store` binary as a position-dependent executable. A PIE of this
//! size carries some 83,000 relative relocations that the dynamic loader applies on
//! every start (writing to hundreds of pages), about a fifth of a short query's time;
//! without PIE the linker resolves them once. Only the binary: the library, tests and
//! proc macros keep the defaults. On glibc Linux `.cargo/config.toml` goes further (a
//! static, non-PIE binary, where this flag is implied); this covers other builds.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=overlay-store=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
