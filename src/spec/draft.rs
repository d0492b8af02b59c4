//! The part of spec building that the TOML and URI front ends share: kind
//! rules, defaults and cross-field checks. Keeping it in one place is what
//! makes a URI and the equivalent TOML file produce the same [`StoreSpec`].

use std::path::{Path, PathBuf};

use super::error::{SpecError, SpecErrorKind};
use super::{
    CacheSpec, GcSpec, MountSpec, PolicyLimits, ServeSpec, SpecOrigin, StoreKind, StoreSpec, WatchSpec, DEFAULT_DAEMON_SOCKET,
    DEFAULT_LOG_DIR, DEFAULT_STATE_DIR, DEFAULT_STORE_DIR,
};

/// 1-based line and column in a spec file; `None` for URIs, which have none.
pub(crate) type Pos = Option<(usize, usize)>;

/// A value and where it was written, so later checks can point at it.
#[derive(Debug, Clone)]
pub(crate) struct At<T> {
    pub value: T,
    pub pos: Pos,
}

/// Where the spec being built comes from; turns "key + problem" into an error
/// of the right shape (`FILE:LINE:COL: key: …` or `store URI '…': param: …`).
pub(crate) enum Site<'a> {
    File {
        file: &'a Path,
        /// Dotted path of the table inside the file (`""` or `"lower-store."`).
        prefix: &'a str,
        /// Where errors about the table as a whole (a missing key) point.
        anchor: (usize, usize),
    },
    Uri {
        /// The outermost URI, as the user wrote it.
        uri: &'a str,
        /// Dotted path of nested `lower-store=` URIs (`""` or `"lower-store."`).
        prefix: &'a str,
    },
}

impl Site<'_> {
    /// `key` as the user wrote it; see [`Site::name`] for TOML names.
    pub(crate) fn error(&self, key: &str, pos: Pos, expected: impl Into<String>) -> SpecError {
        let expected = expected.into();
        match self {
            Site::File { file, prefix, anchor } => {
                let (line, column) = pos.unwrap_or(*anchor);
                SpecErrorKind::Toml { file: file.to_path_buf(), line, column, key: format!("{prefix}{key}"), expected }.into()
            }
            Site::Uri { uri, prefix } => SpecErrorKind::Uri { uri: uri.to_string(), param: format!("{prefix}{key}"), expected }.into(),
        }
    }

    /// The name of a setting as the user writes it here.
    pub(crate) fn name<'k>(&self, toml_key: &'k str) -> &'k str {
        match (self, toml_key) {
            (Site::Uri { .. }, "store-dir") => "store",
            _ => toml_key,
        }
    }

    /// "only valid for …" in the words the user selects a store kind with.
    pub(crate) fn only_for(&self, allowed: &[StoreKind], this: StoreKind) -> String {
        match self {
            Site::File { .. } => {
                let names: Vec<String> = allowed.iter().map(|k| format!("\"{k}\"")).collect();
                format!("only valid with type = {} (this store's type is \"{this}\")", names.join(" or "))
            }
            Site::Uri { .. } => {
                let scheme = |k: &StoreKind| match k {
                    StoreKind::Local => "`local`",
                    StoreKind::LocalOverlay => "`local-overlay://`",
                    StoreKind::Daemon => "`daemon`/`unix://`",
                };
                let names: Vec<&str> = allowed.iter().map(scheme).collect();
                format!("only valid in {} store URIs (this is a {} store URI)", names.join(" or "), scheme(&this))
            }
        }
    }
}

/// How `real` follows from `root` when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RealDefault {
    /// `root` + `store-dir`: what the TOML spec documents.
    RootPlusStoreDir,
    /// `root` + `/nix/store` whatever the store dir: what Nix does with a URI.
    RootNixStore,
}

