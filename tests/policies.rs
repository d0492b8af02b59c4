//! Lua policies on a real overlay: each shipped policy changes GC, copy-up or remount the
//! way its comments say; the engine keeps live paths whatever a policy says; a failing
//! hook leaves the store intact.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

struct Setup {
    base: PathBuf,
}

impl Setup {
    /// A config using `policy` (a file name in the test dir), the overlay mounted.
    fn new(base: &Path, policy_text: Option<&str>) -> (Setup, String) {
        let policy_line = match policy_text {
            Some(text) => {
                write(&base.join("policy.lua"), text);
                "policy = \"policy.lua\"\n"
            }
            None => "",
        };
        let cfg = write(
            &base.join("store.toml"),
            &format!("root = \"merged\"\nupper-layer = \"upper\"\n{policy_line}lower-store = {{ type = \"local\", root = \"lower\" }}\n[mount]\nworkdir = \"work\"\n[policy-limits]\ninstructions = 20000000\n"),
        );
        let s = Setup { base: base.to_path_buf() };
        ours(&s.lower_uri(), &["init"]).ok();
        ours(&cfg, &["mount"]).ok();
        (s, cfg)
    }
    fn lower_uri(&self) -> String {
        Layers::new(&self.base).lower_uri()
    }
    fn upper_entries(&self) -> Vec<String> {
        Layers::new(&self.base).upper_entries()
    }
    fn add(&self, cfg: &str, name: &str, text: &str) -> String {
        ours(cfg, &["add", &write(&self.base.join("in").join(name), text)]).ok().out().trim().to_string()
    }
    fn set_registration_time(&self, path: &str, time: i64) {
        let db = rusqlite::Connection::open(self.base.join("merged/nix/var/nix/db/db.sqlite")).unwrap();
        db.execute("update ValidPaths set registrationTime = ? where path = ?", rusqlite::params![time, path]).unwrap();
    }
}

fn shipped(name: &str) -> String {
    fs::read_to_string(Path::new(REPO).join("lua").join(name)).unwrap()
}

#[test]
fn default_policy_behaves_as_no_policy() {
    with_private_scratch(move |base| {
        for policy in [None, Some(shipped("default.lua"))] {
            let dir = base.join(if policy.is_some() { "with" } else { "without" });
            let (st, cfg) = Setup::new(&dir, policy.as_deref());
            let lower_path = ours(&st.lower_uri(), &["add", &write(&dir.join("in/l"), "l\n")]).ok().out().trim().to_string();
            // A validity query caches the lower row (Nix's eager copy-up).
            st.add(&cfg, "l", "l\n");
            let stats: serde_json::Value = serde_json::from_str(&ours(&cfg, &["stats", "--json"]).ok().out()).unwrap();
            assert_eq!(stats["lowerKnownUpper"]["paths"], 1, "{stats}");
            st.add(&cfg, "a", "a\n");
            let j: serde_json::Value = serde_json::from_str(&ours(&cfg, &["gc", "--json"]).ok().out()).unwrap();
            assert_eq!(j["pathsDeleted"], 2, "{j}");
            assert!(st.upper_entries().is_empty());
            ours(&cfg, &["verify-path", &lower_path]).ok();
        }
    });
}

#[test]
fn keep_recent_keeps_paths_registered_lately() {
    with_private_scratch(move |base| {
        let (st, cfg) = Setup::new(&base, Some(&shipped("keep-recent.lua")));
        let old = st.add(&cfg, "old", "old\n");
        let new = st.add(&cfg, "new", "new\n");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        st.set_registration_time(&old, now - 30 * 86400);
        let dry = ours(&cfg, &["gc", "--dry-run"]).ok().out();
        assert!(dry.contains(&format!("delete {old}")), "{dry}");
        assert!(dry.contains(&format!("keep {new} (registered less than 7 days ago)")), "{dry}");
        assert_eq!(st.upper_entries().len(), 2, "a dry run changes nothing");
        ours(&cfg, &["gc"]).ok();
        assert_eq!(st.upper_entries(), vec![base_of(&new)]);
    });
}

