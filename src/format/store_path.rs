//! Store paths: `<store dir>/<32 nix32 chars>-<name>`, and how Nix computes them.
//!
//! A `StorePath` is validated when built, so holding one means its basename is safe to
//! join onto a directory: it cannot contain `/`, be `.` or `..`, or escape the store.

use std::collections::BTreeSet;
use std::fmt;

use super::hash::{Hash, HashAlgo};
use super::nixbase32;

pub const HASH_PART_LEN: usize = 32;
pub const MAX_NAME_LEN: usize = 211;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("path '{0}' is not in the Nix store")]
    NotInStore(String),
    #[error("store path '{0}' has a name longer than {MAX_NAME_LEN} characters")]
    NameTooLong(String),
    #[error("store path '{path}' contains illegal character '{ch}'")]
    IllegalChar { path: String, ch: char },
    #[error("store path '{0}' has an empty name")]
    EmptyName(String),
    #[error("store path '{0}' has an invalid name")]
    InvalidName(String),
    #[error("store path '{0}' has an invalid hash part")]
    InvalidHashPart(String),
    #[error("invalid hash part '{0}'")]
    BadHashPartQuery(String),
    #[error("content-addressed path '{0}' cannot have these references: {1}")]
    ReferencesNotAddressed(String, &'static str),
}

/// The logical store directory (`/nix/store`) that store paths are named in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".to_string())
    }
}

impl StoreDir {
    pub fn new(dir: &str) -> StoreDir {
        StoreDir(dir.trim_end_matches('/').to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a full path `<store dir>/<basename>`; a sub-path below a store path is refused.
    pub fn parse_path(&self, s: &str) -> Result<StorePath, StorePathError> {
        let base = s
            .strip_prefix(self.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(s.to_string()))?;
        if base.contains('/') {
            return Err(StorePathError::NotInStore(s.to_string()));
        }
        StorePath::from_basename(base)
    }

    /// Parses a path that may point inside a store path (`/nix/store/…-x/bin/y`),
    /// returning the store path that contains it.
    pub fn parse_path_prefix(&self, s: &str) -> Result<StorePath, StorePathError> {
        let rest = s
            .strip_prefix(self.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(s.to_string()))?;
        let base = rest.split('/').next().unwrap_or_default();
        StorePath::from_basename(base)
    }

    pub fn display(&self, path: &StorePath) -> String {
        let mut s = String::with_capacity(self.0.len() + 1 + path.base.len());
        s.push_str(&self.0);
        s.push('/');
        s.push_str(&path.base);
        s
    }

    /// `makeStorePath`: hash the fingerprint, XOR-fold it to 20 bytes, name the path.
    pub fn make_store_path(&self, kind: &str, inner: &Hash, name: &str) -> Result<StorePath, StorePathError> {
        let fingerprint = format!("{kind}:{}:{}:{}:{name}", inner.algo(), inner.to_base16(), self.0);
        let digest = Hash::sha256(fingerprint.as_bytes());
        StorePath::new(compress_hash(digest.digest()), name)
    }

    fn kind_with_refs(&self, prefix: &str, refs: &BTreeSet<StorePath>, self_ref: bool) -> String {
        let mut kind = prefix.to_string();
        for r in refs {
            kind.push(':');
            kind.push_str(&self.display(r));
        }
        if self_ref {
            kind.push_str(":self");
        }
        kind
    }

    /// A `text` path (`.drv` files, `builtins.toFile`): hashed flat, no self-reference.
    pub fn make_text_path(&self, name: &str, content_hash: &Hash, refs: &BTreeSet<StorePath>) -> Result<StorePath, StorePathError> {
        self.make_store_path(&self.kind_with_refs("text", refs, false), content_hash, name)
    }

    /// A content-addressed path. NAR hashing with SHA-256 gives a `source` path (the
    /// only kind that may carry references); anything else is a fixed `output:out` path.
    pub fn make_fixed_output_path(
        &self,
        name: &str,
        method: FileIngestion,
        hash: &Hash,
        refs: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        if method == FileIngestion::Recursive && hash.algo() == HashAlgo::Sha256 {
            self.make_store_path(&self.kind_with_refs("source", refs, self_ref), hash, name)
        } else {
            let m = if method == FileIngestion::Recursive { "r:" } else { "" };
            let inner = format!("fixed:out:{m}{}:{}:", hash.algo(), hash.to_base16());
            self.make_store_path("output:out", &Hash::sha256(inner.as_bytes()), name)
        }
    }

    /// The store path a content address names, given the path's references.
    pub fn make_path_from_ca(
        &self,
        name: &str,
        ca: &ContentAddress,
        refs: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        // References the address does not hash would be unproven claims: refuse them, as
        // Nix does, rather than name a path whatever references it is given.
        match ca {
            ContentAddress::Text(_) if self_ref => {
                Err(StorePathError::ReferencesNotAddressed(name.into(), "a text path cannot refer to itself"))
            }
            ContentAddress::Text(h) => self.make_text_path(name, h, refs),
            ContentAddress::Fixed(m, h)
                if !(*m == FileIngestion::Recursive && h.algo() == HashAlgo::Sha256) && (self_ref || !refs.is_empty()) =>
            {
                Err(StorePathError::ReferencesNotAddressed(name.into(), "only NAR-hashed SHA-256 paths may have references"))
            }
            ContentAddress::Fixed(m, h) => self.make_fixed_output_path(name, *m, h, refs, self_ref),
        }
    }
}

/// XOR-folds a digest to the 20 bytes of a store path hash part.
pub fn compress_hash(digest: &[u8]) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, b) in digest.iter().enumerate() {
        out[i % 20] ^= b;
    }
    out
}

