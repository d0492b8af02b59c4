//! The overlay store on real OverlayFS (root, a private mount namespace and a tmpfs per
//! test), following Nix's own local-overlay-store suite, with Nix 2.8 as the oracle.

mod common;

use std::fs;
use std::path::Path;

use common::*;

#[test]
fn reads_fall_through_and_adds_land_in_the_upper_layer() {
    if !have_nix() {
        return;
    }
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        // The lower store: built by real Nix (derivers, DerivationOutputs, a self-reference).
        let top = {
            let sc = Scratch::new();
            let f = write_default_nix(&base.join("expr"));
            let r = nix(&sc, "nix-build", &["--store", l.lower().to_str().unwrap(), f.to_str().unwrap(), "--no-out-link"], None).ok();
            r.lines().into_iter().find(|x| x.ends_with("-top")).unwrap()
        };
        let cfg = l.config();
        ours(&cfg, &["mount"]).ok();
        ours(&cfg, &["check-mount"]).ok();
        let lower_paths = ours(&l.lower_uri(), &["query", "--requisites", &top]).ok().lines();
        let drv = ours(&l.lower_uri(), &["query", "--deriver", &top]).ok().out().trim().to_string();
        // Every query agrees with Nix on the lower store.
        let sc = Scratch::new();
        let lower = l.lower();
        let nq = |args: &[&str]| {
            let mut v = nix_store(&sc, &lower, args).ok().lines();
            v.sort();
            v
        };
        let oq = |args: &[&str]| {
            let mut a = vec!["query"];
            a.extend_from_slice(args);
            let mut v = ours(&cfg, &a).ok().lines();
            v.sort();
            v
        };
        for p in lower_paths.iter().chain([&drv]) {
            for flag in ["--references", "--referrers", "--deriver", "--hash", "--size", "--requisites", "--referrers-closure"] {
                assert_eq!(oq(&[flag, p]), nq(&["-q", flag, p]), "{flag} {p}");
            }
            // Nix 2.8's nix-store has no --valid-derivers: compare with the lower store alone.
            let mut lv = ours(&l.lower_uri(), &["query", "--valid-derivers", p]).ok().lines();
            lv.sort();
            assert_eq!(oq(&["--valid-derivers", p]), lv);
        }
        assert_eq!(oq(&["--outputs", &drv]), nq(&["-q", "--outputs", &drv]));
        let hp = &Path::new(&top).file_name().unwrap().to_str().unwrap()[..32];
        assert_eq!(ours(&cfg, &["path-from-hash-part", hp]).ok().out().trim(), top);
        ours(&cfg, &["verify-path", &top]).ok();
        let pj: serde_json::Value = serde_json::from_str(&ours(&cfg, &["path-info", "--json", &top]).ok().out()).unwrap();
        assert_eq!(pj[&top]["deriver"], serde_json::Value::from(drv.clone()));
        // Nothing in the upper layer yet.
        assert!(l.upper_entries().is_empty(), "{:?}", l.upper_entries());

        // Adding content the lower store has writes nothing upper.
        let again = add(&cfg, &write(&base.join("in/hello.txt"), "hello\n"));
        assert_eq!(again, "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");
        assert!(l.upper_entries().is_empty(), "{:?}", l.upper_entries());
        // New content lands in the upper layer, readable through the mount.
        let new = add(&cfg, &write(&base.join("in/new.txt"), "new\n"));
        let base_name = Path::new(&new).file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(l.upper_entries(), vec![base_name.clone()]);
        assert!(!l.lower_real().join(&base_name).exists());
        assert_eq!(fs::read_to_string(l.real().join(&base_name)).unwrap(), "new\n");
        // The upper database verifies under stock Nix as a plain local store.
        let v = nix(&sc, "nix-store", &["--store", &l.nix_view(), "--verify", "--check-contents"], None);
        assert_eq!(v.code, 0, "{}", v.stderr);
        ours(&cfg, &["verify", "--check-contents"]).ok();
        // The lower store was not touched.
        let lv = nix_store(&sc, &lower, &["--verify", "--check-contents"]);
        assert_eq!(lv.code, 0);
        assert!(!lower_paths.contains(&new));
        assert_eq!(nix_store(&sc, &lower, &["-q", "--hash", &new]).code, 1);
        ours(&cfg, &["umount"]).ok();
    });
}