#[test]
fn keep_patterns_keeps_matching_names() {
    with_private_scratch(move |base| {
        let (st, cfg) = Setup::new(&base, Some(&shipped("keep-patterns.lua")));
        let gcc = st.add(&cfg, "gcc-13.2", "compiler\n");
        st.add(&cfg, "junk", "junk\n");
        let src = st.add(&cfg, "hello-source", "src\n");
        ours(&cfg, &["gc"]).ok();
        let mut want = vec![base_of(&gcc), base_of(&src)];
        want.sort();
        assert_eq!(st.upper_entries(), want);
    });
}

#[test]
fn gc_budget_deletes_oldest_first_up_to_the_budget() {
    with_private_scratch(move |base| {
        let policy = shipped("gc-budget.lua").replace("local BUDGET_BYTES = 512 * 1024 * 1024", "local BUDGET_BYTES = 150000");
        let (st, cfg) = Setup::new(&base, Some(&policy));
        let mut paths = Vec::new();
        for i in 0..5 {
            let p = st.add(&cfg, &format!("f{i}"), &"x".repeat(100_000 + i));
            st.set_registration_time(&p, 1_700_000_000 + i as i64);
            paths.push(p);
        }
        ours(&cfg, &["gc"]).ok();
        // The two oldest go (the second crosses the budget); the three newest stay.
        let mut want: Vec<String> = paths[2..].iter().map(|p| base_of(p)).collect();
        want.sort();
        assert_eq!(st.upper_entries(), want);
    });
}

#[test]
fn lazy_copy_up_never_caches_on_queries_but_keeps_closures_complete() {
    with_private_scratch(move |base| {
        let (st, cfg) = Setup::new(&base, Some(&shipped("lazy-copy-up.lua")));
        let l = ours(&st.lower_uri(), &["add", &write(&base.join("in/l"), "l\n")]).ok().out().trim().to_string();
        assert_eq!(st.add(&cfg, "l", "l\n"), l);
        let stats: serde_json::Value = serde_json::from_str(&ours(&cfg, &["stats", "--json"]).ok().out()).unwrap();
        assert_eq!(stats["lowerKnownUpper"]["paths"], 0, "{stats}");
        assert!(st.upper_entries().is_empty());
        ours(&cfg, &["verify-path", &l]).ok();
    });
}

#[test]
fn remount_command_remounts_through_the_policy() {
    with_private_scratch(move |base| {
        let (st, cfg) = Setup::new(&base, Some(&shipped("remount-command.lua")));
        let p = st.add(&cfg, "both", "both\n");
        ours(&st.lower_uri(), &["add", &base.join("in/both").to_string_lossy()]).ok();
        let r = ours(&cfg, &["delete", &p]).ok();
        assert!(r.stderr.contains("remounted"), "{}", r.stderr);
        assert!(st.upper_entries().is_empty());
        assert_eq!(fs::read_to_string(base.join("merged/nix/store").join(base_of(&p))).unwrap(), "both\n");
    });
}

#[test]
fn a_policy_cannot_delete_a_live_path_or_anything_outside_the_candidates() {
    with_private_scratch(move |base| {
        // Deletes every candidate, and names a rooted path and a lower path on top.
        let policy = "return { gc = function(c)\n  local out = {}\n  for _, x in ipairs(c) do out[#out + 1] = x.path end\n  out[#out + 1] = 'ROOTED'\n  out[#out + 1] = 'LOWER'\n  return out\nend }\n";
        let (st, cfg) = Setup::new(&base, Some("return {}"));
        let rooted = st.add(&cfg, "rooted", "r\n");
        let dead = st.add(&cfg, "dead", "d\n");
        std::os::unix::fs::symlink(&rooted, base.join("merged/nix/var/nix/gcroots/r")).unwrap();
        let lower = ours(&st.lower_uri(), &["add", &write(&base.join("in/low"), "low\n")]).ok().out().trim().to_string();
        write(&base.join("policy.lua"), &policy.replace("ROOTED", &rooted).replace("LOWER", &lower));
        ours(&cfg, &["gc"]).ok();
        assert_eq!(st.upper_entries(), vec![base_of(&rooted)]);
        ours(&cfg, &["verify-path", &lower]).ok();
        ours(&cfg, &["verify-path", &rooted]).ok();
        assert_eq!(ours(&cfg, &["verify-path", &dead]).code, 1);
    });
}

