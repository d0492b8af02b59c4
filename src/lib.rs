//! `overlay-store`: a Nix-compatible local store and local overlay store.
//!
//! Layers, each depending only on those below it:
//!
//! - [`format`]: Nix's formats as pure types (nixbase32, hashes, store paths, NAR,
//!   export streams, derivation outputs).
//! - [`spec`]: the TOML store spec and Nix store URIs.
//! - [`store`]: the stores themselves, on disk: the local store, the overlay store.
//! - [`policy`]: the Lua host that implements the store's policy hooks.
//! - [`service`]: `watch`, the store as a long-running service.

pub mod accounts;
pub mod cache;
pub mod format;
pub mod policy;
pub mod progress;
pub mod serve;
pub mod service;
pub mod spec;
pub mod store;
