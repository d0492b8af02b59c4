//! Nix store URIs: parsing into a [`Draft`] and rendering a [`StoreSpec`]
//! back, with the percent-coding both need.
//!
//! Grammar accepted (the local subset of Nix's):
//!
//! ```text
//! uri       = base [ "?" param *( "&" param ) ]
//! base      = "local" | "daemon" | "/" abs-path
//!           | ( "local" | "local-overlay" ) "://" [ abs-root ]
//!           | "unix://" [ abs-socket-path ]
//! param     = name "=" value          ; both percent-decoded
//! ```
//!
//! `auto` is refused: it picks a store by probing the system, and a spec
//! must mean the same store wherever it is read.

use std::path::{Path, PathBuf};

use super::draft::{At, Draft, RealDefault, Site};
use super::error::{SpecError, SpecErrorKind};
use super::util::{did_you_mean, normalize, unknown_hint};
use super::{SpecOrigin, StoreKind, StoreSpec, DEFAULT_DAEMON_SOCKET, DEFAULT_LOG_DIR, DEFAULT_STATE_DIR, DEFAULT_STORE_DIR, MAX_NESTING};

/// Parameters overlay-store reads.
const USED: &[&str] = &["root", "store", "real", "state", "log", "read-only", "lower-store", "upper-layer", "check-mount", "remount-hook"];
/// Nix settings every store has; accepted with a warning.
const UNUSED_STORE: &[&str] = &["path-info-cache-size", "trusted", "priority", "want-mass-query", "system-features"];
/// Nix settings of local (and local-overlay) stores; accepted with a warning.
const UNUSED_LOCAL: &[&str] = &["require-sigs", "ignore-gc-delete-failure", "use-roots-daemon", "build-dir"];
/// Nix settings of daemon stores; accepted with a warning.
const UNUSED_DAEMON: &[&str] = &["max-connections", "max-connection-age"];
/// Settings only the TOML spec has; named in the error so users know where they go.
const TOML_ONLY: &[&str] = &["immutable", "policy", "socket", "type", "store-dir", "mount", "gc", "watch", "policy-limits"];
/// Nix store types without a local store directory; they cannot be a layer.
const UNSUPPORTED_SCHEMES: &[&str] = &["ssh", "ssh-ng", "mounted-ssh-ng", "http", "https", "file", "s3", "gs", "dummy"];

pub(crate) fn parse(uri: &str) -> Result<StoreSpec, SpecError> {
    parse_nested(uri, uri, "", 0)
}

