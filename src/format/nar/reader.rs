//! Reading NARs strictly, as a stream of events for a visitor.

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{padding, MAGIC, MAX_DEPTH, MAX_NAME_LEN, MAX_TAG_LEN, MAX_TARGET_LEN};

#[derive(Debug, thiserror::Error)]
pub enum NarError {
    #[error("NAR is truncated")]
    Truncated,
    #[error("input is not a NAR archive (bad magic)")]
    BadMagic,
    #[error("NAR has bad syntax: expected {expected}, got '{got}'")]
    Syntax { expected: &'static str, got: String },
    #[error("NAR has non-zero padding")]
    NonZeroPadding,
    #[error("NAR contains invalid file name '{0}'")]
    InvalidName(String),
    #[error("NAR directory is not sorted: '{prev}' is followed by '{next}'")]
    NotSorted { prev: String, next: String },
    #[error("NAR field is too long ({len} bytes, at most {max} allowed for {what})")]
    TooLong { what: &'static str, len: u64, max: u64 },
    #[error("NAR symlink target is invalid")]
    InvalidTarget,
    #[error("NAR nesting is too deep (more than {MAX_DEPTH} levels)")]
    TooDeep,
    #[error("restoring '{path}': {source}")]
    Restore { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Receives the objects of a NAR in archive order. Paths are relative to the root
/// (the root itself is the empty path).
pub trait NarVisitor {
    fn directory(&mut self, path: &Path) -> Result<(), NarError>;
    /// Called after the last entry of a directory.
    fn directory_end(&mut self, _path: &Path) -> Result<(), NarError> {
        Ok(())
    }
    /// `contents` yields exactly `size` bytes; what the visitor leaves unread is skipped.
    fn file(&mut self, path: &Path, executable: bool, size: u64, contents: &mut dyn Read) -> Result<(), NarError>;
    fn symlink(&mut self, path: &Path, target: &[u8]) -> Result<(), NarError>;
}

/// A visitor that ignores everything; `parse` with it validates a NAR.
pub struct Validate;

impl NarVisitor for Validate {
    fn directory(&mut self, _: &Path) -> Result<(), NarError> {
        Ok(())
    }
    fn file(&mut self, _: &Path, _: bool, _: u64, _: &mut dyn Read) -> Result<(), NarError> {
        Ok(())
    }
    fn symlink(&mut self, _: &Path, _: &[u8]) -> Result<(), NarError> {
        Ok(())
    }
}

struct Tokens<'a, R: Read + ?Sized> {
    r: &'a mut R,
}

fn eof(e: io::Error) -> NarError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        NarError::Truncated
    } else {
        NarError::Io(e)
    }
}

impl<R: Read + ?Sized> Tokens<'_, R> {
    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b).map_err(eof)?;
        Ok(u64::from_le_bytes(b))
    }

    fn pad(&mut self, len: u64) -> Result<(), NarError> {
        let n = padding(len);
        let mut b = [0u8; 8];
        self.r.read_exact(&mut b[..n]).map_err(eof)?;
        if b[..n].iter().any(|&x| x != 0) {
            return Err(NarError::NonZeroPadding);
        }
        Ok(())
    }

    fn bytes(&mut self, max: u64, what: &'static str) -> Result<Vec<u8>, NarError> {
        let len = self.u64()?;
        if len > max {
            return Err(NarError::TooLong { what, len, max });
        }
        let mut v = vec![0u8; len as usize];
        self.r.read_exact(&mut v).map_err(eof)?;
        self.pad(len)?;
        Ok(v)
    }

    fn tag(&mut self) -> Result<Vec<u8>, NarError> {
        self.bytes(MAX_TAG_LEN, "a tag")
    }

    fn expect(&mut self, want: &'static str) -> Result<(), NarError> {
        let got = self.tag()?;
        if got != want.as_bytes() {
            return Err(NarError::Syntax { expected: want, got: String::from_utf8_lossy(&got).into_owned() });
        }
        Ok(())
    }
}

/// Parses one NAR from `r`, leaving `r` just after it.
pub fn parse<R: Read + ?Sized>(r: &mut R, visitor: &mut dyn NarVisitor) -> Result<(), NarError> {
    let mut t = Tokens { r };
    let magic = t.bytes(MAGIC.len() as u64, "the magic").map_err(|e| match e {
        NarError::TooLong { .. } => NarError::BadMagic,
        e => e,
    })?;
    if magic != MAGIC.as_bytes() {
        return Err(NarError::BadMagic);
    }
    let mut path = PathBuf::new();
    parse_node(&mut t, visitor, &mut path, 0)
}