#[test]
fn a_nix_closure_imports_only_its_new_paths_upper() {
    if !have_nix() {
        return;
    }
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let sc = Scratch::new();
        // Lower: hello.txt and `dep` only. Scratch store: the whole `top` closure.
        let expr = write_default_nix(&base.join("expr"));
        let dep_nix = base.join("expr/dep.nix");
        fs::write(
            &dep_nix,
            r#"derivation {
    name = "dep"; system = builtins.currentSystem; builder = "/busybox";
    args = [ "sh" "-c" "/busybox mkdir $out && echo dep > $out/file" ];
  }
"#,
        )
        .unwrap();
        let lower = l.lower();
        let dep = nix(&sc, "nix-build", &["--store", lower.to_str().unwrap(), dep_nix.to_str().unwrap(), "--no-out-link"], None)
            .ok()
            .out()
            .trim()
            .to_string();
        nix_store(&sc, &lower, &["--add", base.join("expr/hello.txt").to_str().unwrap()]).ok();
        let other = base.join("other");
        let top = nix(&sc, "nix-build", &["--store", other.to_str().unwrap(), expr.to_str().unwrap(), "--no-out-link"], None)
            .ok()
            .lines()
            .into_iter()
            .find(|x| x.ends_with("-top"))
            .unwrap();
        let closure = nix_store(&sc, &other, &["-qR", &top]).ok().lines();
        assert!(closure.contains(&dep));
        let mut args = vec!["--export"];
        args.extend(closure.iter().map(String::as_str));
        let stream = nix_store(&sc, &other, &args).ok().stdout;

        let cfg = l.config();
        ours(&cfg, &["mount"]).ok();
        let imported = ours_in(&cfg, &["import"], Some(&stream)).ok().lines();
        assert_eq!(imported.len(), closure.len());
        // Only `top` is new: the rest is satisfied by the lower store through copy-up.
        let top_base = Path::new(&top).file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(l.upper_entries(), vec![top_base]);
        for p in &closure {
            assert_eq!(ours(&cfg, &["query", "--hash", p]).ok().out(), nix_store(&sc, &other, &["-q", "--hash", p]).ok().out());
        }
        // The copied-up rows make the upper database closure-complete for stock Nix.
        let v = nix(&sc, "nix-store", &["--store", &l.nix_view(), "--verify", "--check-contents"], None);
        assert_eq!(v.code, 0, "{}", v.stderr);
        let nreq = {
            let mut v = nix(&sc, "nix-store", &["--store", &l.nix_view(), "-qR", &top], None).ok().lines();
            v.sort();
            v
        };
        let mut creq = closure.clone();
        creq.sort();
        assert_eq!(nreq, creq);
        ours(&cfg, &["umount"]).ok();
    });
}

#[test]
fn a_path_added_to_the_lower_store_while_mounted_shows_after_a_remount() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config();
        add(&l.lower_uri(), &write(&base.join("in/one"), "one\n"));
        ours(&cfg, &["mount"]).ok();
        let two = add(&l.lower_uri(), &write(&base.join("in/two"), "two\n"));
        // Valid at once (the lower database is read live) …
        assert_eq!(ours(&cfg, &["query", "--hash", &two]).ok().out().trim().len(), 59);
        ours(&cfg, &["remount"]).ok();
        // … and its files are visible and verify through the mount after the remount.
        ours(&cfg, &["verify-path", &two]).ok();
        let name = Path::new(&two).file_name().unwrap();
        assert_eq!(fs::read_to_string(l.real().join(name)).unwrap(), "two\n");
        assert!(l.upper_entries().is_empty());
        // A managed mount round-trips: mount is a no-op when mounted, umount when not.
        ours(&cfg, &["mount"]).ok();
        ours(&cfg, &["umount"]).ok();
        ours(&cfg, &["umount"]).ok();
        let r = ours(&cfg, &["check-mount"]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("not mounted"), "{}", r.stderr);
        ours(&cfg, &["mount"]).ok();
        ours(&cfg, &["check-mount"]).ok();
    });
}

