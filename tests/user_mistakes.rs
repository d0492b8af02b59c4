//! The mistakes users make most, each through the binary: the exit status is Nix's
//! convention (2 for usage and configuration, 1 for an operation that failed), the
//! message names the file, key, path or command at fault and says what to do, and
//! nothing is mounted or half-made afterwards.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// Exit status and stderr of our binary on spec `cfg`.
fn fails(cfg: &str, args: &[&str]) -> (i32, String) {
    let r = ours(cfg, args);
    assert_ne!(r.code, 0, "{args:?} should fail: {}", r.out());
    (r.code, r.stderr)
}

fn mounted_at(p: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let escaped = p.to_str().unwrap().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(escaped.as_str()))
}

#[test]
fn the_spec_is_missing_malformed_or_misspelt() {
    let sc = Scratch::new();
    // 1. No store named at all.
    let r = run_cmd(Command::new(BIN).args(["path-info", "/nix/store/x"]).env_remove("OVERLAY_STORE_CONFIG"), None);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no store given: pass --config FILE"), "{}", r.stderr);
    // 2. A spec path that is wrong.
    let missing = sc.join("etc/stor.toml");
    let (code, err) = fails(missing.to_str().unwrap(), &["init"]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("cannot read store spec '{}'", missing.display())) && err.contains("give the path"), "{err}");
    // 3. TOML that does not parse: file, line and column.
    let bad = write(&sc.join("bad.toml"), "type = \"local-overlay\nroot = \"m\"\n");
    let (code, err) = fails(&bad, &["init"]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{bad}:1:")) && err.contains("invalid TOML"), "{err}");
    // 4. A key spelt as in nix.conf's underscore habit: named, with the right one.
    let typo = write(
        &sc.join("typo.toml"),
        "type = \"local-overlay\"\nroot = \"m\"\nupper_layer = \"u\"\n[lower-store]\ntype = \"local\"\nroot = \"l\"\n",
    );
    let (code, err) = fails(&typo, &["init"]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("{typo}:3:")) && err.contains("did you mean `upper-layer`"), "{err}");
    // Nothing was created for any of them.
    for d in ["m", "u", "l"] {
        assert!(!sc.join(d).exists(), "{d} was created");
    }
}

#[test]
fn a_path_that_is_not_in_the_store() {
    let sc = Scratch::new();
    let store = format!("local?root={}", sc.join("s").display());
    ours(&store, &["init"]).ok();
    let p = "/nix/store/00000000000000000000000000000000-nothing";
    let (code, err) = fails(&store, &["query", "--references", p]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("path '{p}' is not valid")), "{err}");
    // Not a store path at all: a usage error naming it.
    let (code, err) = fails(&store, &["query", "--references", "/tmp/not-a-store-path"]);
    assert!(code == 1 || code == 2, "{code}");
    assert!(err.contains("/tmp/not-a-store-path"), "{err}");
}

