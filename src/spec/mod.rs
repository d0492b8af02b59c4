//! The store spec: which store to open and how its layers fit together, read
//! from a TOML file or a Nix store URI into one validated [`StoreSpec`].
//!
//! Nothing here writes anywhere: a spec is checked completely before any
//! directory, database or mount is touched, and every problem is reported as
//! `FILE:LINE:COL: <key>: <what was expected>` (TOML) or
//! `store URI '<uri>': <param>: <what was expected>` (URIs).
//!
//! # TOML
//!
//! A spec is a table; `lower-store` is itself a spec, so layers nest:
//!
//! ```toml
//! type = "local-overlay"            # "local" | "local-overlay" | "daemon"
//! store-dir = "/nix/store"          # logical store dir (always absolute)
//! root = "/mnt/merged"              # real = root+store-dir, state = root/nix/var/nix,
//!                                   # log = root/nix/var/log/nix, unless given
//! upper-layer = "/mnt/upper"        # local-overlay only, required
//! check-mount = true
//! read-only = false
//! remount-hook = "/usr/local/bin/remount"
//! policy = "lua/default.lua"        # top level only
//!
//! [lower-store]                     # or: lower-store = "<URI | /abs/root | file.toml>"
//! type = "local"
//! root = "/mnt/lower"
//! immutable = true                  # SQLite immutable mode for its database
//!
//! [mount]                           # top level, local-overlay only
//! workdir = "/mnt/work"
//! options = []
//!
//! [gc]                              # top level only
//! keep-derivations = true
//! keep-outputs = false
//!
//! [watch]                           # top level only
//! debounce-ms = 200
//!
//! [serve]                           # top level only: `overlay-store serve`
//! socket = "/run/overlay-store/socket"  # default <state>/daemon-socket/socket
//! socket-mode = 0o666
//! trusted-users = ["root"]
//! allowed-users = ["*"]
//! max-connections = 64
//! builder = ["nix-store"]
//!
//! [binary-caches]                   # top level only: `copy`, `sign`, `serve --http`
//! substituters = ["https://cache.example.org"]   # Nix's names and meanings
//! trusted-public-keys = ["cache.example.org-1:…"]
//! require-sigs = true
//! secret-key-files = ["/etc/overlay-store/cache.sk"]
//! narinfo-cache-positive-ttl = 2592000
//! narinfo-cache-negative-ttl = 3600
//! http-connections = 25
//! download-attempts = 5
//! stalled-download-timeout = 300
//!
//! [policy-limits]                   # top level only
//! instructions = 100000000
//! memory-mib = 64
//! wall-clock-secs = 10
//! ```
//!
//! * `type` may be left out: a table with `upper-layer` or `lower-store` is a
//!   `local-overlay` store, else one with `socket` is a `daemon` store, else it
//!   is `local`. The same rule applies at every level, so a short
//!   `[lower-store] root = "…"` is a local store.
//! * Relative paths are relative to the directory of the file they are written
//!   in, so a shipped config works from a checkout. `store-dir` is logical and
//!   must be absolute. `~` is not expanded.
//! * `lower-store` as a string is a `.toml` file to include (relative to this
//!   file; it is parsed like an inline table and recorded in
//!   [`StoreSpec::files`]), a path (`/abs` or `./rel`: a local store with that
//!   root), or a store URI.
//! * `policy`, `[mount]`, `[gc]`, `[watch]`, `[serve]`, `[binary-caches]` and `[policy-limits]` describe what
//!   overlay-store does to the store it runs on, and it never mounts, collects,
//!   watches or runs policies on a lower store. In an inline lower store table
//!   they are errors; in an included `.toml` file (which may be another
//!   deployment's own config) they are checked, ignored and warned about.
//!
//! # URIs
//!
//! `local`, `local?root=/x&store=…&real=…&state=…&log=…&read-only=true`,
//! `/abs/root`, `local-overlay://?lower-store=…&upper-layer=…&check-mount=false
//! &remount-hook=…`, `daemon`, `unix://`, `unix:///abs/socket?real=/nix/store`.
//! Values are percent-decoded; `lower-store` is itself a URI (a nested overlay
//! must be percent-encoded, `local-overlay%3A%2F%2F%3F…`, as its own `&`s would
//! otherwise split the outer query). Nix store settings overlay-store does not
//! use are accepted and reported in [`StoreSpec::warnings`]; unknown ones are
//! errors. As in Nix, with a URI `real` defaults to `root/nix/store`.

mod draft;
mod error;
mod file;
mod toml_tree;
mod uri;
mod util;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use error::{Place, SpecError, SpecErrorKind};
pub(crate) use util::did_you_mean;

