//! `.narinfo` files: a binary cache's description of one store path (its NAR's place,
//! compression and hashes, the path's references, deriver, signatures and content
//! address), as `Key: value` lines.
//!
//! Rendering writes the keys in the order Nix 2.8 writes them, so a narinfo we publish
//! is byte for byte the one `nix copy --to file://…` writes for the same path.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::hash::{Hash, HashAlgo};
use super::store_path::{ContentAddress, StoreDir, StorePath};

/// Narinfos are small; anything longer is not one (a server sending gigabytes).
pub const MAX_NARINFO_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache's root.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`, … as Nix names them.
    pub compression: String,
    /// Hash and size of the file at `url`; absent in some caches.
    pub file_hash: Option<Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Hash,
    pub nar_size: u64,
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub sigs: BTreeSet<String>,
    pub ca: Option<ContentAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} (narinfo line {line})")]
pub struct NarInfoError {
    pub line: usize,
    pub what: String,
}

impl NarInfo {
    /// Parses a narinfo. Unknown keys are ignored (caches add their own); the keys Nix
    /// needs must be present and well-formed.
    pub fn parse(text: &str, sd: &StoreDir) -> Result<NarInfo, NarInfoError> {
        let err = |line: usize, what: String| NarInfoError { line, what };
        if text.len() > MAX_NARINFO_BYTES {
            return Err(err(0, format!("longer than {MAX_NARINFO_BYTES} bytes")));
        }
        let mut path = None;
        let mut url = None;
        let mut compression = None;
        let (mut file_hash, mut file_size, mut nar_hash, mut nar_size) = (None, None, None, None);
        let mut references = None;
        let (mut deriver, mut system, mut ca) = (None, None, None);
        let mut sigs = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| err(n, format!("expected 'Key: value', found '{}'", line.escape_debug())))?;
            let hash = |v: &str| Hash::parse_prefixed(v).map_err(|e| err(n, format!("{key}: {e}")));
            let number = |v: &str| v.parse::<u64>().map_err(|_| err(n, format!("{key}: '{v}' is not a number")));
            let basename = |v: &str| StorePath::from_basename(v).map_err(|e| err(n, format!("{key}: {e}")));
            match key {
                "StorePath" => path = Some(sd.parse_path(value).map_err(|e| err(n, format!("StorePath: {e}")))?),
                "URL" => {
                    if value.is_empty() || value.starts_with('/') || value.split('/').any(|c| c == "..") {
                        return Err(err(n, format!("URL: '{value}' is not a path inside the cache")));
                    }
                    url = Some(value.to_string());
                }
                // Nix reads an empty compression as its old default.
                "Compression" => compression = Some(if value.is_empty() { "bzip2" } else { value }.to_string()),
                "FileHash" => file_hash = Some(hash(value)?),
                "FileSize" => file_size = Some(number(value)?),
                "NarHash" => nar_hash = Some(hash(value)?),
                "NarSize" => nar_size = Some(number(value)?),
                "References" => {
                    references = Some(value.split(' ').filter(|s| !s.is_empty()).map(basename).collect::<Result<BTreeSet<_>, _>>()?)
                }
                "Deriver" if value != "unknown-deriver" && !value.is_empty() => deriver = Some(basename(value)?),
                "System" => system = Some(value.to_string()),
                "Sig" if !value.is_empty() => {
                    sigs.insert(value.to_string());
                }
                "CA" if !value.is_empty() => ca = Some(ContentAddress::parse(value).map_err(|e| err(n, format!("CA: {e}")))?),
                _ => {}
            }
        }
        let missing = |key: &str| err(0, format!("the key '{key}' is missing"));
        let nar_hash: Hash = nar_hash.ok_or_else(|| missing("NarHash"))?;
        if nar_hash.algo() != HashAlgo::Sha256 {
            return Err(err(0, "NarHash: not a SHA-256 hash".into()));
        }
        Ok(NarInfo {
            path: path.ok_or_else(|| missing("StorePath"))?,
            url: url.ok_or_else(|| missing("URL"))?,
            compression: compression.unwrap_or_else(|| "bzip2".into()),
            file_hash,
            file_size,
            nar_hash,
            nar_size: nar_size.filter(|&s| s > 0).ok_or_else(|| missing("NarSize"))?,
            references: references.unwrap_or_default(),
            deriver,
            system,
            sigs,
            ca,
        })
    }

    /// The text Nix 2.8 writes for this info.
    pub fn render(&self, sd: &StoreDir) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "StorePath: {}", sd.display(&self.path));
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(s, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {}", h.to_nix32_string());
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", self.nar_hash.to_nix32_string());
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<&str> = self.references.iter().map(|r| r.basename()).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {}", d.basename());
        }
        if let Some(sys) = &self.system {
            let _ = writeln!(s, "System: {sys}");
        }
        for sig in &self.sigs {
            let _ = writeln!(s, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {ca}");
        }
        s
    }
}

/// The file name of a path's narinfo in a cache: `<hash part>.narinfo`.
pub fn narinfo_name(path: &StorePath) -> String {
    format!("{}.narinfo", path.hash_part())
}

/// `nix-cache-info`: the cache's store directory and hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub store_dir: String,
    pub want_mass_query: bool,
    pub priority: Option<u64>,
}

