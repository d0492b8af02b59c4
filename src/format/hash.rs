//! Hashes as Nix prints and parses them.
//!
//! Nix writes one hash in several spellings: `sha256:<base16>` in the database,
//! `sha256:<nix32>` from `nix-store -q --hash` and in `ca` strings, SRI
//! `sha256-<base64>` in JSON. The encoding of the digest after the algorithm is chosen by
//! its length alone.

use std::fmt;

use base64::Engine;
use sha2::Digest;

use super::nixbase32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    pub fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    pub fn parse(s: &str) -> Result<HashAlgo, HashError> {
        Ok(match s {
            "md5" => HashAlgo::Md5,
            "sha1" => HashAlgo::Sha1,
            "sha256" => HashAlgo::Sha256,
            "sha512" => HashAlgo::Sha512,
            _ => return Err(HashError::UnknownAlgo(s.to_string())),
        })
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("unknown hash algorithm '{0}'")]
    UnknownAlgo(String),
    #[error("hash '{0}' does not include a type")]
    NoType(String),
    #[error("hash '{hash}' has wrong length for hash type '{algo}'")]
    WrongLength { hash: String, algo: HashAlgo },
    #[error("invalid base-16 hash '{0}'")]
    InvalidBase16(String),
    #[error("invalid base-32 hash '{0}'")]
    InvalidBase32(String),
    #[error("invalid base-64 hash '{0}'")]
    InvalidBase64(String),
}

/// A digest with its algorithm; the digest is a fixed array so a `Hash` never allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; 64],
}

impl Hash {
    pub fn new(algo: HashAlgo, digest: &[u8]) -> Hash {
        assert_eq!(digest.len(), algo.size(), "digest length for {algo}");
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Hash { algo, bytes }
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.size()]
    }

    pub fn sha256(data: &[u8]) -> Hash {
        Hash::new(HashAlgo::Sha256, &sha2::Sha256::digest(data))
    }

    pub fn to_base16(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.algo.size() * 2);
        for &b in self.digest() {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }

    pub fn to_nix32(&self) -> String {
        nixbase32::encode(self.digest())
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.digest())
    }

    /// `sha256:<base16>`, the spelling of the database's `hash` column.
    pub fn to_db_string(&self) -> String {
        format!("{}:{}", self.algo, self.to_base16())
    }

    /// `sha256:<nix32>`, as `nix-store -q --hash` prints it.
    pub fn to_nix32_string(&self) -> String {
        format!("{}:{}", self.algo, self.to_nix32())
    }

    /// `sha256-<base64>`, the SRI form used in JSON.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// Parses `<algo>:<digest>` or SRI `<algo>-<base64>`.
    pub fn parse_prefixed(s: &str) -> Result<Hash, HashError> {
        if let Some((algo, rest)) = s.split_once(':') {
            return Hash::parse_digest(HashAlgo::parse(algo)?, rest);
        }
        if let Some((algo, rest)) = s.split_once('-') {
            if let Ok(algo) = HashAlgo::parse(algo) {
                return Hash::decode_base64(algo, rest, s);
            }
        }
        Err(HashError::NoType(s.to_string()))
    }

    /// Parses a digest of a known algorithm, choosing the encoding by its length.
    pub fn parse_digest(algo: HashAlgo, s: &str) -> Result<Hash, HashError> {
        let size = algo.size();
        if s.len() == size * 2 {
            let mut out = [0u8; 64];
            for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
                let pair = std::str::from_utf8(chunk).ok();
                out[i] = pair.and_then(|p| u8::from_str_radix(p, 16).ok()).ok_or_else(|| HashError::InvalidBase16(s.to_string()))?;
            }
            Ok(Hash { algo, bytes: out })
        } else if s.len() == nixbase32::encoded_len(size) {
            let mut out = [0u8; 64];
            nixbase32::decode_into(s, &mut out[..size]).map_err(|_| HashError::InvalidBase32(s.to_string()))?;
            Ok(Hash { algo, bytes: out })
        } else if s.len() == size.div_ceil(3) * 4 {
            Hash::decode_base64(algo, s, s)
        } else {
            Err(HashError::WrongLength { hash: s.to_string(), algo })
        }
    }

    fn decode_base64(algo: HashAlgo, b64: &str, whole: &str) -> Result<Hash, HashError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| HashError::InvalidBase64(whole.to_string()))?;
        if bytes.len() != algo.size() {
            return Err(HashError::WrongLength { hash: whole.to_string(), algo });
        }
        Ok(Hash::new(algo, &bytes))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_db_string())
    }
}

