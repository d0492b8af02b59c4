//! The worker protocol's vocabulary on the server side: constants, op codes, error
//! frames, framed upload streams, and the path-info records uploads carry.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use crate::format::hash::{Hash, HashAlgo};
use crate::format::{ContentAddress, StoreDir};
use crate::store::daemon::wire::{self, read_bool, read_string, read_u64, write_string, write_u64, WireError};
use crate::store::PathInfo;

pub(super) const WORKER_MAGIC_1: u64 = 0x6e69_7863;
pub(super) const WORKER_MAGIC_2: u64 = 0x6478_696f;
/// Protocol 1.34, Nix 2.8's. Newer clients negotiate down to it (each side uses the
/// lower minor), so every client speaks this one dialect with us.
pub(super) const SERVER_VERSION: u64 = 0x122;
/// Clients older than 1.10 are dropped, as by nix-daemon.
pub(super) const OLDEST_CLIENT: u64 = 0x10a;

pub(super) const STDERR_NEXT: u64 = 0x6f6c_6d67;
pub(super) const STDERR_LAST: u64 = 0x616c_7473;
pub(super) const STDERR_ERROR: u64 = 0x6378_7470;

/// Longest NAR accepted in one upload frame stream (a framed source reads in chunks, so
/// this bounds nothing in memory; it bounds a runaway client).
pub(super) const MAX_FRAME: u64 = 1 << 24;

/// Nix colours the values it interpolates into messages; its clients strip the
/// escapes when not writing to a terminal.
pub(super) fn hl(s: &str) -> String {
    format!("\x1b[35;1m{s}\x1b[0m")
}

/// The Nix version whose behaviour we answer with.
pub(super) const NIX_VERSION: &str = "2.8.0";

pub(super) fn write_error(w: &mut impl Write, minor: u64, msg: &str) -> io::Result<()> {
    write_u64(w, STDERR_ERROR)?;
    if minor >= 26 {
        write_string(w, "Error")?;
        write_u64(w, 0)?; // level: error
        write_string(w, "Error")?;
        write_string(w, msg)?;
        write_u64(w, 0)?; // no position
        write_u64(w, 0) // no traces
    } else {
        write_string(w, msg)?;
        write_u64(w, 1) // exit status
    }
}

/// A path's info inside an AddMultipleToStore stream (the same fields as AddToStoreNar).
pub(super) fn read_info_from(r: &mut impl Read, sd: &StoreDir) -> Result<PathInfo, WireError> {
    let bad = WireError::Malformed;
    let path = read_string(r)?;
    let path = sd.parse_path(&path).map_err(|_| bad(format!("path '{}' is not in the Nix store", hl(&path))))?;
    let deriver = read_string(r)?;
    let deriver = if deriver.is_empty() { None } else { Some(sd.parse_path(&deriver).map_err(|e| bad(e.to_string()))?) };
    let hash = read_string(r)?;
    let nar_hash =
        Hash::parse_digest(HashAlgo::Sha256, hash.strip_prefix("sha256:").unwrap_or(&hash)).map_err(|e| bad(format!("NAR hash: {e}")))?;
    let mut references = BTreeSet::new();
    for s in read_string_list(r)? {
        references.insert(sd.parse_path(&s).map_err(|e| bad(e.to_string()))?);
    }
    let registration_time = read_u64(r)? as i64;
    let nar_size = read_u64(r)?;
    let ultimate = read_bool(r)?;
    let sigs: BTreeSet<String> = read_string_list(r)?.into_iter().collect();
    let ca = read_string(r)?;
    let ca = if ca.is_empty() { None } else { Some(ContentAddress::parse(&ca).map_err(|e| bad(e.to_string()))?) };
    Ok(PathInfo { path, deriver, nar_hash, references, registration_time, nar_size, ultimate, sigs, ca })
}

pub(super) fn sha1_of(data: &[u8]) -> Vec<u8> {
    use sha1::Digest;
    sha1::Sha1::digest(data).to_vec()
}

/// Longest text AddTextToStore accepts (a `.drv` is far smaller).
pub(super) const MAX_TEXT: u64 = 8 << 20;

/// Reads a framed stream (`u64 length` then that many bytes, until a zero length) as
/// one byte stream. Whatever the consumer leaves unread is drained, so the connection
/// stays in step after a failed upload.
pub(super) struct FramedReader<'r, R: Read> {
    inner: &'r mut R,
    left: u64,
    done: bool,
}

impl<'r, R: Read> FramedReader<'r, R> {
    pub(super) fn new(inner: &'r mut R) -> Self {
        FramedReader { inner, left: 0, done: false }
    }