/// `text` is the URI at this level, `top` the one the user wrote, `prefix`
/// the dotted path of `lower-store` params leading here.
fn parse_nested(text: &str, top: &str, prefix: &str, depth: usize) -> Result<StoreSpec, SpecError> {
    let site = Site::Uri { uri: top, prefix };
    // Problems with the URI as a whole are reported under the name of the
    // parameter that holds it, or `scheme` at the top.
    let whole = |expected: String| -> SpecError {
        let param = match prefix.strip_suffix('.') {
            Some(p) => p.to_string(),
            None => "scheme".to_string(),
        };
        SpecErrorKind::Uri { uri: top.to_string(), param, expected }.into()
    };

    if text.contains('#') {
        return Err(whole("a `#` starts a URI fragment, which store URIs do not have; write it as %23".into()));
    }
    let (base, query) = match text.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (text, None),
    };

    if !base.contains("://") && base.contains('/') && !base.starts_with('/') {
        return Err(site.error(
            "root",
            None,
            format!("expected an absolute path, found {base:?}; a store root in a URI is never relative"),
        ));
    }
    let (kind, location) = classify(base).map_err(whole)?;
    let mut d = Draft { kind: Some(At { value: kind, pos: None }), ..Draft::default() };
    let from_location = match location {
        None => None,
        Some(raw) => {
            let key = if kind == StoreKind::Daemon { "socket" } else { "root" };
            let value = if base.starts_with('/') {
                // A bare path is taken literally, as Nix does.
                raw.to_string()
            } else {
                decode(raw).map_err(whole)?
            };
            Some(absolute_path(&site, key, &value)?)
        }
    };
    match kind {
        StoreKind::Daemon => d.socket = from_location,
        _ => d.root = from_location,
    }

    let mut warnings = Vec::new();
    let mut nested_warnings = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in query_pairs(&site, query.unwrap_or(""))? {
        if seen.contains(&name) {
            return Err(site.error(&name, None, "given twice; give each parameter once"));
        }
        seen.push(name.clone());
        let path = || absolute_path(&site, &name, &value).map(Some);
        match name.as_str() {
            "root" => {
                if d.root.is_some() {
                    return Err(site.error("root", None, "given twice: in the URI's path and as root=; give it once"));
                }
                d.root = path()?;
            }
            "store" => {
                if value.is_empty() {
                    return Err(site.error("store", None, "expected an absolute path, found an empty value"));
                }
                d.store_dir = Some(At { value: normalize(Path::new(&value)), pos: None });
            }
            "real" => d.real = path()?,
            "state" => d.state = path()?,
            "log" => d.log = path()?,
            "upper-layer" => d.upper_layer = path()?,
            "remount-hook" => d.remount_hook = path()?,
            "read-only" => d.read_only = Some(boolean(&site, &name, &value)?),
            "check-mount" => d.check_mount = Some(boolean(&site, &name, &value)?),
            "lower-store" => {
                // Checked before parsing so the message is about this URI,
                // not about whatever the lower one gets wrong.
                if kind != StoreKind::LocalOverlay {
                    return Err(site.error(&name, None, site.only_for(&[StoreKind::LocalOverlay], kind)));
                }
                if depth + 1 > MAX_NESTING {
                    return Err(site.error(&name, None, format!("lower stores nest more than {MAX_NESTING} levels deep")));
                }
                let lower = parse_nested(&value, top, &format!("{prefix}lower-store."), depth + 1)?;
                nested_warnings.extend(lower.warnings.iter().cloned());
                d.lower_store = Some(At { value: lower, pos: None });
            }
            n if unused_settings(kind).contains(&n) => {
                warnings.push(format!("store URI '{top}': {prefix}{n}: accepted but not used by overlay-store"))
            }
            n => return Err(site.error(n, None, unknown_param(n, kind))),
        }
    }

    let mut spec = d.finish(&site, RealDefault::RootNixStore)?;
    spec.origin = SpecOrigin::Uri(text.to_string());
    warnings.extend(nested_warnings);
    spec.warnings = warnings;
    Ok(spec)
}

fn unused_settings(kind: StoreKind) -> Vec<&'static str> {
    let own = match kind {
        StoreKind::Local | StoreKind::LocalOverlay => UNUSED_LOCAL,
        StoreKind::Daemon => UNUSED_DAEMON,
    };
    UNUSED_STORE.iter().chain(own).copied().collect()
}

fn unknown_param(name: &str, kind: StoreKind) -> String {
    if TOML_ONLY.contains(&name) {
        let hint = match name {
            "store-dir" => " (the URI parameter is `store`)",
            "socket" => " (in a URI the socket is the path: unix:///path/to/socket)",
            "type" => " (in a URI the type is the scheme)",
            _ => "",
        };
        return format!("only a TOML store spec setting; Nix store URIs have no such parameter{hint}");
    }
    let other_kind = if UNUSED_DAEMON.contains(&name) {
        Some("`daemon`/`unix://`")
    } else if UNUSED_LOCAL.contains(&name) {
        Some("`local` and `local-overlay://`")
    } else {
        None
    };
    if let Some(k) = other_kind {
        return format!("only a setting of {k} stores, not of {}", kind_scheme(kind));
    }
    let mut known: Vec<&str> = USED.to_vec();
    known.extend(unused_settings(kind));
    format!("unknown parameter; {}", unknown_hint(name, &known))
}