#[test]
fn wrong_mounts_are_reported_for_toml_and_uri() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config();
        add(&l.lower_uri(), &write(&base.join("in/one"), "one\n"));
        ours(&cfg, &["init"]).ok();
        let other = base.join("other");
        fs::create_dir_all(&other).unwrap();
        let uri = |root: &Path, lower: &Path, upper: &Path| {
            format!("local-overlay://?root={}&lower-store={}&upper-layer={}", root.display(), lower.display(), upper.display())
        };
        // Not mounted at all.
        let r = ours(&cfg, &["query", "--hash", "/nix/store/00000000000000000000000000000000-x"]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains(&format!("overlay filesystem '{}' mounted incorrectly", l.real().display())), "{}", r.stderr);
        assert!(r.stderr.contains("mount -t overlay overlay -o"), "{}", r.stderr);
        // Wrong lower.
        mount_overlay(&other, &l.upper(), &base.join("work"), &l.real());
        let r = ours(&cfg, &["check-mount"]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("mounted incorrectly"));
        assert!(r.stderr.contains(&format!("lowerdir={}", other.display())), "{}", r.stderr);
        let r = ours(&uri(&l.merged_root(), &l.lower(), &l.upper()), &["check-mount"]);
        assert_eq!(r.code, 1);
        nix::mount::umount(&l.real()).unwrap();
        // Wrong upper.
        let up2 = base.join("upper2");
        let work2 = base.join("work2");
        mount_overlay(&l.lower_real(), &up2, &work2, &l.real());
        assert_eq!(ours(&cfg, &["check-mount"]).code, 1);
        assert_eq!(ours(&uri(&l.merged_root(), &l.lower(), &l.upper()), &["check-mount"]).code, 1);
        assert_eq!(ours(&uri(&l.merged_root(), &l.lower(), &up2), &["check-mount"]).code, 0);
        // `mount` refuses to cover a wrong mount.
        let r = ours(&cfg, &["mount"]);
        assert_eq!(r.code, 1);
        nix::mount::umount(&l.real()).unwrap();
        // Right mount, wrong root (the spec names another mount point).
        ours(&cfg, &["mount"]).ok();
        let r = ours(&uri(&other, &l.lower(), &l.upper()), &["check-mount"]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains(&format!("overlay filesystem '{}/nix/store' mounted incorrectly", other.display())), "{}", r.stderr);
        // Stacked mounts: the top one counts.
        let w3 = base.join("work3");
        mount_overlay(&other, &base.join("upper3"), &w3, &l.real());
        assert_eq!(ours(&cfg, &["check-mount"]).code, 1);
        nix::mount::umount(&l.real()).unwrap();
        ours(&cfg, &["check-mount"]).ok();
        // check-mount = false opens anyway.
        let r = ours(
            &format!("{}&check-mount=false", uri(&other, &l.lower(), &l.upper())),
            &["path-info", "--json", "/nix/store/00000000000000000000000000000000-x"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    });
}

#[test]
fn paths_with_spaces_commas_and_colons() {
    let s = Scratch::new();
    let base = s.path().join("a dir, with: marks");
    with_private_mounts(s.path(), move || {
        let l = Layers::new(&base);
        let cfg = l.config();
        let one = add(&l.lower_uri(), &write(&base.join("in/one"), "one\n"));
        ours(&cfg, &["mount"]).ok();
        ours(&cfg, &["check-mount"]).ok();
        ours(&cfg, &["verify-path", &one]).ok();
        let printed = ours(&cfg, &["uri"]).ok().out();
        assert!(printed.starts_with("local-overlay://?"), "{printed}");
        assert_eq!(ours(printed.trim(), &["check-mount"]).code, 0);
    });
}