impl CacheInfo {
    pub fn parse(text: &str) -> CacheInfo {
        let mut info = CacheInfo { store_dir: "/nix/store".into(), want_mass_query: false, priority: None };
        for line in text.lines() {
            match line.split_once(": ") {
                Some(("StoreDir", v)) => info.store_dir = v.to_string(),
                Some(("WantMassQuery", v)) => info.want_mass_query = v == "1",
                Some(("Priority", v)) => info.priority = v.parse().ok(),
                _ => {}
            }
        }
        info
    }

    pub fn render(&self) -> String {
        let mut s = format!("StoreDir: {}\n", self.store_dir);
        if self.want_mass_query {
            s.push_str("WantMassQuery: 1\n");
        }
        if let Some(p) = self.priority {
            let _ = writeln!(s, "Priority: {p}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `nix copy --to 'file://…?secret-key=…'` (Nix 2.8) for a built path.
    const BUILT: &str = "StorePath: /nix/store/45gp4l5hcnjyiyw1c76q9f70fq3yijn1-top
URL: nar/1dimq8y7bx280wrya6kaabjqidrrnns8y6xk3xh7sbf92xs4xymf.nar.xz
Compression: xz
FileHash: sha256:1dimq8y7bx280wrya6kaabjqidrrnns8y6xk3xh7sbf92xs4xymf
FileSize: 272
NarHash: sha256:00zwb7rk3kxvk6yijb8cib340224n0ckqdc35qqqpl6a7gpq2019
NarSize: 568
References: 45gp4l5hcnjyiyw1c76q9f70fq3yijn1-top
Deriver: fyjz1a60wkw1d08q2mj30lxy2lyirfiz-top.drv
Sig: test-1:yuD6n+1cmr6e6qPxf40CprTmirgV/P1jqedzWKfa1N5PzmLvtlpy52RxISYDdIvUo0lAksxwot8yxBT53Pe3AA==
";

    /// The same for an added (content-addressed) file without references.
    const ADDED: &str = "StorePath: /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt
URL: nar/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar
Compression: none
FileHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
FileSize: 120
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
Sig: test-1:nSgkrLEsUXWl43qxBQiQInDIAnedkHnHxKYixvsicBY2AZZs3iOdda0k/Xd5TlNBCy+PGSrS9wLVxiDxPf3wAw==
CA: fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
";

    #[test]
    fn nix_narinfos_round_trip_byte_for_byte() {
        let sd = StoreDir::default();
        for text in [BUILT, ADDED] {
            let info = NarInfo::parse(text, &sd).unwrap();
            assert_eq!(info.render(&sd), text);
        }
        let built = NarInfo::parse(BUILT, &sd).unwrap();
        assert_eq!(built.references.len(), 1);
        assert_eq!(built.deriver.unwrap().name(), "top.drv");
        assert_eq!(built.file_size, Some(272));
        assert!(NarInfo::parse(ADDED, &sd).unwrap().references.is_empty());
    }

    #[test]
    fn malformed_narinfos_are_refused_naming_the_line() {
        let sd = StoreDir::default();
        let cases = [
            (BUILT.replace("NarSize: 568", "NarSize: lots"), "NarSize"),
            (BUILT.replace("NarHash: sha256:", "NarHash: md5:"), "NarHash"),
            (BUILT.replace("StorePath: /nix/store/", "StorePath: /tmp/"), "StorePath"),
            (BUILT.replace("URL: nar/", "URL: ../../etc/"), "URL"),
            (BUILT.replace("URL: nar/", "URL: /etc/"), "URL"),
            (BUILT.replace("References: 45gp", "References: bogus"), "References"),
            (BUILT.replace("NarHash: sha256:00zwb7rk3kxvk6yijb8cib340224n0ckqdc35qqqpl6a7gpq2019\n", ""), "NarHash"),
            (BUILT.replace("Compression: xz", "Compression xz"), "Key: value"),
        ];
        for (text, key) in cases {
            let e = NarInfo::parse(&text, &sd).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        assert!(NarInfo::parse(&"a".repeat(MAX_NARINFO_BYTES + 1), &sd).is_err());
    }

    #[test]
    fn cache_info_round_trips() {
        let i = CacheInfo { store_dir: "/nix/store".into(), want_mass_query: true, priority: Some(40) };
        assert_eq!(CacheInfo::parse(&i.render()), i);
        assert_eq!(CacheInfo::parse("StoreDir: /nix/store\n").render(), "StoreDir: /nix/store\n");
    }

    proptest::proptest! {
        /// Hostile text never panics, and what parses renders to text that parses the same.
        #[test]
        fn any_text_parses_or_fails_cleanly(lines in proptest::collection::vec("[A-Za-z]{0,10}(: )?[ -~]{0,60}", 0..16), pick in 0usize..16) {
            let sd = StoreDir::default();
            let mut text: Vec<String> = BUILT.lines().map(str::to_string).collect();
            // Replace one of Nix's lines with a random one, or append random lines.
            let at = pick % (text.len() + 1);
            text.splice(at..(at + 1).min(text.len()), lines);
            let text = text.join("\n");
            if let Ok(info) = NarInfo::parse(&text, &sd) {
                proptest::prop_assert_eq!(NarInfo::parse(&info.render(&sd), &sd).unwrap(), info);
            }
        }
    }
}