/// Nix's default logical store directory.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
/// Nix's compiled-in state directory (`NIX_STATE_DIR` is not consulted: a spec
/// means the same thing in every environment).
pub const DEFAULT_STATE_DIR: &str = "/nix/var/nix";
/// Nix's compiled-in log directory.
pub const DEFAULT_LOG_DIR: &str = "/nix/var/log/nix";
/// Nix's default daemon socket (`NIX_DAEMON_SOCKET_PATH` is left to callers).
pub const DEFAULT_DAEMON_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";
/// Default `timeout-secs` of a daemon store.
pub const DEFAULT_DAEMON_TIMEOUT_SECS: u64 = 60;
/// Default `[watch] debounce-ms`.
pub const DEFAULT_DEBOUNCE_MS: u64 = 200;
/// Default `[policy-limits] instructions`: ends a runaway hook in about a second.
pub const DEFAULT_POLICY_INSTRUCTIONS: u64 = 100_000_000;
/// Default `[policy-limits] wall-clock-secs`.
pub const DEFAULT_POLICY_WALL_CLOCK_SECS: u64 = 10;
/// Default `[policy-limits] memory-mib`.
pub const DEFAULT_POLICY_MEMORY_MIB: u64 = 64;
/// How deep lower stores may nest; far beyond any real setup, it only stops
/// runaway recursion.
pub const MAX_NESTING: usize = 16;

/// What kind of store a spec describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// A Nix local store (SQLite database + store directory).
    Local,
    /// A local store whose store directory is an OverlayFS mount over a lower store.
    LocalOverlay,
    /// A store reached through the Nix daemon socket (only ever a lower store).
    Daemon,
}

impl StoreKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [StoreKind; 3] = [StoreKind::Local, StoreKind::LocalOverlay, StoreKind::Daemon];

    /// The TOML `type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::LocalOverlay => "local-overlay",
            StoreKind::Daemon => "daemon",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[mount]` table: present when overlay-store manages the mount itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// OverlayFS `workdir`; on the same filesystem as `upper-layer`.
    pub workdir: PathBuf,
    /// Extra OverlayFS data options, one per string.
    pub options: Vec<String>,
}

/// The `[gc]` table; the defaults are Nix's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSpec {
    pub keep_derivations: bool,
    pub keep_outputs: bool,
}

impl Default for GcSpec {
    fn default() -> Self {
        GcSpec { keep_derivations: true, keep_outputs: false }
    }
}

/// The `[watch]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSpec {
    /// Quiet time after a file event before reloading, so an editor's
    /// burst of writes is one reload.
    pub debounce_ms: u64,
    /// Run a GC this often under `watch` (none by default).
    pub gc_interval_secs: Option<u64>,
    /// Run `optimise` this often under `watch` (none by default).
    pub optimise_interval_secs: Option<u64>,
}

impl Default for WatchSpec {
    fn default() -> Self {
        WatchSpec { debounce_ms: DEFAULT_DEBOUNCE_MS, gc_interval_secs: None, optimise_interval_secs: None }
    }
}

/// The `[serve]` table: how `overlay-store serve` listens and whom it trusts, with
/// `nix-daemon`'s meanings (`trusted-users`, `allowed-users`: user names, `@group`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSpec {
    /// The socket to listen on; `None` means `<state>/daemon-socket/socket`.
    pub socket: Option<PathBuf>,
    pub socket_mode: u32,
    pub trusted_users: Vec<String>,
    pub allowed_users: Vec<String>,
    pub max_connections: u64,
    /// Nix's build users' group: processes running as one of its members are builds,
    /// and are refused, as by nix-daemon. `None`: no such group.
    pub build_users_group: Option<String>,
    /// The command (and leading arguments) that builds derivations for clients: stock
    /// Nix's `nix-store`, run against the overlay as a local store.
    pub builder: Vec<String>,
}

impl Default for ServeSpec {
    fn default() -> Self {
        ServeSpec {
            socket: None,
            socket_mode: 0o666,
            trusted_users: vec!["root".into()],
            allowed_users: vec!["*".into()],
            max_connections: 64,
            build_users_group: None,
            builder: vec!["nix-store".into()],
        }
    }
}

/// The `[binary-caches]` table: the nix.conf settings of substitution and signing, with
/// Nix's names, defaults and meanings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    /// Cache URLs, tried in order (`file://`, `http://`, `https://`, an absolute path).
    pub substituters: Vec<String>,
    /// `<name>:<base64>` public keys whose signatures make a narinfo trusted.
    pub trusted_public_keys: Vec<String>,
    pub require_sigs: bool,
    /// Files holding secret keys that sign what we publish or `sign`.
    pub secret_key_files: Vec<PathBuf>,
    pub narinfo_cache_positive_ttl: u64,
    pub narinfo_cache_negative_ttl: u64,
    /// Parallel downloads at most.
    pub http_connections: u64,
    pub download_attempts: u64,
    /// Seconds without a byte before a download counts as failed.
    pub stalled_download_timeout: u64,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            substituters: Vec::new(),
            trusted_public_keys: Vec::new(),
            require_sigs: true,
            secret_key_files: Vec::new(),
            narinfo_cache_positive_ttl: 30 * 24 * 3600,
            narinfo_cache_negative_ttl: 3600,
            http_connections: 25,
            download_attempts: 5,
            stalled_download_timeout: 300,
        }
    }
}