#[test]
fn overlay_mistakes_on_a_real_kernel() {
    with_private_scratch(|base| {
        let l = Layers::new(&base);
        let cfg = l.config();

        // 5. The lower store is missing: `mount` says which key names it.
        let (code, err) = fails(&cfg, &["mount"]);
        assert_eq!(code, 1);
        assert!(err.contains(&format!("lower store directory '{}' does not exist", l.lower_real().display())), "{err}");
        assert!(err.contains("`lower-store`"), "{err}");
        assert!(!mounted_at(&l.real()));

        // 6. A directory where the lower store should be, but no store in it.
        fs::create_dir_all(l.lower_real()).unwrap();
        fs::create_dir_all(l.upper()).unwrap();
        let (code, err) = fails(&cfg, &["path-info", "/nix/store/00000000000000000000000000000000-x"]);
        assert_eq!(code, 1);
        assert!(err.contains("is not a Nix store: it has no database") && err.contains("init"), "{err}");
        fs::remove_dir_all(l.lower()).unwrap();
        ours(&l.lower_uri(), &["init"]).ok();

        // 7. The overlay is not mounted: a command that needs it says how to mount it.
        ours(&cfg, &["init"]).ok();
        let file = write(&base.join("f"), "x\n");
        let (code, err) = fails(&cfg, &["add", &file]);
        assert_eq!(code, 1);
        assert!(err.contains("not mounted") && err.contains(&format!("overlay-store -c '{cfg}' mount")), "{err}");
        assert!(l.upper_entries().is_empty(), "nothing landed in the upper layer");

        // 8. Not root: `mount` says so before touching anything. (Allowed to read and
        // search directories: TMPDIR's parents may be private to root.)
        let nobody = run_cmd(
            Command::new("setpriv").args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=+dac_read_search",
                "--ambient-caps=+dac_read_search",
                BIN,
                "-c",
                &cfg,
                "mount",
            ]),
            None,
        );
        assert_eq!(nobody.code, 1, "{}", nobody.stderr);
        assert!(nobody.stderr.contains("not permitted: run as root"), "{}", nobody.stderr);
        assert!(!mounted_at(&l.real()));

        // 9. The workdir on another file system than the upper layer.
        let work_fs = base.join("other-fs");
        fs::create_dir_all(&work_fs).unwrap();
        nix::mount::mount(Some("tmpfs"), &work_fs, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
        let cross = write(
            &base.join("cross.toml"),
            "type = \"local-overlay\"\nroot = \"merged\"\nupper-layer = \"upper\"\n[lower-store]\ntype = \"local\"\nroot = \"lower\"\n[mount]\nworkdir = \"other-fs/work\"\n",
        );
        let (code, err) = fails(&cross, &["mount"]);
        assert_eq!(code, 1);
        assert!(err.contains("is on another filesystem than the upper layer"), "{err}");
        assert!(!mounted_at(&l.real()));

        // 10. The upper layer on a file system OverlayFS cannot use (an overlay itself).
        let ov = base.join("ov");
        mount_overlay(&l.lower_real(), &base.join("ov-upper"), &base.join("ov-work"), &ov);
        let nested = write(
            &base.join("nested.toml"),
            "type = \"local-overlay\"\nroot = \"merged\"\nupper-layer = \"ov/upper\"\n[lower-store]\ntype = \"local\"\nroot = \"lower\"\n[mount]\nworkdir = \"ov/work\"\n",
        );
        ours(&nested, &["init"]).ok();
        let (code, err) = fails(&nested, &["mount"]);
        assert_eq!(code, 1);
        assert!(err.contains("is itself on OverlayFS") && err.contains("ext4"), "{err}");
        assert!(!mounted_at(&l.real()));
        let doc: serde_json::Value = serde_json::from_str(&ours(&nested, &["doctor", "--json"]).out()).unwrap();
        let upper = doc["checks"].as_array().unwrap().iter().find(|c| c["name"] == "upper-layer").unwrap().clone();
        assert_eq!(upper["status"], "fail", "{upper}");

        // 11. A kernel without OverlayFS: doctor names it and the fix (the kernel's list
        // of file systems replaced, in this test's mount namespace only).
        let no_overlay: String =
            fs::read_to_string("/proc/filesystems").unwrap().lines().filter(|l| !l.contains("overlay")).map(|l| format!("{l}\n")).collect();
        let fake = write(&base.join("filesystems"), &no_overlay);
        nix::mount::mount(Some(fake.as_str()), "/proc/filesystems", None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap();
        let r = ours(&cfg, &["doctor"]);
        nix::mount::umount("/proc/filesystems").unwrap();
        assert_eq!(r.code, 1);
        assert!(
            r.out().contains("FAIL  kernel: this kernel has no OverlayFS") && r.out().contains("to fix: modprobe overlay"),
            "{}",
            r.out()
        );

        // 12. A policy with a syntax error: file and line, before anything runs.
        write(&base.join("policy.lua"), "return {\n  gc = function(dead) return dead end\n");
        let with_policy = l.config_with("policy = \"policy.lua\"");
        let (code, err) = fails(&with_policy, &["add", &file]);
        assert_eq!(code, 2);
        assert!(err.contains(&format!("{}:3:", base.join("policy.lua").display())) && err.contains("expected"), "{err}");
        assert!(l.upper_entries().is_empty());
    });
}
