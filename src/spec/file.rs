//! The TOML front end: reads spec files (and the files they include) into a
//! [`Draft`] per table, with the line and column of every key.
//!
//! The text is parsed twice: once into a `toml::Table` (values, and Nix-like
//! leniency is not wanted, so the parser's own errors are final), then walked
//! again through serde with `Spanned` keys to learn where each key is. The
//! first parse guides the second, so value types we do not need positions for
//! (date-times in particular) are skipped, not re-interpreted.

use std::path::{Path, PathBuf};

use toml::Value;

use super::draft::{At, Draft, Pos, RealDefault, Site};
use super::error::{Place, SpecError, SpecErrorKind};
use super::toml_tree::{describe_node, walk, Doc, Entry, Node};
use super::util::{absolute, normalize, unknown_hint};
use super::{uri, CacheSpec, GcSpec, MountSpec, PolicyLimits, ServeSpec, SpecOrigin, StoreKind, StoreSpec, WatchSpec, MAX_NESTING};

/// Every key of a store table, in the order the docs list them.
const STORE_KEYS: &[&str] = &[
    "type",
    "store-dir",
    "root",
    "real",
    "state",
    "log",
    "upper-layer",
    "check-mount",
    "read-only",
    "immutable",
    "remount-hook",
    "policy",
    "socket",
    "timeout-secs",
    "lower-store",
    "mount",
    "gc",
    "watch",
    "serve",
    "binary-caches",
    "policy-limits",
];
const MOUNT_KEYS: &[&str] = &["workdir", "options"];
const GC_KEYS: &[&str] = &["keep-derivations", "keep-outputs"];
const WATCH_KEYS: &[&str] = &["debounce-ms", "gc-interval-secs", "optimise-interval-secs"];
const SERVE_KEYS: &[&str] = &["socket", "socket-mode", "trusted-users", "allowed-users", "max-connections", "build-users-group", "builder"];
const CACHE_KEYS: &[&str] = &[
    "substituters",
    "trusted-public-keys",
    "require-sigs",
    "secret-key-files",
    "narinfo-cache-positive-ttl",
    "narinfo-cache-negative-ttl",
    "http-connections",
    "download-attempts",
    "stalled-download-timeout",
];
const POLICY_LIMITS_KEYS: &[&str] = &["instructions", "memory-mib", "wall-clock-secs"];

/// Whether a `--store` argument or `lower-store` string names a spec file
/// rather than a store.
pub(crate) fn is_spec_file_name(s: &str) -> bool {
    s.ends_with(".toml") && !s.contains("://") && !s.contains('?')
}

pub(crate) fn from_file(path: &Path) -> Result<StoreSpec, SpecError> {
    let file = absolute(path);
    tracing::debug!(file = %file.display(), "reading store spec");
    let text = read(&file, None)?;
    let mut stack = vec![Frame::new(&file)];
    parse_doc(&text, &file, &mut stack, Level::Top, 0)
}

pub(crate) fn from_str(text: &str, file: &Path) -> Result<StoreSpec, SpecError> {
    let file = absolute(file);
    let mut stack = vec![Frame::new(&file)];
    parse_doc(text, &file, &mut stack, Level::Top, 0)
}

fn read(file: &Path, included_from: Option<Place>) -> Result<String, SpecError> {
    std::fs::read_to_string(file).map_err(|error| SpecErrorKind::Io { file: file.to_path_buf(), error, included_from }.into())
}

/// A file being read, for include-cycle detection. `id` is canonical when the
/// file exists, so a cycle through a symlink is still found.
struct Frame {
    id: PathBuf,
    shown: PathBuf,
}

impl Frame {
    fn new(file: &Path) -> Frame {
        Frame { id: std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf()), shown: file.to_path_buf() }
    }
}

/// Which rules a table follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// The spec of the store overlay-store runs on.
    Top,
    /// An inline `[lower-store]` table.
    Inline,
    /// The top of a file included by `lower-store = "x.toml"`.
    Included,
}