    /// Reads to the end of the stream.
    pub(super) fn drain(mut self) -> Result<(), WireError> {
        io::copy(&mut self, &mut io::sink()).map_err(wire::map_io)?;
        Ok(())
    }
}

impl<R: Read> Read for FramedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            if self.done {
                return Ok(0);
            }
            let mut len = [0u8; 8];
            self.inner.read_exact(&mut len)?;
            let len = u64::from_le_bytes(len);
            if len == 0 {
                self.done = true;
                return Ok(0);
            }
            if len > MAX_FRAME {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes")));
            }
            self.left = len;
        }
        let want = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

pub(super) const GC_RETURN_LIVE: u64 = 0;
pub(super) const GC_RETURN_DEAD: u64 = 1;
pub(super) const GC_DELETE_DEAD: u64 = 2;
pub(super) const GC_DELETE_SPECIFIC: u64 = 3;

/// Operation codes (Nix's `WorkerOp`).
pub(super) mod op {
    pub const IS_VALID_PATH: u64 = 1;
    pub const QUERY_REFERRERS: u64 = 6;
    pub const ADD_TO_STORE: u64 = 7;
    pub const ADD_TEXT_TO_STORE: u64 = 8;
    pub const BUILD_PATHS: u64 = 9;
    pub const ENSURE_PATH: u64 = 10;
    pub const ADD_TEMP_ROOT: u64 = 11;
    pub const ADD_INDIRECT_ROOT: u64 = 12;
    pub const SYNC_WITH_GC: u64 = 13;
    pub const FIND_ROOTS: u64 = 14;
    pub const SET_OPTIONS: u64 = 19;
    pub const COLLECT_GARBAGE: u64 = 20;
    pub const QUERY_SUBSTITUTABLE_PATH_INFO: u64 = 21;
    pub const QUERY_DERIVATION_OUTPUTS: u64 = 22;
    pub const QUERY_ALL_VALID_PATHS: u64 = 23;
    pub const QUERY_PATH_INFO: u64 = 26;
    pub const QUERY_PATH_FROM_HASH_PART: u64 = 29;
    pub const QUERY_SUBSTITUTABLE_PATH_INFOS: u64 = 30;
    pub const QUERY_VALID_PATHS: u64 = 31;
    pub const QUERY_SUBSTITUTABLE_PATHS: u64 = 32;
    pub const QUERY_VALID_DERIVERS: u64 = 33;
    pub const OPTIMISE_STORE: u64 = 34;
    pub const VERIFY_STORE: u64 = 35;
    pub const BUILD_DERIVATION: u64 = 36;
    pub const ADD_SIGNATURES: u64 = 37;
    pub const NAR_FROM_PATH: u64 = 38;
    pub const ADD_TO_STORE_NAR: u64 = 39;
    pub const QUERY_MISSING: u64 = 40;
    pub const QUERY_DERIVATION_OUTPUT_MAP: u64 = 41;
    pub const REGISTER_DRV_OUTPUT: u64 = 42;
    pub const QUERY_REALISATION: u64 = 43;
    pub const ADD_MULTIPLE_TO_STORE: u64 = 44;
    pub const BUILD_PATHS_WITH_RESULTS: u64 = 46;
}

/// Most items, and most bytes in all, of one list of strings in a request: a client
/// cannot make the server hold more than this for it (nix-daemon forks per connection;
/// we do not, so one connection's memory is everyone's).
pub(super) const MAX_LIST_ITEMS: u64 = 1 << 20;
pub(super) const MAX_LIST_BYTES: u64 = 64 << 20;

/// A list of strings from a client, within [`MAX_LIST_ITEMS`] and [`MAX_LIST_BYTES`].
pub(super) fn read_string_list(r: &mut impl Read) -> Result<Vec<String>, WireError> {
    let n = read_u64(r)?;
    if n > MAX_LIST_ITEMS {
        return Err(WireError::Malformed(format!("a list of {n} items (at most {MAX_LIST_ITEMS})")));
    }
    let mut total = 0u64;
    let mut out = Vec::new();
    for _ in 0..n {
        let s = read_string(r)?;
        total += s.len() as u64;
        if total > MAX_LIST_BYTES {
            return Err(WireError::Malformed(format!("a list of more than {MAX_LIST_BYTES} bytes")));
        }
        out.push(s);
    }
    Ok(out)
}

/// A count of pairs (a map) from a client, within [`MAX_LIST_ITEMS`].
pub(super) fn read_map_count(r: &mut impl Read) -> Result<u64, WireError> {
    let n = read_u64(r)?;
    if n > MAX_LIST_ITEMS {
        return Err(WireError::Malformed(format!("a map of {n} entries (at most {MAX_LIST_ITEMS})")));
    }
    Ok(n)
}