fn parse_node<R: Read + ?Sized>(t: &mut Tokens<R>, v: &mut dyn NarVisitor, path: &mut PathBuf, depth: usize) -> Result<(), NarError> {
    if depth >= MAX_DEPTH {
        return Err(NarError::TooDeep);
    }
    t.expect("(")?;
    t.expect("type")?;
    let kind = t.tag()?;
    match kind.as_slice() {
        b"regular" => {
            let mut tag = t.tag()?;
            let mut executable = false;
            if tag == b"executable" {
                executable = true;
                let empty = t.bytes(0, "the executable marker")?;
                debug_assert!(empty.is_empty());
                tag = t.tag()?;
            }
            if tag != b"contents" {
                return Err(NarError::Syntax { expected: "contents", got: String::from_utf8_lossy(&tag).into_owned() });
            }
            let size = t.u64()?;
            let mut limited = (&mut *t.r).take(size);
            v.file(path, executable, size, &mut limited)?;
            // Skip what the visitor did not read, then insist it was all there.
            io::copy(&mut limited, &mut io::sink()).map_err(eof)?;
            if limited.limit() != 0 {
                return Err(NarError::Truncated);
            }
            t.pad(size)?;
            t.expect(")")
        }
        b"symlink" => {
            t.expect("target")?;
            let target = t.bytes(MAX_TARGET_LEN, "a symlink target")?;
            if target.is_empty() || target.contains(&0) {
                return Err(NarError::InvalidTarget);
            }
            v.symlink(path, &target)?;
            t.expect(")")
        }
        b"directory" => {
            v.directory(path)?;
            let mut prev: Option<Vec<u8>> = None;
            loop {
                let tag = t.tag()?;
                match tag.as_slice() {
                    b")" => break,
                    b"entry" => {}
                    _ => return Err(NarError::Syntax { expected: "entry or )", got: String::from_utf8_lossy(&tag).into_owned() }),
                }
                t.expect("(")?;
                t.expect("name")?;
                let name = t.bytes(MAX_NAME_LEN, "a file name")?;
                if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
                    return Err(NarError::InvalidName(String::from_utf8_lossy(&name).into_owned()));
                }
                if let Some(p) = &prev {
                    if name.as_slice() <= p.as_slice() {
                        return Err(NarError::NotSorted {
                            prev: String::from_utf8_lossy(p).into_owned(),
                            next: String::from_utf8_lossy(&name).into_owned(),
                        });
                    }
                }
                t.expect("node")?;
                path.push(std::ffi::OsStr::from_bytes(&name));
                parse_node(t, v, path, depth + 1)?;
                path.pop();
                t.expect(")")?;
                prev = Some(name);
            }
            v.directory_end(path)
        }
        _ => Err(NarError::Syntax { expected: "regular, symlink or directory", got: String::from_utf8_lossy(&kind).into_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::nar::writer::NarWriter;
    use crate::store::fs::tree::{dump as dump_path, tests_fixture};

    fn nar(build: impl FnOnce(&mut NarWriter<&mut Vec<u8>>)) -> Vec<u8> {
        let mut v = Vec::new();
        let mut w = NarWriter::new(&mut v);
        build(&mut w);
        v
    }

    fn dir_with(names: &[&str]) -> Vec<u8> {
        nar(|w| {
            w.magic().unwrap();
            w.strs(&["(", "type", "directory"]).unwrap();
            for n in names {
                w.strs(&["entry", "(", "name"]).unwrap();
                w.str(n.as_bytes()).unwrap();
                w.str(b"node").unwrap();
                w.symlink(b"x").unwrap();
                w.str(b")").unwrap();
            }
            w.str(b")").unwrap();
        })
    }

    fn check(bytes: &[u8]) -> Result<(), NarError> {
        parse(&mut &bytes[..], &mut Validate)
    }

    #[test]
    fn hostile_names_rejected() {
        for bad in ["..", ".", "a/b", "", "a\0b"] {
            assert!(matches!(check(&dir_with(&[bad])), Err(NarError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn unsorted_and_duplicate_entries_rejected() {
        assert!(matches!(check(&dir_with(&["b", "a"])), Err(NarError::NotSorted { .. })));
        assert!(matches!(check(&dir_with(&["a", "a"])), Err(NarError::NotSorted { .. })));
        assert!(check(&dir_with(&["B", "a", "a-b", "a.b"])).is_ok());
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let d = tests_fixture(t.path());
        let bytes = dump_path(&d, Vec::new()).unwrap();
        for cut in 0..bytes.len() {
            assert!(check(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(check(&bytes).is_ok());
    }

    #[test]
    fn huge_length_fields_fail_fast() {
        let mut bytes = dir_with(&["a"]);
        // The first entry name's length follows magic, "(", "type", "directory", "entry", "(", "name".
        let off = 24 + 16 + 16 + 24 + 16 + 16 + 16;
        bytes[off..off + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(check(&bytes), Err(NarError::TooLong { .. })));
        let mut file = nar(|w| {
            w.magic().unwrap();
            w.strs(&["(", "type", "regular", "contents"]).unwrap();
        });
        file.extend_from_slice(&u64::MAX.to_le_bytes());
        file.extend_from_slice(b"abc");
        assert!(matches!(check(&file), Err(NarError::Truncated)));
    }

    #[test]
    fn padding_must_be_zero() {
        let mut bytes = nar(|w| {
            w.magic().unwrap();
            w.symlink(b"abc").unwrap();
        });
        let pos = bytes.windows(3).position(|w| w == b"abc").unwrap();
        bytes[pos + 3] = 1;
        assert!(matches!(check(&bytes), Err(NarError::NonZeroPadding)));
    }

    #[test]
    fn bad_magic_and_types() {
        assert!(matches!(check(b"\x05\0\0\0\0\0\0\0hello\0\0\0"), Err(NarError::BadMagic)));
        let bad = nar(|w| {
            w.magic().unwrap();
            w.strs(&["(", "type", "fifo", ")"]).unwrap();
        });
        assert!(matches!(check(&bad), Err(NarError::Syntax { .. })));
        let deep = nar(|w| {
            w.magic().unwrap();
            for _ in 0..70 {
                w.strs(&["(", "type", "directory", "entry", "(", "name", "d", "node"]).unwrap();
            }
        });
        assert!(matches!(check(&deep), Err(NarError::TooDeep)));
    }
}