/// A store path, without its store directory. Ordered by basename, as Nix sorts paths.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    /// The basename `<hash part>-<name>`, validated; ordering by it is Nix's order.
    base: String,
}

impl StorePath {
    pub fn new(digest: [u8; 20], name: &str) -> Result<StorePath, StorePathError> {
        StorePath::from_basename(&format!("{}-{name}", nixbase32::encode(&digest)))
    }

    pub fn from_basename(base: &str) -> Result<StorePath, StorePathError> {
        let bytes = base.as_bytes();
        if bytes.len() < HASH_PART_LEN + 1 || !bytes[..HASH_PART_LEN].iter().all(|&c| nixbase32::is_nix32_char(c)) {
            return Err(StorePathError::InvalidHashPart(base.to_string()));
        }
        if bytes[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::InvalidHashPart(base.to_string()));
        }
        let name = &base[HASH_PART_LEN + 1..];
        validate_name(name, base)?;
        Ok(StorePath { base: base.to_string() })
    }

    pub fn hash_part(&self) -> &str {
        &self.base[..HASH_PART_LEN]
    }

    pub fn name(&self) -> &str {
        &self.base[HASH_PART_LEN + 1..]
    }

    pub fn basename(&self) -> &str {
        &self.base
    }

    pub fn is_derivation(&self) -> bool {
        self.name().ends_with(".drv")
    }
}

/// Checks a store path name: 1–211 characters of `[0-9A-Za-z+-._?=]`, not `.` or `..`.
pub fn validate_name(name: &str, whole: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName(whole.to_string()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong(whole.to_string()));
    }
    if let Some(ch) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(*c))) {
        return Err(StorePathError::IllegalChar { path: whole.to_string(), ch });
    }
    if name == "." || name == ".." {
        return Err(StorePathError::InvalidName(whole.to_string()));
    }
    Ok(())
}

/// Checks a `path-from-hash-part` query argument.
pub fn validate_hash_part(s: &str) -> Result<(), StorePathError> {
    if s.len() != HASH_PART_LEN || !s.bytes().all(nixbase32::is_nix32_char) {
        return Err(StorePathError::BadHashPartQuery(s.to_string()));
    }
    Ok(())
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({})", self.base)
    }
}

/// How a path's contents were hashed for its content address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileIngestion {
    Flat,
    Recursive,
}

/// The `ca` column: `text:sha256:<nix32>` or `fixed:[r:]<algo>:<nix32>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentAddress {
    Text(Hash),
    Fixed(FileIngestion, Hash),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentAddressError {
    #[error("not a content address because it is not in the form '<prefix>:<rest>': {0}")]
    NoPrefix(String),
    #[error("content address '{0}' has an unknown prefix")]
    UnknownPrefix(String),
    #[error("content address '{ca}': {err}")]
    BadHash { ca: String, err: super::hash::HashError },
}