fn parse_doc(text: &str, file: &Path, stack: &mut Vec<Frame>, level: Level, depth: usize) -> Result<StoreSpec, SpecError> {
    let doc = Doc::new(file, text);
    let table: toml::Table = toml::from_str(text).map_err(|e| doc.syntax(e.message(), e.span()))?;
    let entries = walk(text, table).map_err(|e| doc.syntax(e.message(), e.span()))?;
    let mut reader = Reader { doc: &doc, stack, files: vec![file.to_path_buf()], warnings: Vec::new() };
    let mut spec = reader.store(&entries, "", (1, 1), level, depth)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for f in reader.files {
        if !files.contains(&f) {
            files.push(f);
        }
    }
    spec.files = files;
    spec.warnings = reader.warnings;
    Ok(spec)
}

/// Builds specs from the tables of one file.
struct Reader<'r> {
    doc: &'r Doc<'r>,
    stack: &'r mut Vec<Frame>,
    /// Files read so far for this document's spec (this file first).
    files: Vec<PathBuf>,
    /// Warnings of this document, nested ones included.
    warnings: Vec<String>,
}

impl Reader<'_> {
    fn pos(&self, e: &Entry) -> Pos {
        e.span.as_ref().map(|s| self.doc.line_col(s.start))
    }

    fn place(&self, pos: Pos, anchor: (usize, usize), key: String) -> Place {
        let (line, column) = pos.unwrap_or(anchor);
        Place { file: self.doc.file.to_path_buf(), line, column, key }
    }

    /// One store table: `prefix` is its dotted path, `anchor` where errors
    /// about the table as a whole point.
    fn store(
        &mut self,
        entries: &[Entry],
        prefix: &str,
        anchor: (usize, usize),
        level: Level,
        depth: usize,
    ) -> Result<StoreSpec, SpecError> {
        let file = self.doc.file;
        let site = Site::File { file, prefix, anchor };
        let files_mark = self.files.len();
        let warnings_mark = self.warnings.len();
        let mut d = Draft { missing_at: Some(anchor), ..Draft::default() };

        for e in entries {
            let pos = self.pos(e);
            let key = e.key.as_str();
            match key {
                "type" => d.kind = Some(At { value: kind(&site, e, pos)?, pos }),
                "store-dir" => d.store_dir = Some(self.path(&site, key, e, pos, false)?),
                "root" => d.root = Some(self.path(&site, key, e, pos, true)?),
                "real" => d.real = Some(self.path(&site, key, e, pos, true)?),
                "state" => d.state = Some(self.path(&site, key, e, pos, true)?),
                "log" => d.log = Some(self.path(&site, key, e, pos, true)?),
                "upper-layer" => {
                    d.upper_layer = Some(self.path(&site, key, e, pos, true)?);
                    d.missing_at = pos.or(d.missing_at);
                }
                "remount-hook" => d.remount_hook = Some(self.path(&site, key, e, pos, true)?),
                "socket" => d.socket = Some(self.path(&site, key, e, pos, true)?),
                "timeout-secs" => d.timeout_secs = Some(At { value: integer(&site, key, &e.value, pos, 1)?, pos }),
                "check-mount" => d.check_mount = Some(boolean(&site, key, &e.value, pos)?),
                "read-only" => d.read_only = Some(boolean(&site, key, &e.value, pos)?),
                "immutable" => d.immutable = Some(boolean(&site, key, &e.value, pos)?),
                "lower-store" => {
                    if depth + 1 > MAX_NESTING {
                        return Err(site.error(key, pos, format!("lower stores nest more than {MAX_NESTING} levels deep")));
                    }
                    let value = self.lower(&site, prefix, e, pos.unwrap_or(anchor), depth)?;
                    d.lower_store = Some(At { value, pos });
                    d.missing_at = pos.or(d.missing_at);
                }
                "policy" | "mount" | "gc" | "watch" | "serve" | "binary-caches" | "policy-limits" => {
                    if level == Level::Inline {
                        return Err(site.error(
                            key,
                            pos,
                            "only allowed in the top-level store spec; overlay-store never \
                             mounts, collects, watches or runs a policy on a lower store",
                        ));
                    }
                    let mut top = Draft::default();
                    match key {
                        "policy" => top.policy = Some(self.path(&site, key, e, pos, true)?),
                        "mount" => top.mount = Some(At { value: self.mount(&site, e, pos)?, pos }),
                        "gc" => top.gc = Some(gc(&site, e, pos, self)?),
                        "watch" => top.watch = Some(watch(&site, e, pos, self)?),
                        "serve" => top.serve = Some(self.serve(&site, e, pos)?),
                        "binary-caches" => top.caches = Some(self.caches(&site, e, pos)?),
                        _ => top.policy_limits = Some(policy_limits(&site, e, pos, self)?),
                    }
                    if level == Level::Included {
                        let (line, column) = pos.unwrap_or(anchor);
                        self.warnings.push(format!(
                            "{}:{line}:{column}: {prefix}{key}: ignored; this file is included \
                             as a lower store, and only the top-level spec's `{key}` applies",
                            file.display()
                        ));
                    } else {
                        d.policy = top.policy.or(d.policy);
                        d.mount = top.mount.or(d.mount);
                        d.gc = top.gc.or(d.gc);
                        d.watch = top.watch.or(d.watch);
                        d.serve = top.serve.or(d.serve);
                        d.caches = top.caches.or(d.caches);
                        d.policy_limits = top.policy_limits.or(d.policy_limits);
                    }
                }
                _ => return Err(site.error(key, pos, format!("unknown key; {}", unknown_hint(key, STORE_KEYS)))),
            }
        }

        let mut spec = d.finish(&site, RealDefault::RootPlusStoreDir)?;
        spec.origin = SpecOrigin::File(file.to_path_buf());
        spec.files = std::iter::once(file.to_path_buf()).chain(self.files[files_mark..].iter().cloned()).collect();
        spec.warnings = self.warnings[warnings_mark..].to_vec();
        Ok(spec)
    }

    /// A path value. Relative paths are resolved against the file's
    /// directory unless `resolve` is false (`store-dir`, which is logical).
    fn path(&self, site: &Site, key: &str, e: &Entry, pos: Pos, resolve: bool) -> Result<At<PathBuf>, SpecError> {
        let s = match &e.value {
            Node::Scalar(Value::String(s)) => s,
            other => return Err(site.error(key, pos, format!("expected a path (a string), found {}", describe_node(other)))),
        };
        check_path_text(site, key, s, pos)?;
        let value = if resolve { normalize(&self.doc.dir.join(s)) } else { normalize(Path::new(s)) };
        Ok(At { value, pos })
    }

    /// The `[binary-caches]` table.
    fn caches(&self, site: &Site, e: &Entry, pos: Pos) -> Result<CacheSpec, SpecError> {
        let mut caches = CacheSpec::default();
        for sub in table(site, "binary-caches", e, pos)? {
            let spos = self.pos(sub);
            let key = format!("binary-caches.{}", sub.key);
            match sub.key.as_str() {
                "substituters" => {
                    caches.substituters = strings(site, &key, &sub.value, spos)?;
                    for url in &caches.substituters {
                        if !(url.starts_with("file://")
                            || url.starts_with("http://")
                            || url.starts_with("https://")
                            || url.starts_with('/'))
                        {
                            return Err(site.error(
                                &key,
                                spos,
                                format!("'{url}' is not a binary cache URL (file://, http://, https:// or an absolute path)"),
                            ));
                        }
                    }
                }
                "trusted-public-keys" => {
                    caches.trusted_public_keys = strings(site, &key, &sub.value, spos)?;
                    for k in &caches.trusted_public_keys {
                        crate::format::signing::PublicKey::parse(k).map_err(|err| site.error(&key, spos, err.to_string()))?;
                    }
                }
                "require-sigs" => caches.require_sigs = boolean(site, &key, &sub.value, spos)?.value,
                "secret-key-files" => {
                    let files = strings(site, &key, &sub.value, spos)?;
                    caches.secret_key_files.clear();
                    for f in files {
                        check_path_text(site, &key, &f, spos)?;
                        caches.secret_key_files.push(normalize(&self.doc.dir.join(f)));
                    }
                }
                "narinfo-cache-positive-ttl" => caches.narinfo_cache_positive_ttl = integer(site, &key, &sub.value, spos, 0)?,
                "narinfo-cache-negative-ttl" => caches.narinfo_cache_negative_ttl = integer(site, &key, &sub.value, spos, 0)?,
                "http-connections" => caches.http_connections = integer(site, &key, &sub.value, spos, 1)?,
                "download-attempts" => caches.download_attempts = integer(site, &key, &sub.value, spos, 1)?,
                "stalled-download-timeout" => caches.stalled_download_timeout = integer(site, &key, &sub.value, spos, 1)?,
                other => return Err(unknown(site, "binary-caches", other, spos, CACHE_KEYS)),
            }
        }
        Ok(caches)
    }

    /// The `[serve]` table.
    fn serve(&self, site: &Site, e: &Entry, pos: Pos) -> Result<ServeSpec, SpecError> {
        let mut serve = ServeSpec::default();
        for sub in table(site, "serve", e, pos)? {
            let spos = self.pos(sub);
            let key = format!("serve.{}", sub.key);
            match sub.key.as_str() {
                "socket" => serve.socket = Some(self.path(site, &key, sub, spos, true)?.value),
                "socket-mode" => {
                    let mode = integer(site, &key, &sub.value, spos, 0)?;
                    if mode > 0o777 {
                        return Err(site.error(&key, spos, format!("expected permission bits such as 0o660, found {mode:#o}")));
                    }
                    serve.socket_mode = mode as u32;
                }
                "trusted-users" => serve.trusted_users = strings(site, &key, &sub.value, spos)?,
                "allowed-users" => serve.allowed_users = strings(site, &key, &sub.value, spos)?,
                "max-connections" => serve.max_connections = integer(site, &key, &sub.value, spos, 1)?,
                "build-users-group" => {
                    serve.build_users_group = match &sub.value {
                        Node::Scalar(Value::String(s)) if s.is_empty() => None,
                        Node::Scalar(Value::String(s)) => Some(s.clone()),
                        other => {
                            return Err(site.error(&key, spos, format!("expected a group name (a string), found {}", describe_node(other))))
                        }
                    }
                }
                "builder" => {
                    serve.builder = strings(site, &key, &sub.value, spos)?;
                    if serve.builder.is_empty() {
                        return Err(site.error(&key, spos, "expected the builder command, such as [\"nix-store\"], found an empty array"));
                    }
                }
                other => return Err(unknown(site, "serve", other, spos, SERVE_KEYS)),
            }
        }
        Ok(serve)
    }

    /// `lower-store`: a table, or a string naming a file, a root or a URI.
    fn lower(&mut self, site: &Site, prefix: &str, e: &Entry, at: (usize, usize), depth: usize) -> Result<StoreSpec, SpecError> {
        let pos = Some(at);
        let key = format!("{prefix}lower-store");
        let s = match &e.value {
            Node::Table(entries) => return self.store(entries, &format!("{key}."), at, Level::Inline, depth + 1),
            Node::Scalar(Value::String(s)) => s,
            other => {
                return Err(site.error(
                    "lower-store",
                    pos,
                    format!(
                        "expected a table (a nested store spec) or a string (a store URI, \
                         an absolute path or a .toml file), found {}",
                        describe_node(other)
                    ),
                ))
            }
        };

        if is_spec_file_name(s) {
            return self.include(s, self.place(pos, at, key), depth);
        }

        if s.starts_with("./") || s.starts_with("../") {
            // A store root relative to this file, as any other path here.
            check_path_text(site, "lower-store", s, pos)?;
            let root = normalize(&self.doc.dir.join(s));
            let draft = Draft { kind: Some(At { value: StoreKind::Local, pos }), root: Some(At { value: root, pos }), ..Draft::default() };
            let nested = Site::File { file: self.doc.file, prefix: &format!("{key}."), anchor: at };
            let mut spec = draft.finish(&nested, RealDefault::RootPlusStoreDir)?;
            spec.origin = SpecOrigin::File(self.doc.file.to_path_buf());
            spec.files = vec![self.doc.file.to_path_buf()];
            return Ok(spec);
        }

        match uri::parse(s) {
            Ok(spec) => {
                let (line, column) = at;
                for w in &spec.warnings {
                    self.warnings.push(format!("{}:{line}:{column}: {key}: {w}", self.doc.file.display()));
                }
                Ok(spec)
            }
            Err(err) => match err.kind() {
                SpecErrorKind::Uri { .. } => {
                    let hint = if !s.contains(':') && !s.starts_with('/') && !s.contains('?') {
                        format!("; a store root relative to this file is written \"./{s}\"")
                    } else {
                        String::new()
                    };
                    Err(site.error("lower-store", pos, format!("{err}{hint}")))
                }
                _ => Err(err),
            },
        }
    }

    /// `lower-store = "x.toml"`: reads and parses another spec file.
    fn include(&mut self, name: &str, at: Place, depth: usize) -> Result<StoreSpec, SpecError> {
        let path = normalize(&self.doc.dir.join(name));
        let frame = Frame::new(&path);
        if let Some(i) = self.stack.iter().position(|f| f.id == frame.id) {
            let chain = self.stack[i..].iter().map(|f| f.shown.clone()).chain(std::iter::once(path)).collect();
            return Err(SpecErrorKind::IncludeCycle { at, chain }.into());
        }
        tracing::debug!(file = %path.display(), "reading included store spec");
        let text = read(&path, Some(at))?;
        self.stack.push(frame);
        let parsed = parse_doc(&text, &path, self.stack, Level::Included, depth + 1);
        self.stack.pop();
        let spec = parsed?;
        self.files.extend(spec.files.iter().cloned());
        self.warnings.extend(spec.warnings.iter().cloned());
        Ok(spec)
    }

    fn mount(&self, site: &Site, e: &Entry, pos: Pos) -> Result<MountSpec, SpecError> {
        let entries = table(site, "mount", e, pos)?;
        let mut workdir = None;
        let mut options = Vec::new();
        for sub in entries {
            let spos = self.pos(sub);
            match sub.key.as_str() {
                "workdir" => workdir = Some(self.path(site, "mount.workdir", sub, spos, true)?.value),
                "options" => options = mount_options(site, sub, spos)?,
                other => return Err(unknown(site, "mount", other, spos, MOUNT_KEYS)),
            }
        }
        let workdir = workdir.ok_or_else(|| {
            site.error("mount.workdir", pos, "missing; [mount] needs workdir = \"<empty directory on the upper layer's filesystem>\"")
        })?;
        Ok(MountSpec { workdir, options })
    }
}

