//! The one place that touches store file systems in ways an attacker could steer: walks
//! of store trees on directory descriptors (`dir`, `tree`), and Unix sockets under state
//! directories of any depth (`socket`).

pub mod dir;
pub mod socket;
pub mod tree;

pub use dir::{Dir, Kind, Meta};