/// Settings as written, before defaults; `None` = not given.
#[derive(Debug, Default)]
pub(crate) struct Draft {
    pub kind: Option<At<StoreKind>>,
    /// Where "missing key" errors point when there is no `type` key: the key
    /// that made the kind inferable, or the table itself.
    pub missing_at: Pos,
    pub store_dir: Option<At<PathBuf>>,
    pub root: Option<At<PathBuf>>,
    pub real: Option<At<PathBuf>>,
    pub state: Option<At<PathBuf>>,
    pub log: Option<At<PathBuf>>,
    pub upper_layer: Option<At<PathBuf>>,
    pub check_mount: Option<At<bool>>,
    pub read_only: Option<At<bool>>,
    pub immutable: Option<At<bool>>,
    pub remount_hook: Option<At<PathBuf>>,
    pub policy: Option<At<PathBuf>>,
    pub socket: Option<At<PathBuf>>,
    pub timeout_secs: Option<At<u64>>,
    pub lower_store: Option<At<StoreSpec>>,
    pub mount: Option<At<MountSpec>>,
    pub gc: Option<GcSpec>,
    pub watch: Option<WatchSpec>,
    pub serve: Option<ServeSpec>,
    pub caches: Option<CacheSpec>,
    pub policy_limits: Option<PolicyLimits>,
}

fn pos_of<T>(v: &Option<At<T>>) -> Option<Pos> {
    v.as_ref().map(|a| a.pos)
}

impl Draft {
    /// The kind when no `type` was given: the settings only one kind has decide.
    fn inferred_kind(&self) -> StoreKind {
        if self.upper_layer.is_some() || self.lower_store.is_some() {
            StoreKind::LocalOverlay
        } else if self.socket.is_some() {
            StoreKind::Daemon
        } else {
            StoreKind::Local
        }
    }

