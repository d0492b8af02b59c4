//! The `nix-store --export` stream.
//!
//! ```text
//! stream = { u64(1) item } u64(0)
//! item   = nar u64(0x4558494e) str(path) u64(n) { str(reference) } str(deriver or "") u64(0)
//! ```
//!
//! The NAR's hash and size are computed while it is read; the stream carries neither.
//! The trailing u64 is a legacy signature flag: 1 means a signature string follows, which
//! is ignored, as Nix ignores it.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use super::hash::{Hash, HashAlgo, HashingReader};
use super::nar::{self, NarError, NarVisitor};
use super::store_path::{StoreDir, StorePath, StorePathError};

pub const EXPORT_MAGIC: u64 = 0x4558_494e;
/// Longest path string accepted in a stream (store dir plus a 244-byte basename, generously).
const MAX_PATH_LEN: u64 = 4096;
/// Most references one item may list; far above any real closure's out-degree.
const MAX_REFERENCES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export stream is truncated")]
    Truncated,
    #[error("export stream is corrupt: {0}")]
    Corrupt(String),
    #[error("export stream: {0}")]
    Nar(#[from] NarError),
    #[error("export stream: {0}")]
    StorePath(#[from] StorePathError),
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for ExportError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ExportError::Truncated
        } else {
            ExportError::Io(e)
        }
    }
}

/// The metadata of one exported store object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportItem {
    pub path: StorePath,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    pub nar_hash: Hash,
    pub nar_size: u64,
}

fn read_u64<R: Read + ?Sized>(r: &mut R) -> Result<u64, ExportError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_str<R: Read + ?Sized>(r: &mut R, max: u64, what: &str) -> Result<Vec<u8>, ExportError> {
    let len = read_u64(r)?;
    if len > max {
        return Err(ExportError::Corrupt(format!("{what} is {len} bytes long (at most {max} allowed)")));
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)?;
    let mut pad = [0u8; 8];
    let n = nar::padding(len);
    r.read_exact(&mut pad[..n])?;
    if pad[..n].iter().any(|&b| b != 0) {
        return Err(ExportError::Corrupt(format!("non-zero padding after {what}")));
    }
    Ok(v)
}

fn read_path<R: Read + ?Sized>(r: &mut R, store_dir: &StoreDir, what: &str) -> Result<StorePath, ExportError> {
    let raw = read_str(r, MAX_PATH_LEN, what)?;
    let s = String::from_utf8(raw).map_err(|_| ExportError::Corrupt(format!("{what} is not UTF-8")))?;
    Ok(store_dir.parse_path(&s)?)
}

/// Reads the next item, handing its NAR to `visitor`; `None` at the end of the stream.
pub fn read_item<R: Read + ?Sized>(
    r: &mut R,
    store_dir: &StoreDir,
    visitor: &mut dyn NarVisitor,
) -> Result<Option<ExportItem>, ExportError> {
    match read_u64(r)? {
        0 => return Ok(None),
        1 => {}
        n => return Err(ExportError::Corrupt(format!("expected 0 or 1 before an item, got {n}"))),
    }
    let mut hr = HashingReader::new(r, HashAlgo::Sha256);
    nar::parse(&mut hr, visitor)?;
    let (nar_hash, nar_size) = hr.finish();
    let magic = read_u64(r)?;
    if magic != EXPORT_MAGIC {
        return Err(ExportError::Corrupt(format!("bad item magic {magic:#x} (expected 0x4558494e)")));
    }
    let path = read_path(r, store_dir, "the store path")?;
    let count = read_u64(r)?;
    if count > MAX_REFERENCES {
        return Err(ExportError::Corrupt(format!("{count} references is not plausible")));
    }
    let mut references = BTreeSet::new();
    for _ in 0..count {
        references.insert(read_path(r, store_dir, "a reference")?);
    }
    let deriver_raw = read_str(r, MAX_PATH_LEN, "the deriver")?;
    let deriver = if deriver_raw.is_empty() {
        None
    } else {
        let s = String::from_utf8(deriver_raw).map_err(|_| ExportError::Corrupt("deriver is not UTF-8".into()))?;
        Some(store_dir.parse_path(&s)?)
    };
    match read_u64(r)? {
        0 => {}
        1 => {
            read_str(r, 1 << 16, "the legacy signature")?;
        }
        n => return Err(ExportError::Corrupt(format!("bad signature flag {n}"))),
    }
    Ok(Some(ExportItem { path, references, deriver, nar_hash, nar_size }))
}