/// A streaming hasher for any of Nix's algorithms.
#[derive(Clone)]
pub enum Hasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algo: HashAlgo) -> Hasher {
        match algo {
            HashAlgo::Md5 => Hasher::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Hash {
        match self {
            Hasher::Md5(h) => Hash::new(HashAlgo::Md5, &h.finalize()),
            Hasher::Sha1(h) => Hash::new(HashAlgo::Sha1, &h.finalize()),
            Hasher::Sha256(h) => Hash::new(HashAlgo::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Hash::new(HashAlgo::Sha512, &h.finalize()),
        }
    }
}

/// A writer that hashes and counts everything written through it, for one-pass NAR
/// hash and size.
pub struct HashSink {
    hasher: Hasher,
    len: u64,
}

impl HashSink {
    pub fn new(algo: HashAlgo) -> HashSink {
        HashSink { hasher: Hasher::new(algo), len: 0 }
    }

    pub fn finish(self) -> (Hash, u64) {
        (self.hasher.finish(), self.len)
    }
}

impl std::io::Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_NAR: &str = "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13";

    #[test]
    fn spellings_of_one_hash() {
        let h = Hash::parse_prefixed(&format!("sha256:{HELLO_NAR}")).unwrap();
        assert_eq!(h.to_nix32_string(), "sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw");
        assert_eq!(h.to_sri(), "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=");
        assert_eq!(h.to_db_string(), format!("sha256:{HELLO_NAR}"));
        assert_eq!(Hash::parse_prefixed(&h.to_nix32_string()).unwrap(), h);
        assert_eq!(Hash::parse_prefixed(&h.to_sri()).unwrap(), h);
        assert_eq!(Hash::parse_prefixed(&format!("sha256:{}", HELLO_NAR.to_uppercase())).unwrap(), h);
    }

    #[test]
    fn errors() {
        assert_eq!(Hash::parse_prefixed(HELLO_NAR), Err(HashError::NoType(HELLO_NAR.into())));
        assert!(matches!(
            Hash::parse_prefixed("sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dq"),
            Err(HashError::WrongLength { .. })
        ));
        assert_eq!(
            Hash::parse_prefixed("sha256:24zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw").unwrap_err().to_string(),
            "invalid base-32 hash '24zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw'"
        );
    }

    #[test]
    fn empty_input_digests() {
        let mut h = Hasher::new(HashAlgo::Sha1);
        h.update(b"");
        assert_eq!(h.finish().to_nix32(), "143xibwh31h9bvxzalr0sjvbbvpa6ffs");
        assert_eq!(Hash::sha256(b"").to_nix32(), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
    }
}

/// Hashes and counts the bytes read through it (a NAR on its way in).
pub struct HashingReader<'a, R: std::io::Read + ?Sized> {
    inner: &'a mut R,
    hasher: Hasher,
    len: u64,
}

impl<'a, R: std::io::Read + ?Sized> HashingReader<'a, R> {
    pub fn new(inner: &'a mut R, algo: HashAlgo) -> Self {
        HashingReader { inner, hasher: Hasher::new(algo), len: 0 }
    }

    /// The hash and the number of bytes read.
    pub fn finish(self) -> (Hash, u64) {
        (self.hasher.finish(), self.len)
    }
}

impl<R: std::io::Read + ?Sized> std::io::Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}