fn unknown(site: &Site, table: &str, key: &str, pos: Pos, known: &[&str]) -> SpecError {
    site.error(&format!("{table}.{key}"), pos, format!("unknown key; {}", unknown_hint(key, known)))
}

/// Rejects path strings that cannot mean what the user intended.
fn check_path_text(site: &Site, key: &str, s: &str, pos: Pos) -> Result<(), SpecError> {
    let problem = if s.is_empty() {
        "expected a path, found an empty string"
    } else if s == "~" || s.starts_with("~/") {
        "`~` is not expanded here; write the path out"
    } else if s.contains('\0') {
        "a path cannot contain a NUL character"
    } else {
        return Ok(());
    };
    Err(site.error(key, pos, problem))
}

fn kind(site: &Site, e: &Entry, pos: Pos) -> Result<StoreKind, SpecError> {
    let valid = r#"one of "local", "local-overlay", "daemon""#;
    let s = match &e.value {
        Node::Scalar(Value::String(s)) => s,
        other => return Err(site.error("type", pos, format!("expected {valid}, found {}", describe_node(other)))),
    };
    match s.as_str() {
        "local" => Ok(StoreKind::Local),
        "local-overlay" => Ok(StoreKind::LocalOverlay),
        "daemon" => Ok(StoreKind::Daemon),
        other => {
            let names: Vec<&str> = StoreKind::ALL.iter().map(|k| k.as_str()).collect();
            let hint = match super::util::did_you_mean(other, &names) {
                Some(m) => format!(" (did you mean \"{m}\"?)"),
                None => String::new(),
            };
            Err(site.error("type", pos, format!("expected {valid}, found {other:?}{hint}")))
        }
    }
}

