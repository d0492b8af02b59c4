//! Tests of the spec as users meet it: whole documents and URIs in, specs or
//! exact messages out.

use std::path::{Path, PathBuf};

use super::*;

const FILE: &str = "/etc/overlay/store.toml";

fn toml(text: &str) -> Result<StoreSpec, SpecError> {
    StoreSpec::from_toml_str(text, Path::new(FILE))
}

#[track_caller]
fn toml_ok(text: &str) -> StoreSpec {
    toml(text).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

#[track_caller]
fn toml_err(text: &str) -> String {
    match toml(text) {
        Ok(s) => panic!("expected an error, got {s:#?}"),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn uri_ok(uri: &str) -> StoreSpec {
    StoreSpec::from_uri(uri).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

#[track_caller]
fn uri_err(uri: &str) -> String {
    match StoreSpec::from_uri(uri) {
        Ok(s) => panic!("expected an error, got {s:#?}"),
        Err(e) => e.to_string(),
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

/// The spec without where it came from, for comparing a TOML spec with the
/// URI it renders to.
fn strip(mut s: StoreSpec) -> StoreSpec {
    s.origin = SpecOrigin::Uri(String::new());
    s.files.clear();
    s.warnings.clear();
    s.lower_store = s.lower_store.map(|l| Box::new(strip(*l)));
    s
}

#[track_caller]
fn assert_round_trip(spec: &StoreSpec) {
    let uri = spec.to_uri();
    let back = StoreSpec::from_uri(&uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
    assert_eq!(strip(back), strip(spec.clone()), "round trip through {uri}");
    assert_eq!(StoreSpec::from_uri(&uri).unwrap().to_uri(), uri, "to_uri is stable");
}

// ---------------------------------------------------------------- defaults

#[test]
fn empty_spec_is_the_system_local_store() {
    let s = toml_ok("");
    assert_eq!(s.kind, StoreKind::Local);
    assert_eq!(s.store_dir, p("/nix/store"));
    assert_eq!(s.root, None);
    assert_eq!(s.real, p("/nix/store"));
    assert_eq!(s.state, p("/nix/var/nix"));
    assert_eq!(s.log, p("/nix/var/log/nix"));
    assert_eq!(s.upper_layer, None);
    assert!(s.check_mount && !s.read_only && !s.immutable);
    assert_eq!(s.socket, None);
    assert_eq!(s.lower_store, None);
    assert_eq!(s.mount, None);
    assert_eq!(s.gc, GcSpec { keep_derivations: true, keep_outputs: false });
    assert_eq!(s.watch.debounce_ms, 200);
    assert_eq!(s.policy_limits, PolicyLimits { instructions: 100_000_000, memory_mib: 64, wall_clock_secs: 10 });
    assert_eq!(s.origin, SpecOrigin::File(p(FILE)));
    assert_eq!(s.files, vec![p(FILE)]);
    assert!(s.warnings().is_empty());
    assert_eq!(s.to_uri(), "local");
}

#[test]
fn root_derives_real_state_and_log() {
    let s = toml_ok(r#"root = "/mnt/r""#);
    assert_eq!(s.root, Some(p("/mnt/r")));
    assert_eq!(s.real, p("/mnt/r/nix/store"));
    assert_eq!(s.state, p("/mnt/r/nix/var/nix"));
    assert_eq!(s.log, p("/mnt/r/nix/var/log/nix"));
    assert_eq!(s.to_uri(), "local?root=/mnt/r");

    let u = uri_ok("local?root=/mnt/r");
    assert_eq!((u.real, u.state, u.log), (s.real, s.state, s.log));
    assert_eq!(strip(uri_ok("/mnt/r")), strip(uri_ok("local?root=/mnt/r")));
    assert_eq!(strip(uri_ok("local:///mnt/r")), strip(uri_ok("local?root=/mnt/r")));
}

#[test]
fn explicit_directories_win_over_root() {
    let s = toml_ok(
        r#"root = "/r"
real = "/elsewhere/store"
state = "/var/state"
log = "/var/log/nix""#,
    );
    assert_eq!(s.real, p("/elsewhere/store"));
    assert_eq!(s.state, p("/var/state"));
    assert_eq!(s.log, p("/var/log/nix"));
    assert_round_trip(&s);
}

#[test]
fn store_dir_moves_real_in_toml_but_not_in_uris() {
    // TOML: real = root + store-dir, as the spec documents.
    let s = toml_ok("root = \"/r\"\nstore-dir = \"/gnu/store/\"");
    assert_eq!(s.store_dir, p("/gnu/store"));
    assert_eq!(s.real, p("/r/gnu/store"));
    // URI: Nix puts the real store at root/nix/store whatever `store` is.
    let u = uri_ok("local?root=/r&store=/gnu/store");
    assert_eq!(u.real, p("/r/nix/store"));
    // Either way to_uri says exactly which directory, so Nix agrees.
    assert_eq!(s.to_uri(), "local?root=/r&store=/gnu/store&real=/r/gnu/store");
    assert_round_trip(&s);
    assert_round_trip(&u);
}

#[test]
fn daemon_defaults() {
    let s = toml_ok(r#"type = "daemon""#);
    assert_eq!(s.kind, StoreKind::Daemon);
    assert_eq!(s.socket, Some(p("/nix/var/nix/daemon-socket/socket")));
    assert_eq!(s.real, p("/nix/store"));
    assert_eq!(s.to_uri(), "daemon");
    for u in ["daemon", "unix://"] {
        assert_eq!(strip(uri_ok(u)), strip(s.clone()), "{u}");
    }
    let custom = uri_ok("unix:///run/nix/sock?real=/mnt/a/nix/store");
    assert_eq!(custom.socket, Some(p("/run/nix/sock")));
    assert_eq!(custom.real, p("/mnt/a/nix/store"));
    assert_eq!(custom.to_uri(), "unix:///run/nix/sock?real=/mnt/a/nix/store");
}

#[test]
fn type_is_inferred_from_the_settings_only_one_kind_has() {
    assert_eq!(toml_ok(r#"socket = "/s""#).kind, StoreKind::Daemon);
    let s = toml_ok("upper-layer = \"/u\"\nlower-store = \"/a\"");
    assert_eq!(s.kind, StoreKind::LocalOverlay);
    assert_eq!(s.lower().unwrap().kind, StoreKind::Local);
}

// ---------------------------------------------------------------- paths

#[test]
fn relative_paths_are_relative_to_the_file() {
    let s = toml_ok(
        r#"root = "merged"
upper-layer = "../upper//layer/./"
remount-hook = "bin/remount"
policy = "lua/default.lua"
[lower-store]
type = "daemon"
socket = "run/daemon.sock"
real = "/nix/store"
[mount]
workdir = "./work"
"#,
    );
    assert_eq!(s.root, Some(p("/etc/overlay/merged")));
    assert_eq!(s.real, p("/etc/overlay/merged/nix/store"));
    assert_eq!(s.upper_layer, Some(p("/etc/upper/layer")));
    assert_eq!(s.remount_hook, Some(p("/etc/overlay/bin/remount")));
    assert_eq!(s.policy, Some(p("/etc/overlay/lua/default.lua")));
    assert_eq!(s.mount.as_ref().unwrap().workdir, p("/etc/overlay/work"));
    assert_eq!(s.lower().unwrap().socket, Some(p("/etc/overlay/run/daemon.sock")));
    assert_eq!(s.lower().unwrap().real, p("/nix/store"));
}

#[test]
fn relative_file_names_are_made_absolute() {
    let s = StoreSpec::from_toml_str(r#"root = "r""#, Path::new("conf/x.toml")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(s.root, Some(cwd.join("conf/r")));
    assert_eq!(s.files, vec![cwd.join("conf/x.toml")]);
}

#[test]
fn lower_store_may_be_a_root_relative_to_the_file() {
    let s = toml_ok("upper-layer = \"/u\"\nlower-store = \"./store-a\"");
    assert_eq!(s.lower().unwrap().root, Some(p("/etc/overlay/store-a")));
    assert_eq!(s.lower().unwrap().kind, StoreKind::Local);
}

#[test]
fn uri_paths_must_be_absolute() {
    assert_eq!(
        uri_err("local?root=relative/dir"),
        "store URI 'local?root=relative/dir': root: expected an absolute path, found \"relative/dir\"; \
         paths in a store URI are never relative"
    );
    assert_eq!(
        uri_err("./store"),
        "store URI './store': root: expected an absolute path, found \"./store\"; \
         a store root in a URI is never relative"
    );
    assert_eq!(
        uri_err("unix://daemon.sock"),
        "store URI 'unix://daemon.sock': socket: expected an absolute path, found \"daemon.sock\"; \
         paths in a store URI are never relative"
    );
    assert_eq!(
        uri_err("local?store=nix/store"),
        "store URI 'local?store=nix/store': store: expected an absolute path such as \"/nix/store\", \
         found \"nix/store\"; the logical store directory is never relative"
    );
}

// ---------------------------------------------------------------- nesting

const THREE_LEVELS_TOML: &str = r#"type = "local-overlay"
root = "/mnt/c"
upper-layer = "/mnt/c-upper"

[lower-store]
type = "local-overlay"
root = "/mnt/b"
upper-layer = "/mnt/b-upper"
check-mount = false

[lower-store.lower-store]
root = "/mnt/a"
read-only = true
"#;

#[track_caller]
fn assert_three_levels(s: &StoreSpec) {
    let kinds: Vec<StoreKind> = s.layers().map(|l| l.kind).collect();
    assert_eq!(kinds, [StoreKind::LocalOverlay, StoreKind::LocalOverlay, StoreKind::Local]);
    let reals: Vec<&Path> = s.layers().map(|l| l.real.as_path()).collect();
    assert_eq!(reals, [Path::new("/mnt/c/nix/store"), Path::new("/mnt/b/nix/store"), Path::new("/mnt/a/nix/store")]);
    let b = s.lower().unwrap();
    assert_eq!(b.upper_layer, Some(p("/mnt/b-upper")));
    assert!(!b.check_mount);
    assert!(b.lower().unwrap().read_only);
}

#[test]
fn three_levels_via_tables() {
    let s = toml_ok(THREE_LEVELS_TOML);
    assert_three_levels(&s);
    assert_eq!(s.lower().unwrap().origin, SpecOrigin::File(p(FILE)));
    assert_eq!(
        s.to_uri(),
        "local-overlay://?root=/mnt/c\
         &lower-store=local-overlay%3A%2F%2F%3Froot%3D%2Fmnt%2Fb\
         %26lower-store%3Dlocal%253Froot%253D%252Fmnt%252Fa%2526read-only%253Dtrue\
         %26upper-layer%3D%2Fmnt%2Fb-upper%26check-mount%3Dfalse\
         &upper-layer=/mnt/c-upper"
    );
    assert_round_trip(&s);
}

#[test]
fn three_levels_via_uris() {
    let inner = "local-overlay://?root=/mnt/b&lower-store=local%3Froot%3D%2Fmnt%2Fa%26read-only%3Dtrue\
                 &upper-layer=/mnt/b-upper&check-mount=false";
    let outer = format!("local-overlay://?root=/mnt/c&upper-layer=/mnt/c-upper&lower-store={}", uri::encode(inner, false));
    let s = uri_ok(&outer);
    assert_three_levels(&s);
    assert_eq!(s.lower().unwrap().origin, SpecOrigin::Uri(inner.to_string()));
    assert_eq!(strip(s.clone()), strip(toml_ok(THREE_LEVELS_TOML)));

    // The same lower-store URI as a TOML string.
    let from_toml = toml_ok(&format!("root = \"/mnt/c\"\nupper-layer = \"/mnt/c-upper\"\nlower-store = \"{inner}\""));
    assert_eq!(strip(from_toml), strip(s));
}

#[test]
fn an_unencoded_single_parameter_lower_store_is_accepted() {
    // As in Nix: the outer query splits on `&` first, so this works, but a
    // lower store with several parameters has to be percent-encoded.
    let s = uri_ok("local-overlay://?lower-store=local?root=/a&upper-layer=/b");
    assert_eq!(s.lower().unwrap().root, Some(p("/a")));
    assert_eq!(s.upper_layer, Some(p("/b")));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn three_levels_via_included_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let top = write(d, "top.toml", "root = \"/mnt/c\"\nupper-layer = \"/mnt/c-upper\"\nlower-store = \"layers/b.toml\"\n");
    let b = write(
        d,
        "layers/b.toml",
        "type = \"local-overlay\"\nroot = \"/mnt/b\"\nupper-layer = \"/mnt/b-upper\"\n\
         check-mount = false\nlower-store = \"../a.toml\"\npolicy = \"b.lua\"\n",
    );
    let a = write(d, "a.toml", "root = \"/mnt/a\"\nread-only = true\n");

    let s = StoreSpec::from_file(&top).unwrap();
    assert_three_levels(&s);
    assert_eq!(s.files, vec![top.clone(), b.clone(), a.clone()]);
    assert_eq!(s.lower().unwrap().files, vec![b.clone(), a.clone()]);
    assert_eq!(s.lower().unwrap().origin, SpecOrigin::File(b.clone()));
    assert_eq!(s.lower().unwrap().lower().unwrap().origin, SpecOrigin::File(a.clone()));
    // b's `policy` belongs to b's own deployment: ignored here, with a warning.
    assert_eq!(s.lower().unwrap().policy, None);
    assert_eq!(
        s.warnings(),
        [format!(
            "{}:6:1: policy: ignored; this file is included as a lower store, \
             and only the top-level spec's `policy` applies",
            b.display()
        )]
    );
    assert_eq!(strip(s), strip(toml_ok(THREE_LEVELS_TOML)));
}

#[test]
fn include_cycles_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = write(d, "a.toml", "upper-layer = \"/u\"\nlower-store = \"b.toml\"\n");
    let b = write(d, "b.toml", "upper-layer = \"/v\"\n\nlower-store = \"./a.toml\"\n");
    assert_eq!(
        StoreSpec::from_file(&a).unwrap_err().to_string(),
        format!(
            "{b}:3:1: lower-store: include cycle: {a} -> {b} -> {a}; \
             a lower store cannot include a spec that includes it",
            a = a.display(),
            b = b.display()
        )
    );
    let me = write(d, "self.toml", "upper-layer = \"/u\"\nlower-store = \"self.toml\"\n");
    let err = StoreSpec::from_file(&me).unwrap_err();
    assert!(matches!(err.kind(), SpecErrorKind::IncludeCycle { chain, .. } if chain.len() == 2));
}

#[test]
fn missing_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("nope.toml");
    assert_eq!(
        StoreSpec::from_file(&missing).unwrap_err().to_string(),
        format!(
            "cannot read store spec '{}': No such file or directory (os error 2); \
             give the path of a readable TOML store spec",
            missing.display()
        )
    );
    let top = write(d, "top.toml", "upper-layer = \"/u\"\n  lower-store = \"lower.toml\"\n");
    assert_eq!(
        StoreSpec::from_file(&top).unwrap_err().to_string(),
        format!(
            "{}:2:3: lower-store: cannot read included store spec '{}': No such file or directory \
             (os error 2); a relative path is relative to the directory of {}",
            top.display(),
            d.join("lower.toml").display(),
            top.display()
        )
    );
}

#[test]
fn errors_in_included_files_point_into_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let top = write(d, "top.toml", "upper-layer = \"/u\"\nlower-store = \"lower.toml\"\n");
    let lower = write(d, "lower.toml", "root = \"/a\"\nroto = \"/b\"\n");
    assert_eq!(
        StoreSpec::from_file(&top).unwrap_err().to_string(),
        format!("{}:2:1: roto: unknown key; did you mean `root`?", lower.display())
    );
}

// ---------------------------------------------------------------- TOML errors

#[test]
fn unknown_keys_suggest_the_closest() {
    assert_eq!(toml_err("type = \"local\"\n\n   tpye = \"local\""), "/etc/overlay/store.toml:3:4: tpye: unknown key; did you mean `type`?");
    assert_eq!(toml_err("upper_layer = \"/u\""), "/etc/overlay/store.toml:1:1: upper_layer: unknown key; did you mean `upper-layer`?");
    assert_eq!(
        toml_err("[lower-store]\nroot = \"/a\"\nreadonly = true"),
        "/etc/overlay/store.toml:3:1: lower-store.readonly: unknown key; did you mean `read-only`?"
    );
    assert_eq!(
        toml_err("frobnicate = 1"),
        "/etc/overlay/store.toml:1:1: frobnicate: unknown key; expected one of: type, store-dir, root, \
         real, state, log, upper-layer, check-mount, read-only, immutable, remount-hook, policy, \
         socket, timeout-secs, lower-store, mount, gc, watch, serve, binary-caches, policy-limits"
    );
    assert_eq!(
        toml_err("[gc]\nkeep-output = true"),
        "/etc/overlay/store.toml:2:1: gc.keep-output: unknown key; did you mean `keep-outputs`?"
    );
    assert_eq!(toml_err("[watch]\ndebounce = 5"), "/etc/overlay/store.toml:2:1: watch.debounce: unknown key; did you mean `debounce-ms`?");
}

#[test]
fn wrong_types_name_key_and_expected_type() {
    assert_eq!(toml_err("read-only = \"yes\""), "/etc/overlay/store.toml:1:1: read-only: expected true or false, found string \"yes\"");
    assert_eq!(toml_err("root = 5"), "/etc/overlay/store.toml:1:1: root: expected a path (a string), found integer 5");
    assert_eq!(
        toml_err("upper-layer = \"/u\"\nlower-store = { root = \"/a\", immutable = 1 }"),
        "/etc/overlay/store.toml:2:30: lower-store.immutable: expected true or false, found integer 1"
    );
    assert_eq!(
        toml_err("upper-layer = \"/u\"\nlower-store = 3"),
        "/etc/overlay/store.toml:2:1: lower-store: expected a table (a nested store spec) or a string \
         (a store URI, an absolute path or a .toml file), found integer 3"
    );
    assert_eq!(toml_err("gc = true"), "/etc/overlay/store.toml:1:1: gc: expected a table, found boolean true");
    assert_eq!(
        toml_err("watch.debounce-ms = -5"),
        "/etc/overlay/store.toml:1:7: watch.debounce-ms: expected a non-negative integer, found integer -5"
    );
    assert_eq!(
        toml_err("[policy-limits]\ninstructions = 0"),
        "/etc/overlay/store.toml:2:1: policy-limits.instructions: expected an integer of at least 1, \
         found integer 0"
    );
    assert_eq!(
        toml_err("state = 1979-05-27"),
        "/etc/overlay/store.toml:1:1: state: expected a path (a string), found date-time 1979-05-27"
    );
    assert_eq!(toml_err("log = \"\""), "/etc/overlay/store.toml:1:1: log: expected a path, found an empty string");
    assert_eq!(toml_err("root = \"~/nix\""), "/etc/overlay/store.toml:1:1: root: `~` is not expanded here; write the path out");
}

#[test]
fn unknown_type_values_list_the_valid_ones() {
    assert_eq!(
        toml_err("\ntype = \"locl\""),
        "/etc/overlay/store.toml:2:1: type: expected one of \"local\", \"local-overlay\", \"daemon\", \
         found \"locl\" (did you mean \"local\"?)"
    );
    assert_eq!(
        toml_err("type = \"ssh\""),
        "/etc/overlay/store.toml:1:1: type: expected one of \"local\", \"local-overlay\", \"daemon\", \
         found \"ssh\""
    );
    assert_eq!(
        toml_err("type = true"),
        "/etc/overlay/store.toml:1:1: type: expected one of \"local\", \"local-overlay\", \"daemon\", \
         found boolean true"
    );
}

#[test]
fn syntax_errors_have_positions() {
    let e = toml_err("root = \"/a\"\nroot = \"/b\"\n");
    assert!(e.starts_with("/etc/overlay/store.toml:2:1: invalid TOML: duplicate key"), "{e}");
    let e = toml_err("root = \"/a\nx = 1");
    assert!(e.starts_with("/etc/overlay/store.toml:1:"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    assert_eq!(toml_err("[lower-store\nroot = 1\n"), "/etc/overlay/store.toml:1:13: invalid TOML: invalid table header; expected `.`, `]`");
}

#[test]
fn upper_layer_and_lower_store_are_required_for_overlays() {
    assert_eq!(
        toml_err("root = \"/m\"\ntype = \"local-overlay\"\nlower-store = \"/a\""),
        "/etc/overlay/store.toml:2:1: upper-layer: missing; a local-overlay store needs \
         upper-layer = \"<directory of the upper layer>\" (the OverlayFS upperdir)"
    );
    assert_eq!(
        toml_err("lower-store = \"/a\""),
        "/etc/overlay/store.toml:1:1: upper-layer: missing; a local-overlay store needs \
         upper-layer = \"<directory of the upper layer>\" (the OverlayFS upperdir)"
    );
    assert_eq!(
        toml_err("upper-layer = \"/u\"\n[lower-store]\ntype = \"local-overlay\"\nlower-store = \"/a\""),
        "/etc/overlay/store.toml:3:1: lower-store.upper-layer: missing; a local-overlay store needs \
         upper-layer = \"<directory of the upper layer>\" (the OverlayFS upperdir)"
    );
    assert_eq!(
        toml_err("\nupper-layer = \"/u\""),
        "/etc/overlay/store.toml:2:1: lower-store: missing; a local-overlay store needs a lower store: \
         a [lower-store] table, a store URI, an absolute path or a .toml file"
    );
    assert_eq!(
        uri_err("local-overlay://?lower-store=/a"),
        "store URI 'local-overlay://?lower-store=/a': upper-layer: missing; a local-overlay store needs \
         upper-layer=<absolute directory of the upper layer> (the OverlayFS upperdir)"
    );
    assert_eq!(
        uri_err("local-overlay://?upper-layer=/u"),
        "store URI 'local-overlay://?upper-layer=/u': lower-store: missing; a local-overlay store needs \
         lower-store=<store URI or absolute path>"
    );
}

#[test]
fn settings_of_other_kinds_are_errors() {
    assert_eq!(
        toml_err("type = \"local\"\nupper-layer = \"/u\""),
        "/etc/overlay/store.toml:2:1: upper-layer: only valid with type = \"local-overlay\" \
         (this store's type is \"local\")"
    );
    assert_eq!(
        toml_err("type = \"daemon\"\nimmutable = true"),
        "/etc/overlay/store.toml:2:1: immutable: only valid with type = \"local\" or \"local-overlay\" \
         (this store's type is \"daemon\"); a daemon store's database belongs to the daemon"
    );
    assert_eq!(
        toml_err("upper-layer = \"/u\"\nlower-store = \"/a\"\nsocket = \"/s\""),
        "/etc/overlay/store.toml:3:1: socket: only valid with type = \"daemon\" \
         (this store's type is \"local-overlay\")"
    );
    assert_eq!(
        toml_err("[mount]\nworkdir = \"/w\""),
        "/etc/overlay/store.toml:1:2: mount: only valid with type = \"local-overlay\" \
         (this store's type is \"local\")"
    );
    assert_eq!(
        uri_err("local?upper-layer=/u"),
        "store URI 'local?upper-layer=/u': upper-layer: only valid in `local-overlay://` store URIs \
         (this is a `local` store URI)"
    );
    assert_eq!(
        uri_err("daemon?lower-store=/a"),
        "store URI 'daemon?lower-store=/a': lower-store: only valid in `local-overlay://` store URIs \
         (this is a `daemon`/`unix://` store URI)"
    );
}

#[test]
fn top_level_tables_are_errors_in_inline_lower_stores() {
    assert_eq!(
        toml_err("upper-layer = \"/u\"\n[lower-store]\nroot = \"/a\"\n[lower-store.gc]\nkeep-outputs = true"),
        "/etc/overlay/store.toml:4:14: lower-store.gc: only allowed in the top-level store spec; \
         overlay-store never mounts, collects, watches or runs a policy on a lower store"
    );
    assert_eq!(
        toml_err("upper-layer = \"/u\"\nlower-store = { root = \"/a\", policy = \"p.lua\" }"),
        "/etc/overlay/store.toml:2:30: lower-store.policy: only allowed in the top-level store spec; \
         overlay-store never mounts, collects, watches or runs a policy on a lower store"
    );
}

#[test]
fn mount_table() {
    let s = toml_ok("upper-layer = \"/x/upper\"\nlower-store = \"/a\"\n[mount]\nworkdir = \"/x/work\"\noptions = [\"userxattr\"]");
    assert_eq!(s.mount, Some(MountSpec { workdir: p("/x/work"), options: vec!["userxattr".into()] }));
    let base = "upper-layer = \"/x/upper\"\nlower-store = \"/a\"\n";
    assert_eq!(
        toml_err(&format!("{base}[mount]\noptions = []")),
        "/etc/overlay/store.toml:3:2: mount.workdir: missing; [mount] needs \
         workdir = \"<empty directory on the upper layer's filesystem>\""
    );
    assert_eq!(
        toml_err(&format!("{base}[mount]\nworkdir = \"/w\"\noptions = [\"index=on\", 3]")),
        "/etc/overlay/store.toml:5:1: mount.options: expected an array of strings, but element 2 is integer 3"
    );
    assert_eq!(
        toml_err(&format!("{base}[mount]\nworkdir = \"/w\"\noptions = [\"index=on,xino=off\"]")),
        "/etc/overlay/store.toml:5:1: mount.options: expected one non-empty option per string \
         (no commas), found \"index=on,xino=off\""
    );
    assert_eq!(
        toml_err(&format!("{base}[mount]\nworkdir = \"/w\"\noptions = [\"upperdir=/elsewhere\"]")),
        "/etc/overlay/store.toml:5:1: mount.options: \"upperdir\" is set by overlay-store from the lower \
         store's `real`, `upper-layer` and `mount.workdir`; remove it here"
    );
    assert_eq!(
        toml_err(&format!("{base}[mount]\nworkdir = \"/x/upper\"")),
        "/etc/overlay/store.toml:3:2: mount.workdir: must be a directory of its own (OverlayFS needs \
         an empty workdir beside upper-layer, on the same filesystem)"
    );
    assert_eq!(
        toml_err(&format!("{base}[mount]\nworkdir = \"/w\"\noption = []")),
        "/etc/overlay/store.toml:5:1: mount.option: unknown key; did you mean `options`?"
    );
}

#[test]
fn other_top_level_tables() {
    let s = toml_ok(
        "[gc]\nkeep-derivations = false\nkeep-outputs = true\n[watch]\ndebounce-ms = 0\n\
         [policy-limits]\ninstructions = 5\nmemory-mib = 1\nwall-clock-secs = 2",
    );
    assert_eq!(s.gc, GcSpec { keep_derivations: false, keep_outputs: true });
    assert_eq!(s.watch, WatchSpec { debounce_ms: 0, ..WatchSpec::default() });
    assert_eq!(s.policy_limits, PolicyLimits { instructions: 5, memory_mib: 1, wall_clock_secs: 2 });
}

#[test]
fn store_dir_checks() {
    assert_eq!(
        toml_err("store-dir = \"nix/store\""),
        "/etc/overlay/store.toml:1:1: store-dir: expected an absolute path such as \"/nix/store\", \
         found \"nix/store\"; the logical store directory is never relative"
    );
    assert_eq!(
        toml_err("store-dir = \"//\""),
        "/etc/overlay/store.toml:1:1: store-dir: expected a directory below \"/\", such as \"/nix/store\""
    );
    assert_eq!(
        toml_err("store-dir = \"/gnu/store\"\nupper-layer = \"/u\"\nlower-store = \"/a\""),
        "/etc/overlay/store.toml:3:1: lower-store: the lower store's store-dir is \"/nix/store\" but \
         this store's is \"/gnu/store\"; both layers must name store paths alike, so set the same \
         store-dir in both"
    );
}

#[test]
fn layers_must_not_share_directories() {
    assert_eq!(
        toml_err("root = \"/m\"\nupper-layer = \"/m/nix/store\"\nlower-store = \"/a\""),
        "/etc/overlay/store.toml:2:1: upper-layer: must differ from the store directory \
         \"/m/nix/store\" (`real`), which is the mount point"
    );
    assert_eq!(
        toml_err("root = \"/m\"\nupper-layer = \"/a/nix/store\"\nlower-store = \"/a\""),
        "/etc/overlay/store.toml:2:1: upper-layer: must differ from the lower store directory \
         \"/a/nix/store\", which is never written"
    );
}

#[test]
fn bad_lower_store_strings_are_reported_at_the_key() {
    assert_eq!(
        toml_err("upper-layer = \"/u\"\nlower-store = \"store-a\""),
        "/etc/overlay/store.toml:2:1: lower-store: store URI 'store-a': scheme: expected a store URI \
         (local, local-overlay://?…, daemon, unix://…) or an absolute path, found \"store-a\"; \
         a store root relative to this file is written \"./store-a\""
    );
    assert_eq!(
        toml_err("upper-layer = \"/u\"\nlower-store = \"local?root=/a&frob=1\""),
        "/etc/overlay/store.toml:2:1: lower-store: store URI 'local?root=/a&frob=1': frob: unknown \
         parameter; expected one of: root, store, real, state, log, read-only, lower-store, \
         upper-layer, check-mount, remount-hook, path-info-cache-size, trusted, priority, \
         want-mass-query, system-features, require-sigs, ignore-gc-delete-failure, \
         use-roots-daemon, build-dir"
    );
}

#[test]
fn lower_store_nesting_is_bounded() {
    let mut text = String::from("upper-layer = \"/u0\"\n");
    let mut prefix = String::new();
    for i in 1..=MAX_NESTING + 1 {
        prefix.push_str("lower-store.");
        text.push_str(&format!("[{}]\nupper-layer = \"/u{i}\"\n", prefix.trim_end_matches('.')));
    }
    let e = toml_err(&text);
    assert!(e.ends_with("lower-store: lower stores nest more than 16 levels deep"), "{e}");
}

// ---------------------------------------------------------------- URIs

#[test]
fn design_doc_example_uri() {
    let uri = "local-overlay://?root=/m&lower-store=/a&upper-layer=/b&check-mount=false";
    let s = uri_ok(uri);
    assert_eq!(s.kind, StoreKind::LocalOverlay);
    assert_eq!(s.real, p("/m/nix/store"));
    assert_eq!(s.upper_layer, Some(p("/b")));
    assert!(!s.check_mount);
    assert_eq!(s.lower().unwrap().real, p("/a/nix/store"));
    assert_eq!(s.origin, SpecOrigin::Uri(uri.into()));
    assert_eq!(s.to_uri(), uri);
    let t = toml_ok("root = \"/m\"\nupper-layer = \"/b\"\ncheck-mount = false\n[lower-store]\nroot = \"/a\"");
    assert_eq!(t.to_uri(), uri);
}

#[test]
fn lower_stores_in_uris() {
    let s = uri_ok("local-overlay://?lower-store=daemon&upper-layer=/u");
    assert_eq!(s.lower().unwrap().kind, StoreKind::Daemon);
    let s = uri_ok("local-overlay://?lower-store=unix%3A%2F%2F%2Frun%2Fsock%3Freal%3D%2Fnix%2Fstore&upper-layer=/u");
    let lower = s.lower().unwrap();
    assert_eq!(lower.socket, Some(p("/run/sock")));
    assert_eq!(lower.real, p("/nix/store"));
    assert_eq!(
        uri_err("local-overlay://?lower-store=local-overlay%3A%2F%2F%3Froot%3D%2Fx&upper-layer=/u"),
        "store URI 'local-overlay://?lower-store=local-overlay%3A%2F%2F%3Froot%3D%2Fx&upper-layer=/u': \
         lower-store.upper-layer: missing; a local-overlay store needs \
         upper-layer=<absolute directory of the upper layer> (the OverlayFS upperdir)"
    );
    assert_eq!(
        uri_err("local-overlay://?lower-store=ssh://host&upper-layer=/u"),
        "store URI 'local-overlay://?lower-store=ssh://host&upper-layer=/u': lower-store: `ssh://` \
         stores cannot be used: every layer needs a store directory on the local filesystem \
         (local, local-overlay:// or daemon/unix://)"
    );
}

#[test]
fn round_trips() {
    let specs = [
        uri_ok("local"),
        uri_ok("daemon"),
        uri_ok("/mnt/a"),
        uri_ok("local?root=/r&read-only=true&state=/s&log=/l&real=/x"),
        uri_ok("local?store=/gnu/store"),
        uri_ok("unix:///run/sock?root=/r"),
        uri_ok("local?root=/with%20space/and%26amp"),
        uri_ok("local-overlay://?root=/m&lower-store=local%3Froot%3D%2Fwith%2520space&upper-layer=/b&remount-hook=/bin/re&check-mount=0"),
        // A bare path is taken literally, as Nix does: this root contains "%20".
        uri_ok("local-overlay://?lower-store=/with%2520space&upper-layer=/b"),
        toml_ok(THREE_LEVELS_TOML),
        toml_ok("upper-layer = \"/u\"\n[lower-store]\ntype = \"daemon\"\nsocket = \"/run/s\"\nroot = \"/r\""),
        toml_ok("upper-layer = \"/u\"\nlower-store = \"/a\"\nread-only = true\nstate = \"/st\""),
    ];
    for s in &specs {
        assert_round_trip(s);
    }
    assert_eq!(specs[6].root, Some(p("/with space/and&amp")));
    assert_eq!(specs[7].lower().unwrap().root, Some(p("/with space")));
    assert_eq!(specs[8].lower().unwrap().root, Some(p("/with%20space")));
}

#[test]
fn to_uri_leaves_out_toml_only_settings() {
    let s = toml_ok(
        "upper-layer = \"/u\"\npolicy = \"/p.lua\"\n[lower-store]\nroot = \"/a\"\nimmutable = true\n\
         [mount]\nworkdir = \"/w\"\n[gc]\nkeep-outputs = true",
    );
    assert_eq!(s.to_uri(), "local-overlay://?lower-store=/a&upper-layer=/u");
}

#[test]
fn unused_nix_settings_are_accepted_with_a_warning() {
    let uri = "local?root=/r&priority=30&want-mass-query=true&require-sigs=false";
    let s = uri_ok(uri);
    assert_eq!(s.root, Some(p("/r")));
    assert_eq!(
        s.warnings(),
        [
            format!("store URI '{uri}': priority: accepted but not used by overlay-store"),
            format!("store URI '{uri}': want-mass-query: accepted but not used by overlay-store"),
            format!("store URI '{uri}': require-sigs: accepted but not used by overlay-store"),
        ]
    );
    let s = uri_ok("unix:///s?max-connections=4");
    assert_eq!(s.warnings().len(), 1);

    // Nested warnings reach the top, and a TOML string says where it was.
    let t = toml_ok("upper-layer = \"/u\"\nlower-store = \"local?root=/a&trusted=1\"");
    assert_eq!(
        t.warnings(),
        ["/etc/overlay/store.toml:2:1: lower-store: store URI 'local?root=/a&trusted=1': trusted: \
          accepted but not used by overlay-store"]
    );
}

#[test]
fn unknown_uri_params_are_errors() {
    assert_eq!(uri_err("local?rot=/r"), "store URI 'local?rot=/r': rot: unknown parameter; did you mean `root`?");
    assert_eq!(
        uri_err("local?immutable=true"),
        "store URI 'local?immutable=true': immutable: only a TOML store spec setting; Nix store URIs \
         have no such parameter"
    );
    assert_eq!(
        uri_err("local?store-dir=/x"),
        "store URI 'local?store-dir=/x': store-dir: only a TOML store spec setting; Nix store URIs \
         have no such parameter (the URI parameter is `store`)"
    );
    assert_eq!(
        uri_err("local?max-connections=2"),
        "store URI 'local?max-connections=2': max-connections: only a setting of `daemon`/`unix://` \
         stores, not of `local`"
    );
    assert_eq!(uri_err("local?root=/a&root=/b"), "store URI 'local?root=/a&root=/b': root: given twice; give each parameter once");
    assert_eq!(uri_err("/a?root=/b"), "store URI '/a?root=/b': root: given twice: in the URI's path and as root=; give it once");
    assert_eq!(uri_err("local?root"), "store URI 'local?root': root: expected name=value");
}

#[test]
fn uri_booleans() {
    assert!(uri_ok("local?read-only=1").read_only);
    assert!(!uri_ok("local?read-only=0").read_only);
    assert!(uri_ok("local?read-only=true").read_only);
    assert_eq!(
        uri_err("local?read-only=yes"),
        "store URI 'local?read-only=yes': read-only: expected true or false (or 1 or 0), found \"yes\""
    );
}

#[test]
fn uri_base_errors() {
    assert_eq!(
        uri_err("auto"),
        "store URI 'auto': scheme: 'auto' picks a store by probing the system, which overlay-store \
         does not do; name the store: local, daemon, an absolute path or local-overlay://?…"
    );
    assert_eq!(
        uri_err("local-overlay?upper-layer=/u"),
        "store URI 'local-overlay?upper-layer=/u': scheme: expected `local-overlay://`, found `local-overlay`"
    );
    assert_eq!(
        uri_err("https://cache.nixos.org"),
        "store URI 'https://cache.nixos.org': scheme: `https://` stores cannot be used: every layer \
         needs a store directory on the local filesystem (local, local-overlay:// or daemon/unix://)"
    );
    assert_eq!(
        uri_err("lokal"),
        "store URI 'lokal': scheme: expected a store URI (local, local-overlay://?…, daemon, unix://…) \
         or an absolute path, found \"lokal\" (did you mean `local`?)"
    );
    assert_eq!(
        uri_err("local-overlay://?upper-layer=/u&lower-store="),
        "store URI 'local-overlay://?upper-layer=/u&lower-store=': lower-store: expected a store URI \
         (local, local-overlay://?…, daemon, unix://…) or an absolute path, found an empty string"
    );
    assert_eq!(
        uri_err("foo://x"),
        "store URI 'foo://x': scheme: unknown store type `foo://`; expected local, local-overlay://, \
         daemon or unix://"
    );
    assert_eq!(
        uri_err("local?root=/a%zz"),
        "store URI 'local?root=/a%zz': root: invalid percent-encoding in \"/a%zz\": `%` must be \
         followed by two hex digits (write `%` itself as %25)"
    );
    assert_eq!(
        uri_err("local?root=/a#b"),
        "store URI 'local?root=/a#b': scheme: a `#` starts a URI fragment, which store URIs do not \
         have; write it as %23"
    );
}

// ---------------------------------------------------------------- --store

#[test]
fn parse_arg_forms() {
    assert_eq!(strip(StoreSpec::parse_arg("/mnt/a").unwrap()), strip(uri_ok("local?root=/mnt/a")));
    assert_eq!(StoreSpec::parse_arg("daemon").unwrap().kind, StoreKind::Daemon);

    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "s.toml", "root = \"r\"");
    let s = StoreSpec::parse_arg(f.to_str().unwrap()).unwrap();
    assert_eq!(s.root, Some(dir.path().join("r")));
    assert_eq!(s.origin, SpecOrigin::File(f));

    let missing = dir.path().join("missing.toml");
    let e = StoreSpec::parse_arg(missing.to_str().unwrap()).unwrap_err();
    assert!(matches!(e.kind(), SpecErrorKind::Io { included_from: None, .. }), "{e}");
    assert!(StoreSpec::parse_arg("relative/root").is_err());
}

#[test]
fn serve_table_with_defaults_and_clear_errors() {
    let s = toml_ok("root = \"/x\"\n");
    assert_eq!(s.serve, ServeSpec::default());
    let s = toml_ok(
        "root = \"/x\"\n[serve]\nsocket = \"run/sock\"\nsocket-mode = 0o660\ntrusted-users = [\"root\", \"@wheel\"]\nallowed-users = [\"alice\"]\nmax-connections = 8\nbuilder = [\"/usr/bin/nix-store\", \"--option\", \"sandbox\", \"false\"]\n",
    );
    assert_eq!(s.serve.socket, Some(p("/etc/overlay/run/sock")));
    assert_eq!(s.serve.socket_mode, 0o660);
    assert_eq!(s.serve.trusted_users, ["root", "@wheel"]);
    assert_eq!(s.serve.allowed_users, ["alice"]);
    assert_eq!(s.serve.max_connections, 8);
    assert_eq!(s.serve.builder[0], "/usr/bin/nix-store");
    let e = toml_err("root = \"/x\"\n[serve]\nsocket-mode = 0o7777\n");
    assert!(e.contains("serve.socket-mode") && e.contains("0o7777"), "{e}");
    let e = toml_err("root = \"/x\"\n[serve]\ntrusted-users = \"root\"\n");
    assert!(e.contains("serve.trusted-users") && e.contains("array of strings"), "{e}");
    let s = toml_ok("root = \"/x\"\n[serve]\nbuild-users-group = \"nixbld\"\n");
    assert_eq!(s.serve.build_users_group.as_deref(), Some("nixbld"));
    let e = toml_err("root = \"/x\"\n[serve]\nbuild-users-group = 30000\n");
    assert!(e.contains("serve.build-users-group") && e.contains("group name"), "{e}");
    let e = toml_err("root = \"/x\"\n[serve]\nbuilder = []\n");
    assert!(e.contains("serve.builder"), "{e}");
    let e = toml_err("root = \"/x\"\n[serve]\nmax-conections = 3\n");
    assert!(e.contains("max-connections"), "a typo gets a suggestion: {e}");
    let e = toml_err("[lower-store]\nroot = \"/l\"\n[lower-store.serve]\nsocket = \"s\"\n");
    assert!(e.contains("only allowed in the top-level"), "{e}");
}

#[test]
fn binary_caches_table_with_nix_s_names_defaults_and_errors() {
    let s = toml_ok("root = \"/x\"\n");
    assert_eq!(s.caches, CacheSpec::default());
    assert!(s.caches.require_sigs);
    let s = toml_ok(
        "root = \"/x\"\n[binary-caches]\nsubstituters = [\"https://c.example\", \"file:///srv/c\"]\n\
         trusted-public-keys = [\"c-1:Bsb2+N3OKutsDQ6rf7HDuiALNUCUmsAgX1ZEr0bbFXk=\"]\nrequire-sigs = false\n\
         secret-key-files = [\"keys/c.sk\"]\nhttp-connections = 4\nnarinfo-cache-negative-ttl = 0\n",
    );
    assert_eq!(s.caches.substituters.len(), 2);
    assert!(!s.caches.require_sigs);
    assert_eq!(s.caches.secret_key_files, [p("/etc/overlay/keys/c.sk")]);
    assert_eq!(s.caches.http_connections, 4);
    assert_eq!(s.caches.narinfo_cache_negative_ttl, 0);
    let e = toml_err("root = \"/x\"\n[binary-caches]\ntrusted-public-keys = [\"nokey\"]\n");
    assert!(e.contains("binary-caches.trusted-public-keys") && e.contains("no ':'"), "{e}");
    let e = toml_err("root = \"/x\"\n[binary-caches]\nsubstituters = [\"s3://bucket\"]\n");
    assert!(e.contains("binary-caches.substituters") && e.contains("s3://bucket"), "{e}");
    let e = toml_err("root = \"/x\"\n[binary-caches]\nrequire-sig = true\n");
    assert!(e.contains("did you mean `require-sigs`"), "{e}");
    let e = toml_err("[lower-store]\nroot = \"/l\"\n[lower-store.binary-caches]\nrequire-sigs = true\n");
    assert!(e.contains("only allowed in the top-level"), "{e}");
}
