//! NAR, the Nix ARchive: the canonical serialisation of a file system object.
//!
//! Every token is a string on the wire: a u64 little-endian length, the bytes, then zero
//! padding to a multiple of 8.
//!
//! ```text
//! nar    = "nix-archive-1" node
//! node   = "(" "type" body ")"
//! body   = "regular" [ "executable" "" ] "contents" <bytes>
//!        | "symlink" "target" <target>
//!        | "directory" { entry }
//! entry  = "entry" "(" "name" <name> "node" node ")"
//! ```
//!
//! Directory entries are written in ascending byte order of their names; only the owner
//! execute bit of a file is recorded. The reader enforces what recent Nix enforces
//! (sorted, unique, safe names; zero padding; bounded tags, names, targets and depth),
//! so a hostile archive is an error, never a file outside the target directory. Reading
//! and writing trees on disk is `store::fs::tree`.

pub mod reader;
pub mod writer;

pub use reader::{parse, NarError, NarVisitor};
pub use writer::NarWriter;

pub const MAGIC: &str = "nix-archive-1";
/// Longest tag the reader accepts (`directory` is the longest real one).
pub const MAX_TAG_LEN: u64 = 32;
pub const MAX_NAME_LEN: u64 = 255;
pub const MAX_TARGET_LEN: u64 = 4095;
pub const MAX_DEPTH: usize = 64;

pub(crate) fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}