    /// Applies the kind rules and defaults. The caller fills in `origin`,
    /// `files` and `warnings`.
    pub(crate) fn finish(self, site: &Site, real_default: RealDefault) -> Result<StoreSpec, SpecError> {
        let kind = match &self.kind {
            Some(k) => k.value,
            None => self.inferred_kind(),
        };
        let missing_at = self.kind.as_ref().and_then(|k| k.pos).or(self.missing_at);

        // Settings that only some kinds have.
        use StoreKind::*;
        let restricted: [(&str, Option<Pos>, &[StoreKind]); 8] = [
            ("timeout-secs", pos_of(&self.timeout_secs), &[Daemon]),
            ("upper-layer", pos_of(&self.upper_layer), &[LocalOverlay]),
            ("lower-store", pos_of(&self.lower_store), &[LocalOverlay]),
            ("check-mount", pos_of(&self.check_mount), &[LocalOverlay]),
            ("remount-hook", pos_of(&self.remount_hook), &[LocalOverlay]),
            ("mount", pos_of(&self.mount), &[LocalOverlay]),
            ("socket", pos_of(&self.socket), &[Daemon]),
            ("immutable", pos_of(&self.immutable), &[Local, LocalOverlay]),
        ];
        for (key, pos, kinds) in restricted {
            if let Some(pos) = pos {
                if !kinds.contains(&kind) {
                    let why = if key == "immutable" { "; a daemon store's database belongs to the daemon" } else { "" };
                    return Err(site.error(key, pos, format!("{}{why}", site.only_for(kinds, kind))));
                }
            }
        }

        if kind == LocalOverlay {
            if self.upper_layer.is_none() {
                return Err(site.error(
                    "upper-layer",
                    missing_at,
                    match site {
                        Site::File { .. } => {
                            "missing; a local-overlay store needs \
                            upper-layer = \"<directory of the upper layer>\" (the OverlayFS upperdir)"
                        }
                        Site::Uri { .. } => {
                            "missing; a local-overlay store needs \
                            upper-layer=<absolute directory of the upper layer> (the OverlayFS upperdir)"
                        }
                    },
                ));
            }
            if self.lower_store.is_none() {
                return Err(site.error(
                    "lower-store",
                    missing_at,
                    match site {
                        Site::File { .. } => {
                            "missing; a local-overlay store needs a lower store: \
                            a [lower-store] table, a store URI, an absolute path or a .toml file"
                        }
                        Site::Uri { .. } => {
                            "missing; a local-overlay store needs \
                            lower-store=<store URI or absolute path>"
                        }
                    },
                ));
            }
        }

        let store_dir = match &self.store_dir {
            None => PathBuf::from(DEFAULT_STORE_DIR),
            Some(At { value, pos }) => {
                if !value.is_absolute() {
                    return Err(site.error(
                        site.name("store-dir"),
                        *pos,
                        format!(
                            "expected an absolute path such as \"{DEFAULT_STORE_DIR}\", found {:?}; \
                             the logical store directory is never relative",
                            value.display().to_string()
                        ),
                    ));
                }
                if value.parent().is_none() {
                    return Err(site.error(
                        site.name("store-dir"),
                        *pos,
                        format!("expected a directory below \"/\", such as \"{DEFAULT_STORE_DIR}\""),
                    ));
                }
                value.clone()
            }
        };

        let root = self.root.map(|a| a.value);
        let under_root = |rel: &str| root.as_ref().map(|r| r.join(rel));
        let real = match self.real {
            Some(a) => a.value,
            None => match (&root, real_default) {
                (Some(r), RealDefault::RootPlusStoreDir) => r.join(store_dir.strip_prefix("/").unwrap_or(&store_dir)),
                (Some(r), RealDefault::RootNixStore) => r.join("nix/store"),
                (None, _) => store_dir.clone(),
            },
        };
        let state = self.state.map(|a| a.value).or_else(|| under_root("nix/var/nix")).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let log = self.log.map(|a| a.value).or_else(|| under_root("nix/var/log/nix")).unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_DIR));
        let socket = match kind {
            Daemon => Some(self.socket.map(|a| a.value).unwrap_or_else(|| PathBuf::from(DEFAULT_DAEMON_SOCKET))),
            _ => None,
        };

        // Layers must agree on names and must not overlap on disk, or the
        // OverlayFS mount (or the store paths) would be wrong in confusing ways.
        if let Some(At { value: lower, pos }) = &self.lower_store {
            if lower.store_dir != store_dir {
                return Err(site.error(
                    "lower-store",
                    *pos,
                    format!(
                        "the lower store's {} is {:?} but this store's is {:?}; \
                         both layers must name store paths alike, so set the same {} in both",
                        site.name("store-dir"),
                        lower.store_dir.display().to_string(),
                        store_dir.display().to_string(),
                        site.name("store-dir"),
                    ),
                ));
            }
        }
        if let Some(At { value: upper, pos }) = &self.upper_layer {
            if *upper == real {
                return Err(site.error(
                    "upper-layer",
                    *pos,
                    format!("must differ from the store directory {:?} (`real`), which is the mount point", real.display().to_string()),
                ));
            }
            if let Some(lower) = &self.lower_store {
                if *upper == lower.value.real {
                    return Err(site.error(
                        "upper-layer",
                        *pos,
                        format!("must differ from the lower store directory {:?}, which is never written", upper.display().to_string()),
                    ));
                }
            }
            if let Some(At { value: mount, pos }) = &self.mount {
                if mount.workdir == *upper || mount.workdir == real {
                    return Err(site.error(
                        "mount.workdir",
                        *pos,
                        "must be a directory of its own (OverlayFS needs an empty workdir \
                         beside upper-layer, on the same filesystem)",
                    ));
                }
            }
        }

        Ok(StoreSpec {
            kind,
            store_dir,
            root,
            real,
            state,
            log,
            upper_layer: self.upper_layer.map(|a| a.value),
            check_mount: self.check_mount.map_or(true, |a| a.value),
            read_only: self.read_only.is_some_and(|a| a.value),
            immutable: self.immutable.is_some_and(|a| a.value),
            remount_hook: self.remount_hook.map(|a| a.value),
            policy: self.policy.map(|a| a.value),
            socket,
            timeout_secs: self.timeout_secs.map_or(crate::spec::DEFAULT_DAEMON_TIMEOUT_SECS, |a| a.value),
            lower_store: self.lower_store.map(|a| Box::new(a.value)),
            mount: self.mount.map(|a| a.value),
            gc: self.gc.unwrap_or_default(),
            watch: self.watch.unwrap_or_default(),
            serve: self.serve.unwrap_or_default(),
            caches: self.caches.unwrap_or_default(),
            policy_limits: self.policy_limits.unwrap_or_default(),
            origin: SpecOrigin::Uri(String::new()),
            files: Vec::new(),
            warnings: Vec::new(),
        })
    }
}