fn kind_scheme(kind: StoreKind) -> &'static str {
    match kind {
        StoreKind::Local => "`local`",
        StoreKind::LocalOverlay => "`local-overlay://`",
        StoreKind::Daemon => "`daemon`/`unix://`",
    }
}

/// The kind of store `base` names and, if given there, its root (or socket)
/// as still-encoded text.
fn classify(base: &str) -> Result<(StoreKind, Option<&str>), String> {
    if base.starts_with('/') {
        return Ok((StoreKind::Local, Some(base)));
    }
    match base {
        "" => {
            return Err("expected a store URI (local, local-overlay://?…, daemon, unix://…) or an \
                        absolute path, found an empty string"
                .into())
        }
        "auto" => {
            return Err("'auto' picks a store by probing the system, which overlay-store does \
                        not do; name the store: local, daemon, an absolute path or local-overlay://?…"
                .into())
        }
        "local" => return Ok((StoreKind::Local, None)),
        "daemon" => return Ok((StoreKind::Daemon, None)),
        "local-overlay" | "unix" => return Err(format!("expected `{base}://`, found `{base}`")),
        _ => {}
    }
    if let Some((scheme, rest)) = base.split_once("://") {
        let location = (!rest.is_empty()).then_some(rest);
        return match scheme {
            "local" => Ok((StoreKind::Local, location)),
            "local-overlay" => Ok((StoreKind::LocalOverlay, location)),
            "unix" => Ok((StoreKind::Daemon, location)),
            s if UNSUPPORTED_SCHEMES.contains(&s) => Err(format!(
                "`{s}://` stores cannot be used: every layer needs a store directory on the \
                 local filesystem (local, local-overlay:// or daemon/unix://)"
            )),
            s => Err(format!("unknown store type `{s}://`; expected local, local-overlay://, daemon or unix://")),
        };
    }
    let hint = match did_you_mean(base, &["local", "daemon", "local-overlay", "unix"]) {
        Some(m @ ("local-overlay" | "unix")) => format!(" (did you mean `{m}://`?)"),
        Some(m) => format!(" (did you mean `{m}`?)"),
        None => String::new(),
    };
    Err(format!(
        "expected a store URI (local, local-overlay://?…, daemon, unix://…) or an absolute path, \
         found {base:?}{hint}"
    ))
}

/// The `name=value` pairs of a query, decoded. Empty pieces (`a=b&&c=d`, a
/// trailing `&`) are skipped, as Nix does.
fn query_pairs(site: &Site, query: &str) -> Result<Vec<(String, String)>, SpecError> {
    let mut pairs = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let Some((name, value)) = piece.split_once('=') else {
            let name = decode(piece).unwrap_or_else(|_| piece.to_string());
            return Err(site.error(&name, None, "expected name=value"));
        };
        let name = decode(name).map_err(|e| site.error(name, None, e))?;
        let value = decode(value).map_err(|e| site.error(&name, None, e))?;
        pairs.push((name, value));
    }
    Ok(pairs)
}

fn boolean(site: &Site, name: &str, value: &str) -> Result<At<bool>, SpecError> {
    let value = match value {
        "true" | "1" => true,
        "false" | "0" => false,
        other => return Err(site.error(name, None, format!("expected true or false (or 1 or 0), found {other:?}"))),
    };
    Ok(At { value, pos: None })
}

/// Paths in a URI are absolute: there is no file for them to be relative to.
fn absolute_path(site: &Site, name: &str, value: &str) -> Result<At<PathBuf>, SpecError> {
    let problem = if value.is_empty() {
        "expected an absolute path, found an empty value".to_string()
    } else if value.contains('\0') {
        "a path cannot contain a NUL character".to_string()
    } else if !value.starts_with('/') {
        format!("expected an absolute path, found {value:?}; paths in a store URI are never relative")
    } else {
        return Ok(At { value: normalize(Path::new(value)), pos: None });
    };
    Err(site.error(name, None, problem))
}