/// Writes one item; `write_nar` writes the path's NAR to the writer it is given.
pub fn write_item<W: Write>(
    w: &mut W,
    store_dir: &StoreDir,
    path: &StorePath,
    references: &BTreeSet<StorePath>,
    deriver: Option<&StorePath>,
    write_nar: impl FnOnce(&mut W) -> io::Result<()>,
) -> io::Result<()> {
    w.write_all(&1u64.to_le_bytes())?;
    write_nar(w)?;
    w.write_all(&EXPORT_MAGIC.to_le_bytes())?;
    let mut nw = nar::NarWriter::new(&mut *w);
    nw.str(store_dir.display(path).as_bytes())?;
    let w = nw.into_inner();
    w.write_all(&(references.len() as u64).to_le_bytes())?;
    let mut nw = nar::NarWriter::new(&mut *w);
    for r in references {
        nw.str(store_dir.display(r).as_bytes())?;
    }
    nw.str(deriver.map(|d| store_dir.display(d)).unwrap_or_default().as_bytes())?;
    let w = nw.into_inner();
    w.write_all(&0u64.to_le_bytes())
}

pub fn write_end<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(&0u64.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::nar::reader::Validate;

    fn hello_stream() -> Vec<u8> {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("hello.txt");
        std::fs::write(&p, "hello\n").unwrap();
        let sd = StoreDir::default();
        let sp = sd.parse_path("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt").unwrap();
        let mut out = Vec::new();
        write_item(&mut out, &sd, &sp, &BTreeSet::new(), None, |w| crate::store::fs::tree::dump(&p, w).map(|_| ())).unwrap();
        write_end(&mut out).unwrap();
        out
    }

    #[test]
    fn hello_export_matches_nix_bytes() {
        let out = hello_stream();
        assert_eq!(out.len(), 232);
        assert_eq!(Hash::sha256(&out).to_base16(), "0005f6b985b834b8717014d6136d32e9bd2370cdabae114fd8ff38653057fcd9");
    }

    #[test]
    fn read_back() {
        let out = hello_stream();
        let mut r = &out[..];
        let item = read_item(&mut r, &StoreDir::default(), &mut Validate).unwrap().unwrap();
        assert_eq!(item.path.name(), "hello.txt");
        assert_eq!(item.nar_size, 120);
        assert_eq!(item.nar_hash.to_base16(), "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13");
        assert!(read_item(&mut r, &StoreDir::default(), &mut Validate).unwrap().is_none());
    }

    #[test]
    fn corrupt_streams() {
        let out = hello_stream();
        for cut in 0..out.len() {
            let mut r = &out[..cut];
            let res = (|| -> Result<(), ExportError> {
                while read_item(&mut r, &StoreDir::default(), &mut Validate)?.is_some() {}
                Ok(())
            })();
            assert!(res.is_err(), "cut at {cut}");
        }
        let mut bad = out.clone();
        bad[0] = 7;
        assert!(matches!(read_item(&mut &bad[..], &StoreDir::default(), &mut Validate), Err(ExportError::Corrupt(_))));
        let mut bad = out.clone();
        bad[0x88..0x90].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read_item(&mut &bad[..], &StoreDir::default(), &mut Validate), Err(ExportError::Corrupt(_))));
        let mut bad = out;
        bad[0x90..0x9a].copy_from_slice(b"/etc/pass/");
        assert!(matches!(read_item(&mut &bad[..], &StoreDir::default(), &mut Validate), Err(ExportError::StorePath(_))));
    }
}
