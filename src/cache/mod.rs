//! Nix binary caches: fetching store paths from them into a store (`copy --from`,
//! substitution), publishing paths to them (`copy --to`), and serving a store as one
//! over HTTP (`serve --http`).
//!
//! A cache is a directory tree, local (`file://`) or behind HTTP: `nix-cache-info`,
//! `<hash part>.narinfo` per path and the NAR files the narinfos point at.

pub mod compression;
pub mod http_server;
mod narinfo_cache;
pub mod publish;
pub mod substitute;
mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use compression::Compression;
pub use narinfo_cache::NarinfoCache;
pub use transport::{Transport, TransportOptions};

use crate::format::signing::{KeyError, PublicKey, SecretKey};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("binary cache URL '{url}': {what}")]
    Url { url: String, what: String },
    #[error("cannot read '{key}' from binary cache '{cache}': {what}")]
    Fetch { cache: String, key: String, what: String },
    #[error("cannot write '{key}' to binary cache '{cache}': {what}")]
    Write { cache: String, key: String, what: String },
    #[error("binary cache '{cache}': narinfo of '{path}': {what}")]
    Narinfo { cache: String, path: String, what: String },
    #[error("path '{path}' from binary cache '{cache}' is refused: {what}")]
    Untrusted { cache: String, path: String, what: String },
    #[error("NAR of '{path}' from binary cache '{cache}': {what}")]
    Nar { cache: String, path: String, what: String },
    #[error("binary cache '{cache}' holds paths of the store directory '{theirs}', not '{ours}'")]
    WrongStoreDir { cache: String, theirs: String, ours: String },
    #[error("path '{path}' is in none of the binary caches ({caches})")]
    Missing { path: String, caches: String },
    #[error("key file '{file}': {source}")]
    Key { file: PathBuf, source: KeyError },
    #[error("key file '{file}': {source}")]
    KeyIo { file: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// A parsed cache URL: where it is, and the parameters after `?` with Nix's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUrl {
    /// The URL without parameters (for messages and the narinfo cache's key).
    pub base: String,
    pub location: Location,
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    Http(String),
}

/// The parameters of a cache URL we act on; others are warned about, as Nix does.
const KNOWN_PARAMS: &[&str] = &["compression", "secret-key", "priority", "want-mass-query", "trusted", "compression-level"];

impl CacheUrl {
    pub fn parse(url: &str) -> Result<CacheUrl> {
        let bad = |what: &str| CacheError::Url { url: url.to_string(), what: what.to_string() };
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut params = BTreeMap::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params.insert(percent_decode(k).map_err(|e| bad(&e))?, percent_decode(v).map_err(|e| bad(&e))?);
        }
        let location = if let Some(dir) = base.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(bad("a file:// cache needs an absolute directory (file:///path)"));
            }
            // Nix 2.8 takes the path literally (`%20` is three characters), so we do too.
            Location::Dir(PathBuf::from(dir))
        } else if base.starts_with('/') {
            Location::Dir(PathBuf::from(base))
        } else if base.starts_with("http://") || base.starts_with("https://") {
            Location::Http(base.trim_end_matches('/').to_string())
        } else {
            return Err(bad("not a binary cache: expected file:///DIR, http://… or https://…"));
        };
        if let Some(c) = params.get("compression") {
            if Compression::parse(c).is_none() {
                return Err(bad(&format!("compression '{c}' is not supported (none, xz, zstd, bzip2)")));
            }
        }
        Ok(CacheUrl { base: base.trim_end_matches('/').to_string(), location, params })
    }

    /// Parameters we do not know, for a warning.
    pub fn unknown_params(&self) -> Vec<&str> {
        self.params.keys().map(String::as_str).filter(|k| !KNOWN_PARAMS.contains(k)).collect()
    }

    pub fn compression(&self) -> Compression {
        self.params.get("compression").and_then(|c| Compression::parse(c)).unwrap_or(Compression::Xz)
    }
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| format!("bad %-escape in '{s}'"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' is not UTF-8 once decoded"))
}

/// A cache's `nix-cache-info`, if it has one; one for another store directory is an
/// error (its paths are not ours, whatever their names).
pub(crate) fn cache_info(cache: &Transport, sd: &crate::format::StoreDir) -> Result<Option<crate::format::narinfo::CacheInfo>> {
    let text = cache.get_text("nix-cache-info", 1 << 16).map_err(|f| cache.fetch_error("nix-cache-info", f))?;
    let Some(text) = text else { return Ok(None) };
    let info = crate::format::narinfo::CacheInfo::parse(&text);
    if info.store_dir != sd.as_str() {
        return Err(CacheError::WrongStoreDir { cache: cache.url().base.clone(), theirs: info.store_dir, ours: sd.as_str().to_string() });
    }
    Ok(Some(info))
}

/// Reads a secret key file (`nix-store --generate-binary-cache-key`'s format).
pub fn read_secret_key(file: &std::path::Path) -> Result<SecretKey> {
    let text = read_key_file(file)?;
    SecretKey::parse(&text).map_err(|source| CacheError::Key { file: file.to_path_buf(), source })
}

pub fn read_public_key(file: &std::path::Path) -> Result<PublicKey> {
    let text = read_key_file(file)?;
    PublicKey::parse(&text).map_err(|source| CacheError::Key { file: file.to_path_buf(), source })
}

fn read_key_file(file: &std::path::Path) -> Result<String> {
    let bytes =
        crate::store::fs::tree::read_small_file(file, 64 << 10).map_err(|source| CacheError::KeyIo { file: file.to_path_buf(), source })?;
    String::from_utf8(bytes).map_err(|_| CacheError::KeyIo {
        file: file.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
    })
}

/// The trusted public keys of a spec, parsed (the spec reader already checked them).
pub fn trusted_keys(spec: &crate::spec::CacheSpec) -> Vec<PublicKey> {
    spec.trusted_public_keys.iter().filter_map(|k| PublicKey::parse(k).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_urls_parse_with_their_parameters() {
        let u = CacheUrl::parse("file:///tmp/a%20b c/cache?compression=zstd&secret-key=/k%20s").unwrap();
        assert_eq!(u.location, Location::Dir("/tmp/a%20b c/cache".into()), "as Nix 2.8: literal");
        assert_eq!(u.compression(), Compression::Zstd);
        assert_eq!(u.params["secret-key"], "/k s");
        assert!(u.unknown_params().is_empty());
        let u = CacheUrl::parse("http://127.0.0.1:8080/?bogus=1").unwrap();
        assert_eq!(u.location, Location::Http("http://127.0.0.1:8080".into()));
        assert_eq!(u.unknown_params(), ["bogus"]);
        assert_eq!(CacheUrl::parse("/srv/cache").unwrap().compression(), Compression::Xz);
        for bad in ["s3://bucket", "file://relative", "file:///x?compression=br", "ssh://host", "/x?a=%zz"] {
            assert!(CacheUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