/// lower (local) ← middle overlay ← top overlay: queries answer through both levels.
#[test]
fn three_layer_nested_overlay() {
    with_private_scratch(move |base| {
        let bottom = base.join("bottom");
        let bottom_uri = format!("local?root={}", bottom.display());
        let a = add(&bottom_uri, &write(&base.join("in/a"), "a\n"));
        let mid = write(
            &base.join("mid.toml"),
            "root = \"mid\"\nupper-layer = \"mid-upper\"\nlower-store = { type = \"local\", root = \"bottom\" }\n[mount]\nworkdir = \"mid-work\"\n",
        );
        ours(&mid, &["mount"]).ok();
        let b = add(&mid, &write(&base.join("in/b"), "b\n"));
        let top = write(
            &base.join("top.toml"),
            "root = \"top\"\nupper-layer = \"top-upper\"\nlower-store = \"mid.toml\"\n[mount]\nworkdir = \"top-work\"\n",
        );
        ours(&top, &["mount"]).ok();
        ours(&top, &["check-mount"]).ok();
        for p in [&a, &b] {
            ours(&top, &["verify-path", p]).ok();
            assert_eq!(ours(&top, &["query", "--hash", p]).ok().out(), ours(&mid, &["query", "--hash", p]).ok().out());
        }
        // A new path referring to both lower levels lands in the top upper layer only.
        let c = add(&top, &write(&base.join("in/c"), "c\n"));
        assert_eq!(listing(&base.join("top-upper")).into_iter().filter(|n| n != ".links").count(), 1);
        assert!(listing(&base.join("mid-upper")).iter().all(|n| !c.contains(n.as_str())));
        ours(&top, &["verify", "--check-contents"]).ok();
        // The middle store was opened read-only: its database did not learn about `c`.
        assert_eq!(ours(&mid, &["query", "--hash", &c]).code, 1);
        let uri = ours(&top, &["uri"]).ok().out();
        assert!(uri.contains("lower-store=local-overlay"), "{uri}");
    });
}

/// Every command that only reads checks the mount too: a wrongly mounted overlay must
/// not answer from the wrong layers, whatever the command, TOML or URI.
#[test]
fn read_commands_refuse_a_wrongly_mounted_overlay() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config();
        let one = add(&l.lower_uri(), &write(&base.join("in/one"), "one\n"));
        ours(&cfg, &["mount"]).ok();
        ours(&cfg, &["query", "--hash", &one]).ok();
        nix::mount::umount(&l.real()).unwrap();
        let uri = format!(
            "local-overlay://?root={}&lower-store={}&upper-layer={}",
            l.merged_root().display(),
            l.lower().display(),
            l.upper().display()
        );
        let hash = base_of(&one)[..32].to_string();
        let reads: Vec<Vec<&str>> = vec![
            vec!["query", "--hash", &one],
            vec!["query", "--requisites", &one],
            vec!["path-info", "--json", &one],
            vec!["path-from-hash-part", &hash],
            vec!["dump", &one],
            vec!["export", &one],
            vec!["verify-path", &one],
        ];
        let other = base.join("other");
        fs::create_dir_all(&other).unwrap();
        for (what, lower, upper, work) in [
            ("wrong lower", other.clone(), l.upper(), base.join("work")),
            ("wrong upper", l.lower_real(), base.join("up2"), base.join("work2")),
        ] {
            mount_overlay(&lower, &upper, &work, &l.real());
            for store in [&cfg, &uri] {
                for args in &reads {
                    let r = ours(store, args);
                    assert_eq!(r.code, 1, "{what}: {args:?} answered on {store}: {}", r.stdout.len());
                    assert!(r.stderr.contains("mounted incorrectly"), "{what}: {args:?}: {}", r.stderr);
                }
            }
            nix::mount::umount(&l.real()).unwrap();
        }
    });
}