fn boolean(site: &Site, key: &str, v: &Node, pos: Pos) -> Result<At<bool>, SpecError> {
    match v {
        Node::Scalar(Value::Boolean(b)) => Ok(At { value: *b, pos }),
        other => Err(site.error(key, pos, format!("expected true or false, found {}", describe_node(other)))),
    }
}

fn integer(site: &Site, key: &str, v: &Node, pos: Pos, min: u64) -> Result<u64, SpecError> {
    let expected = if min == 0 { "a non-negative integer".to_string() } else { format!("an integer of at least {min}") };
    match v {
        Node::Scalar(Value::Integer(i)) if u64::try_from(*i).is_ok_and(|u| u >= min) => Ok(*i as u64),
        other => Err(site.error(key, pos, format!("expected {expected}, found {}", describe_node(other)))),
    }
}

fn strings(site: &Site, key: &str, v: &Node, pos: Pos) -> Result<Vec<String>, SpecError> {
    let Node::Array(items) = v else {
        return Err(site.error(key, pos, format!("expected an array of strings, found {}", describe_node(v))));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Node::Scalar(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            other => Err(site.error(key, pos, format!("expected non-empty strings, but element {} is {}", i + 1, describe_node(other)))),
        })
        .collect()
}

fn table<'e>(site: &Site, key: &str, e: &'e Entry, pos: Pos) -> Result<&'e [Entry], SpecError> {
    match &e.value {
        Node::Table(entries) => Ok(entries),
        other => Err(site.error(key, pos, format!("expected a table, found {}", describe_node(other)))),
    }
}

