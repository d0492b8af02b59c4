//! Which layer holds a store path's files: the one question delete, optimise, stats,
//! pivot, repair and GC's policy input all ask, answered in one place.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Where a name's files are, looked at in the layers themselves (not through the mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Only in the upper layer.
    Upper,
    /// Only in the lower store's directory.
    Lower,
    /// In both: the upper copy hides the lower one.
    Both,
    /// The upper layer has a whiteout: the lower copy (if any) is hidden, nothing shows.
    Hidden,
    Neither,
}

impl Location {
    /// Whether the upper layer has an entry of its own for the name (files or a whiteout).
    pub fn in_upper(self) -> bool {
        matches!(self, Location::Upper | Location::Both | Location::Hidden)
    }

    /// Whether the lower store's directory has the name (hidden by a whiteout or not is
    /// not told apart for `Hidden`; ask `lower_has` for that).
    pub fn in_lower(self) -> bool {
        matches!(self, Location::Lower | Location::Both)
    }
}

/// An overlay's two directories.
#[derive(Debug, Clone)]
pub struct Layers {
    pub upper: PathBuf,
    pub lower: PathBuf,
}

impl Layers {
    pub fn new(upper: &Path, lower: &Path) -> Layers {
        Layers { upper: upper.to_path_buf(), lower: lower.to_path_buf() }
    }

    /// Where `name` (a store path's base name) is. Never follows a symlink.
    pub fn locate(&self, name: &str) -> Location {
        let upper = std::fs::symlink_metadata(self.upper.join(name)).ok();
        let whiteout = upper.as_ref().is_some_and(|m| m.file_type().is_char_device());
        match (upper.is_some(), whiteout, self.lower_has(name)) {
            (true, true, _) => Location::Hidden,
            (true, false, true) => Location::Both,
            (true, false, false) => Location::Upper,
            (false, _, true) => Location::Lower,
            (false, _, false) => Location::Neither,
        }
    }

    /// Whether the lower store's directory has `name`, whatever the upper layer says.
    pub fn lower_has(&self, name: &str) -> bool {
        std::fs::symlink_metadata(self.lower.join(name)).is_ok()
    }

    /// Whether the upper layer has an entry for `name` (files or a whiteout).
    pub fn upper_has(&self, name: &str) -> bool {
        std::fs::symlink_metadata(self.upper.join(name)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_is_told_apart() {
        let t = tempfile::tempdir().unwrap();
        let (up, low) = (t.path().join("upper"), t.path().join("lower"));
        std::fs::create_dir_all(&up).unwrap();
        std::fs::create_dir_all(&low).unwrap();
        std::fs::write(up.join("u"), "").unwrap();
        std::fs::write(up.join("b"), "").unwrap();
        std::fs::write(low.join("b"), "").unwrap();
        std::fs::write(low.join("l"), "").unwrap();
        std::fs::write(low.join("w"), "").unwrap();
        // A whiteout is a 0/0 character device.
        nix::sys::stat::mknod(&up.join("w"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0).unwrap();
        // A dangling symlink still counts as an entry.
        std::os::unix::fs::symlink("/nowhere", up.join("link")).unwrap();
        let layers = Layers::new(&up, &low);
        assert_eq!(layers.locate("u"), Location::Upper);
        assert_eq!(layers.locate("b"), Location::Both);
        assert_eq!(layers.locate("l"), Location::Lower);
        assert_eq!(layers.locate("w"), Location::Hidden);
        assert_eq!(layers.locate("link"), Location::Upper);
        assert_eq!(layers.locate("none"), Location::Neither);
        assert!(layers.lower_has("w") && Location::Hidden.in_upper() && !Location::Hidden.in_lower());
    }
}
