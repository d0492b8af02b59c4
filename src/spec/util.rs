//! Small helpers shared by the TOML and URI front ends.

use std::path::{Component, Path, PathBuf};

/// Lexical normalisation: collapses `//` and `.`, applies `..` and drops a
/// trailing slash. Deliberately does not touch the disk, so a spec validates
/// before any of its directories exist.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(p) => out.push(p.as_os_str()),
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                // `/..` is `/`; a relative path keeps leading `..`s.
                let last_is_normal = matches!(out.components().next_back(), Some(Component::Normal(_)));
                if last_is_normal {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// `path` made absolute against the current directory, then normalised.
/// Reading the current directory is the only system access here.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
/// Case and `_`/`-` differences count for little: `store_dir` → `store-dir`.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let fold = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let w = fold(word);
    let limit = match w.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    // Optimal string alignment: Levenshtein plus adjacent transpositions, so `tpye`
    // is one edit from `type`.
    candidates.iter().map(|c| (strsim::osa_distance(&w, &fold(c)), *c)).filter(|(d, _)| *d <= limit).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

pub(crate) fn unknown_hint(word: &str, candidates: &[&str]) -> String {
    match did_you_mean(word, candidates) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("expected one of: {}", candidates.join(", ")),
    }
}

/// A TOML value as a message shows it: its type and, for scalars, the value.
pub(crate) fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer {i}"),
        toml::Value::Float(f) => format!("float {f}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("date-time {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a//b/./c/")), Path::new("/a/b/c"));
        assert_eq!(normalize(Path::new("/a/b/../c")), Path::new("/a/c"));
        assert_eq!(normalize(Path::new("/../a")), Path::new("/a"));
        assert_eq!(normalize(Path::new("/")), Path::new("/"));
        assert_eq!(normalize(Path::new("../a/./b")), Path::new("../a/b"));
    }

    #[test]
    fn suggestions() {
        let keys = ["type", "store-dir", "upper-layer", "lower-store", "check-mount"];
        assert_eq!(did_you_mean("tpye", &keys), Some("type"));
        assert_eq!(did_you_mean("store_dir", &keys), Some("store-dir"));
        assert_eq!(did_you_mean("uper-layer", &keys), Some("upper-layer"));
        assert_eq!(did_you_mean("checkMount", &keys), Some("check-mount"));
        assert_eq!(did_you_mean("frobnicate", &keys), None);
    }
}
