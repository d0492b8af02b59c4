//! Nix's formats as pure types and codecs: no store, no database, no global state.

pub mod derivation;
pub mod export;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod realisation;
pub mod signing;
pub mod store_path;

pub use hash::{Hash, HashAlgo};
pub use realisation::{DrvOutput, Realisation};
pub use store_path::{ContentAddress, FileIngestion, StoreDir, StorePath};