/// An erroring hook, an infinite loop and garbage return values: each leaves the store
/// intact, finishes within seconds with a message naming the policy file and line, and
/// GC (whose outcome changed) exits 1.
#[test]
fn failing_hooks_fall_back_to_safe_defaults() {
    with_private_scratch(move |base| {
        let (st, cfg) = Setup::new(&base, None);
        let cases = [
            ("return { gc = function(c)\n  error('boom')\nend }\n", "bad.lua:2: boom"),
            ("return { gc = function(c)\n  while true do end\nend }\n", "instruction budget exceeded"),
            ("return { gc = function(c)\n  return 42\nend }\n", "gc returned integer"),
            ("return { gc = function(c)\n  return { 'not a path' }\nend }\n", "not a path"),
            ("return { gc_roots = function()\n  return { 1, 2 }\nend }\n", "gc_roots"),
        ];
        for (text, expect) in cases {
            let cfg2 = write(
                &base.join("bad.toml"),
                "root = \"merged\"\nupper-layer = \"upper\"\npolicy = \"bad.lua\"\nlower-store = { type = \"local\", root = \"lower\" }\n[mount]\nworkdir = \"work\"\n[policy-limits]\ninstructions = 20000000\n",
            );
            write(&base.join("bad.lua"), text);
            let p = st.add(&cfg, "victim", "v\n");
            let t = Instant::now();
            let r = ours(&cfg2, &["gc"]);
            assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
            assert_eq!(r.code, 1, "{text}: {}", r.stderr);
            assert!(r.stderr.contains(expect), "{text}: expected {expect:?} in {}", r.stderr);
            assert!(r.stderr.contains("bad.lua"), "{}", r.stderr);
            assert_eq!(st.upper_entries(), vec![base_of(&p)], "{text}: the path must survive");
            ours(&cfg, &["verify", "--check-contents"]).ok();
        }
        // A copy_up hook that fails only skips an optional copy: a warning, exit 0.
        write(&base.join("bad.lua"), "return { copy_up = function(i, r)\n  error('nope')\nend }\n");
        let l = ours(&st.lower_uri(), &["add", &write(&base.join("in/l"), "l\n")]).ok().out().trim().to_string();
        let cfg2 = base.join("bad.toml");
        let r = ours(cfg2.to_str().unwrap(), &["add", &base.join("in/l").to_string_lossy()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.contains("bad.lua:2: nope"), "{}", r.stderr);
        ours(&cfg, &["verify-path", &l]).ok();
    });
}

#[test]
fn sandbox_escapes_are_refused_at_load() {
    let s = Scratch::new();
    for (i, code) in ["os.execute('touch /tmp/pwned')", "io.open('/etc/passwd')", "require('../../etc/passwd')", "load('\\27Lua\\84\\0')()"]
        .iter()
        .enumerate()
    {
        let f = write(&s.join(&format!("escape{i}.lua")), &format!("{code}\nreturn {{}}\n"));
        let r = run_cmd(std::process::Command::new(BIN).args(["policy", "check", &f]), None);
        assert_eq!(r.code, 1, "{code}: {}", r.stderr);
        assert!(r.stderr.contains(&format!("escape{i}.lua:1:")), "{code}: {}", r.stderr);
    }
}

/// A policy file others can write is a root shell: it is refused, naming the file and
/// the fix, before anything runs.
#[test]
fn a_policy_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let f = s.join("p/policy.lua");
    write(&f, "return {}\n");
    fs::set_permissions(s.join("p"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
    let mut c = std::process::Command::new(BIN);
    c.args(["policy", "check"]).arg(&f);
    let r = run_cmd(&mut c, None);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains(&format!("policy file '{}' is writable by its group or by others", f.display())), "{}", r.stderr);
    assert!(r.stderr.contains("chmod go-w"), "{}", r.stderr);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let r = run_cmd(&mut c, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