/// Percent-decoding; `+` stays `+`, as in Nix's store URIs.
pub(crate) fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                let h = std::str::from_utf8(h).ok()?;
                u8::from_str_radix(h, 16).ok()
            });
            match hex {
                Some(b) => out.push(b),
                None => {
                    return Err(format!(
                        "invalid percent-encoding in {s:?}: `%` must be followed by two hex digits (write `%` itself as %25)"
                    ))
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} percent-decodes to bytes that are not UTF-8"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters, and `/`
/// when `keep_slash` (paths stay readable; nested URIs are fully escaped).
pub(crate) fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn path_text(p: &Path) -> String {
    encode(&p.to_string_lossy(), true)
}

/// Renders `spec` as a URI. `nested` allows the short bare-path form for a
/// plain local store (how Nix's own docs and tests write `lower-store=`).
pub(crate) fn render(spec: &StoreSpec, nested: bool) -> String {
    let mut params: Vec<(&str, String)> = Vec::new();
    if let Some(root) = &spec.root {
        params.push(("root", path_text(root)));
    }
    if spec.store_dir != Path::new(DEFAULT_STORE_DIR) {
        params.push(("store", path_text(&spec.store_dir)));
    }
    // Settings equal to what Nix would derive are left out; everything else
    // is explicit, so Nix opens exactly these directories.
    let under_root = |rel: &str, default: &Path| match &spec.root {
        Some(r) => r.join(rel),
        None => default.to_path_buf(),
    };
    if spec.real != under_root("nix/store", &spec.store_dir) {
        params.push(("real", path_text(&spec.real)));
    }
    if spec.state != under_root("nix/var/nix", Path::new(DEFAULT_STATE_DIR)) {
        params.push(("state", path_text(&spec.state)));
    }
    if spec.log != under_root("nix/var/log/nix", Path::new(DEFAULT_LOG_DIR)) {
        params.push(("log", path_text(&spec.log)));
    }
    if spec.read_only {
        params.push(("read-only", "true".into()));
    }

    let base = match spec.kind {
        StoreKind::Local => {
            let root_text = spec.root.as_ref().map(|r| r.to_string_lossy().into_owned());
            if let (true, [("root", _)], Some(root)) = (nested, params.as_slice(), &root_text) {
                if encode(root, true) == *root && root.starts_with('/') {
                    return root.clone();
                }
            }
            "local".to_string()
        }
        StoreKind::LocalOverlay => {
            if let Some(lower) = &spec.lower_store {
                let lower_uri = render(lower, true);
                params.push(("lower-store", encode(&lower_uri, lower_uri.starts_with('/'))));
            }
            if let Some(upper) = &spec.upper_layer {
                params.push(("upper-layer", path_text(upper)));
            }
            if !spec.check_mount {
                params.push(("check-mount", "false".into()));
            }
            if let Some(hook) = &spec.remount_hook {
                params.push(("remount-hook", path_text(hook)));
            }
            "local-overlay://".to_string()
        }
        StoreKind::Daemon => match &spec.socket {
            Some(s) if s != Path::new(DEFAULT_DAEMON_SOCKET) => format!("unix://{}", path_text(s)),
            _ => "daemon".to_string(),
        },
    };
    if params.is_empty() {
        return base;
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding_round_trips() {
        for s in ["plain", "/a b/c", "local-overlay://?root=/x&y=1", "100%", "é/ü"] {
            assert_eq!(decode(&encode(s, false)).unwrap(), s);
            assert_eq!(decode(&encode(s, true)).unwrap(), s);
        }
        assert_eq!(encode("local-overlay://?", false), "local-overlay%3A%2F%2F%3F");
        assert_eq!(encode("/a b", true), "/a%20b");
        assert_eq!(decode("a+b%2b").unwrap(), "a+b+");
    }

    #[test]
    fn bad_percent_coding() {
        assert!(decode("%zz").is_err());
        assert!(decode("abc%4").is_err());
        assert!(decode("%ff").is_err()); // not UTF-8
    }
}