/// The `[policy-limits]` table: budgets for each Lua hook call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    pub instructions: u64,
    pub memory_mib: u64,
    /// Wall-clock seconds one hook call may take (instructions miss time in C functions).
    pub wall_clock_secs: u64,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            instructions: DEFAULT_POLICY_INSTRUCTIONS,
            memory_mib: DEFAULT_POLICY_MEMORY_MIB,
            wall_clock_secs: DEFAULT_POLICY_WALL_CLOCK_SECS,
        }
    }
}

/// Where a spec was read from, for messages and for `watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecOrigin {
    /// A TOML file (for an inline `[lower-store]` table: the file it is in).
    File(PathBuf),
    /// A store URI, as written (for a nested `lower-store=`: decoded).
    Uri(String),
}

/// A validated store spec with every default resolved.
///
/// Paths are absolute and lexically normalised. Settings only one kind has
/// are `None` for the others, so code can match on them without re-checking
/// the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub kind: StoreKind,
    /// The logical store directory store paths are named in.
    pub store_dir: PathBuf,
    pub root: Option<PathBuf>,
    /// The real store directory: explicit `real`, else under `root`, else `store_dir`.
    pub real: PathBuf,
    /// The state directory (database, GC roots): explicit `state`, else
    /// `root/nix/var/nix`, else `/nix/var/nix`.
    pub state: PathBuf,
    /// The log directory: explicit `log`, else `root/nix/var/log/nix`, else `/nix/var/log/nix`.
    pub log: PathBuf,
    /// OverlayFS upperdir; always `Some` for `LocalOverlay`, `None` otherwise.
    pub upper_layer: Option<PathBuf>,
    pub check_mount: bool,
    pub read_only: bool,
    /// A promise that the database never changes (SQLite `immutable`).
    pub immutable: bool,
    pub remount_hook: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    /// Daemon socket; always `Some` for `Daemon`, `None` otherwise.
    pub socket: Option<PathBuf>,
    /// Daemon only: how long to wait for any reply before giving up (`timeout-secs`).
    pub timeout_secs: u64,
    /// Always `Some` for `LocalOverlay`, `None` otherwise.
    pub lower_store: Option<Box<StoreSpec>>,
    pub mount: Option<MountSpec>,
    pub gc: GcSpec,
    pub watch: WatchSpec,
    pub serve: ServeSpec,
    pub caches: CacheSpec,
    pub policy_limits: PolicyLimits,
    pub origin: SpecOrigin,
    /// Every file read to build this spec (the main one first, then included
    /// ones), so a watcher knows what to watch.
    pub files: Vec<PathBuf>,
    /// Accepted-but-unused settings and ignored tables, as full messages.
    /// Nested specs' warnings are repeated here. Nothing is logged: the caller
    /// decides whether and how to show them.
    pub warnings: Vec<String>,
}

impl StoreSpec {
    /// Reads a TOML spec file (and the files it includes).
    pub fn from_file(path: &Path) -> Result<StoreSpec, SpecError> {
        file::from_file(path)
    }

    /// Parses TOML text as if read from `file`: messages name `file`, and
    /// relative paths are resolved against its directory. Included files are
    /// read from disk.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<StoreSpec, SpecError> {
        file::from_str(text, file)
    }

    /// Parses a Nix store URI.
    pub fn from_uri(uri: &str) -> Result<StoreSpec, SpecError> {
        uri::parse(uri)
    }

    /// Parses a `--store` argument: a path ending in `.toml` is a spec file
    /// (relative to the current directory), anything else a store URI or an
    /// absolute path (a local store with that root).
    ///
    /// A `.toml` path is always read as a file, even if missing: the error
    /// then names the file, rather than silently taking it as a store root
    /// that a later `init` would create.
    pub fn parse_arg(s: &str) -> Result<StoreSpec, SpecError> {
        if file::is_spec_file_name(s) {
            file::from_file(Path::new(s))
        } else {
            uri::parse(s)
        }
    }

    /// The equivalent Nix store URI, so stock Nix can open the same store.
    ///
    /// Settings only the TOML spec has (`immutable`, `policy`, `[mount]`,
    /// `[gc]`, `[watch]`, `[policy-limits]`) are left out; everything else
    /// round-trips through [`StoreSpec::from_uri`].
    pub fn to_uri(&self) -> String {
        uri::render(self, false)
    }

    /// See [`StoreSpec::warnings`] (the field).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The lower store of an overlay.
    pub fn lower(&self) -> Option<&StoreSpec> {
        self.lower_store.as_deref()
    }

    /// This store and its lower stores, top first.
    pub fn layers(&self) -> impl Iterator<Item = &StoreSpec> {
        std::iter::successors(Some(self), |s| s.lower())
    }
}