/// OverlayFS options are joined with commas and the layer options are ours
/// to set, so both are caught here rather than as a baffling mount failure.
fn mount_options(site: &Site, e: &Entry, pos: Pos) -> Result<Vec<String>, SpecError> {
    let key = "mount.options";
    let items = match &e.value {
        Node::Array(items) => items,
        other => return Err(site.error(key, pos, format!("expected an array of strings, found {}", describe_node(other)))),
    };
    let mut options = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let s = match item {
            Node::Scalar(Value::String(s)) => s,
            other => {
                return Err(site.error(
                    key,
                    pos,
                    format!("expected an array of strings, but element {} is {}", i + 1, describe_node(other)),
                ))
            }
        };
        if s.is_empty() || s.contains(',') {
            return Err(site.error(key, pos, format!("expected one non-empty option per string (no commas), found {s:?}")));
        }
        let name = s.split('=').next().unwrap_or(s);
        if matches!(name, "lowerdir" | "upperdir" | "workdir") {
            return Err(site.error(
                key,
                pos,
                format!(
                    "{name:?} is set by overlay-store from the lower store's `real`, \
                     `upper-layer` and `mount.workdir`; remove it here"
                ),
            ));
        }
        options.push(s.clone());
    }
    Ok(options)
}

fn gc(site: &Site, e: &Entry, pos: Pos, r: &Reader) -> Result<GcSpec, SpecError> {
    let mut gc = GcSpec::default();
    for sub in table(site, "gc", e, pos)? {
        let spos = r.pos(sub);
        let key = format!("gc.{}", sub.key);
        match sub.key.as_str() {
            "keep-derivations" => gc.keep_derivations = boolean(site, &key, &sub.value, spos)?.value,
            "keep-outputs" => gc.keep_outputs = boolean(site, &key, &sub.value, spos)?.value,
            other => return Err(unknown(site, "gc", other, spos, GC_KEYS)),
        }
    }
    Ok(gc)
}