impl ContentAddress {
    pub fn parse(s: &str) -> Result<ContentAddress, ContentAddressError> {
        let (prefix, rest) = s.split_once(':').ok_or_else(|| ContentAddressError::NoPrefix(s.to_string()))?;
        let bad = |err| ContentAddressError::BadHash { ca: s.to_string(), err };
        match prefix {
            "text" => {
                let h = Hash::parse_prefixed(rest).map_err(bad)?;
                Ok(ContentAddress::Text(h))
            }
            "fixed" => {
                let (method, rest) = match rest.strip_prefix("r:") {
                    Some(r) => (FileIngestion::Recursive, r),
                    None => (FileIngestion::Flat, rest),
                };
                Ok(ContentAddress::Fixed(method, Hash::parse_prefixed(rest).map_err(bad)?))
            }
            _ => Err(ContentAddressError::UnknownPrefix(s.to_string())),
        }
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentAddress::Text(h) => write!(f, "text:{}", h.to_nix32_string()),
            ContentAddress::Fixed(FileIngestion::Flat, h) => write!(f, "fixed:{}", h.to_nix32_string()),
            ContentAddress::Fixed(FileIngestion::Recursive, h) => write!(f, "fixed:r:{}", h.to_nix32_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd() -> StoreDir {
        StoreDir::default()
    }

    fn sha256(hex: &str) -> Hash {
        Hash::parse_digest(HashAlgo::Sha256, hex).unwrap()
    }

    fn refs(paths: &[&str]) -> BTreeSet<StorePath> {
        paths.iter().map(|p| sd().parse_path(p).unwrap()).collect()
    }

    #[test]
    fn source_paths() {
        let cases = [
            ("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13", "hello.txt", "i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"),
            ("ab9e600c5a3d4f86783075f9ca16467e51d69a2780c8b8db76a21de48960d4fc", "dir", "l5z6nq5vqxlzf7xrgs4irdigsz8s3i4i-dir"),
            ("b55bce1ab38788765364491154df0c575a4959c247abcd0d2d24a6dba4b10da7", "exe.sh", "fgyiq6rl6bqv10ply01rb6wbmgb3afw3-exe.sh"),
        ];
        for (nar, name, expect) in cases {
            let p = sd().make_fixed_output_path(name, FileIngestion::Recursive, &sha256(nar), &BTreeSet::new(), false).unwrap();
            assert_eq!(p.basename(), expect);
        }
    }

    #[test]
    fn compressed_hash_of_hello() {
        let fp = "source:sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13:/nix/store:hello.txt";
        let c = compress_hash(Hash::sha256(fp.as_bytes()).digest());
        assert_eq!(nixbase32::encode(&c), "i9pmrzmpshapij2kin22pff6fc2adavx");
    }

    #[test]
    fn fixed_flat_and_sha1_paths() {
        let flat = sd()
            .make_fixed_output_path(
                "hello.txt",
                FileIngestion::Flat,
                &sha256("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"),
                &BTreeSet::new(),
                false,
            )
            .unwrap();
        assert_eq!(flat.basename(), "gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt");
        let sha1 = Hash::parse_digest(HashAlgo::Sha1, "9dec062fbdc139d973458d55a1dc0d26b5588a00").unwrap();
        let nar_sha1 = sd().make_fixed_output_path("dir", FileIngestion::Recursive, &sha1, &BTreeSet::new(), false).unwrap();
        assert_eq!(nar_sha1.basename(), "ync964c5950giqwlkc8z8dcsidk7y694-dir");
        let flat_sha1 = Hash::parse_digest(HashAlgo::Sha1, "f572d396fae9206628714fb2ce00f72e94f2258f").unwrap();
        let p = sd().make_fixed_output_path("hello.txt", FileIngestion::Flat, &flat_sha1, &BTreeSet::new(), false).unwrap();
        assert_eq!(p.basename(), "svdva85yi507g9vncgsaxvnd1r808h4w-hello.txt");
        assert_eq!(ContentAddress::Fixed(FileIngestion::Recursive, sha1).to_string(), "fixed:r:sha1:0255id961pfa2mcd8mrxjff1plphdv4x");
    }

    #[test]
    fn text_paths() {
        let dep = sd()
            .make_text_path("dep.drv", &sha256("52c299c69ed1212f91ec47d7ac3c2d74bc0182e62bba55ede0092902b604e5f9"), &BTreeSet::new())
            .unwrap();
        assert_eq!(dep.basename(), "6v4wrmrdn9p8211r8h3wrjgccbaxpdhq-dep.drv");
        let top = sd()
            .make_text_path(
                "top.drv",
                &sha256("c764562b280f3372f1c69a47c7923f349b6b334ed5d95f2dc64d535a4360acf3"),
                &refs(&["/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", "/nix/store/6v4wrmrdn9p8211r8h3wrjgccbaxpdhq-dep.drv"]),
            )
            .unwrap();
        assert_eq!(top.basename(), "vq89clmx04780f06ypjycidrdmiz491k-top.drv");
        assert_eq!(
            ContentAddress::Text(sha256("c764562b280f3372f1c69a47c7923f349b6b334ed5d95f2dc64d535a4360acf3")).to_string(),
            "text:sha256:1wxcc11mllsdqqnmznfm9qrnp6rl7y9cfiwsqvqp4cqg50mmcr67"
        );
    }

    #[test]
    fn self_referencing_source_path() {
        let p = sd()
            .make_fixed_output_path(
                "caself",
                FileIngestion::Recursive,
                &sha256("55a9b98d637a8fca7fd1c67e3d6d446ecc4ff5e7ece1914bb5f5a3eeac944035"),
                &refs(&["/nix/store/g7427gd50cyg93zbq91sxcl5vg0a2qm1-dep"]),
                true,
            )
            .unwrap();
        assert_eq!(p.basename(), "glmm1b2hsxl514phf6qgqj9ygv8pvnx0-caself");
    }

    #[test]
    fn input_addressed_output_paths() {
        let p =
            sd().make_store_path("output:out", &sha256("6803563925a06201c166e0e4cdfdae601a89e0eb994a2f4b67e8f9afcf7b8caa"), "dep").unwrap();
        assert_eq!(p.basename(), "g7427gd50cyg93zbq91sxcl5vg0a2qm1-dep");
        let doc = sd()
            .make_store_path("output:doc", &sha256("cf9bb5c8ba73c1abeee5fff3a954b4a06f10745458b10b94cecb129bf4f8d774"), "top-doc")
            .unwrap();
        assert_eq!(doc.basename(), "432xdz9i96nli4ml7jiqbf2nv3vc6zf7-top-doc");
    }

    #[test]
    fn parsing_rejects_bad_paths() {
        let s = sd();
        assert!(s.parse_path("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt").is_ok());
        for bad in [
            "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt/sub",
            "/nix/store/../etc/passwd",
            "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-..",
            "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-",
            "/nix/store/i9pmrzmpshapij2kin22pff6fc2adav-hello",
            "/nix/store/e9pmrzmpshapij2kin22pff6fc2adavx-hello",
            "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavxxhello",
            "/nix/storei9pmrzmpshapij2kin22pff6fc2adavx-hello",
            "/other/i9pmrzmpshapij2kin22pff6fc2adavx-hello",
        ] {
            assert!(s.parse_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            s.parse_path("/nix/store/kzhpg6az647fhz7d8b8sm8lb9wx7qkzg-a b").unwrap_err().to_string(),
            "store path 'kzhpg6az647fhz7d8b8sm8lb9wx7qkzg-a b' contains illegal character ' '"
        );
        let long = format!("/nix/store/l1s5f095j5mj1jblk3xq0si19l7ijraz-{}", "a".repeat(212));
        assert!(matches!(s.parse_path(&long), Err(StorePathError::NameTooLong(_))));
        let ok = format!("/nix/store/l1s5f095j5mj1jblk3xq0si19l7ijraz-{}", "a".repeat(211));
        assert!(s.parse_path(&ok).is_ok());
        assert_eq!(s.parse_path_prefix("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt/sub/x").unwrap().name(), "hello.txt");
    }

    #[test]
    fn content_address_round_trip() {
        for s in [
            "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
            "text:sha256:1yg50jv04a89w3nmbfibws103g3l5lyarms7xj8jy8fikv39khjj",
            "fixed:sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm",
        ] {
            assert_eq!(ContentAddress::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            ContentAddress::parse("garbage").unwrap_err().to_string(),
            "not a content address because it is not in the form '<prefix>:<rest>': garbage"
        );
    }

    #[test]
    fn a_content_address_never_names_a_path_with_references_it_does_not_hash() {
        let h = sha256("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13");
        let other = refs(&["/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"]);
        let flat = ContentAddress::Fixed(FileIngestion::Flat, h);
        assert!(sd().make_path_from_ca("t", &flat, &BTreeSet::new(), false).is_ok());
        assert!(sd().make_path_from_ca("t", &flat, &other, false).is_err());
        assert!(sd().make_path_from_ca("t", &flat, &BTreeSet::new(), true).is_err());
        assert!(sd().make_path_from_ca("t", &ContentAddress::Text(h), &other, true).is_err());
        assert!(sd().make_path_from_ca("t", &ContentAddress::Text(h), &other, false).is_ok());
        assert!(sd().make_path_from_ca("t", &ContentAddress::Fixed(FileIngestion::Recursive, h), &other, true).is_ok());
    }
}