fn watch(site: &Site, e: &Entry, pos: Pos, r: &Reader) -> Result<WatchSpec, SpecError> {
    let mut watch = WatchSpec::default();
    for sub in table(site, "watch", e, pos)? {
        let spos = r.pos(sub);
        match sub.key.as_str() {
            "debounce-ms" => watch.debounce_ms = integer(site, "watch.debounce-ms", &sub.value, spos, 0)?,
            "gc-interval-secs" => watch.gc_interval_secs = Some(integer(site, "watch.gc-interval-secs", &sub.value, spos, 1)?),
            "optimise-interval-secs" => {
                watch.optimise_interval_secs = Some(integer(site, "watch.optimise-interval-secs", &sub.value, spos, 1)?)
            }
            other => return Err(unknown(site, "watch", other, spos, WATCH_KEYS)),
        }
    }
    Ok(watch)
}

fn policy_limits(site: &Site, e: &Entry, pos: Pos, r: &Reader) -> Result<PolicyLimits, SpecError> {
    let mut limits = PolicyLimits::default();
    for sub in table(site, "policy-limits", e, pos)? {
        let spos = r.pos(sub);
        let key = format!("policy-limits.{}", sub.key);
        match sub.key.as_str() {
            "instructions" => limits.instructions = integer(site, &key, &sub.value, spos, 1)?,
            "memory-mib" => limits.memory_mib = integer(site, &key, &sub.value, spos, 1)?,
            "wall-clock-secs" => limits.wall_clock_secs = integer(site, &key, &sub.value, spos, 1)?,
            other => return Err(unknown(site, "policy-limits", other, spos, POLICY_LIMITS_KEYS)),
        }
    }
    Ok(limits)
}
