//! Deleting from an overlay on real OverlayFS: delete, GC, optimise, verify, stats,
//! hostile upper-layer contents. Lower stores are never touched.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn no_whiteouts(dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        assert!(!e.file_type().unwrap().is_char_device(), "whiteout left in the upper layer: {:?}", e.path());
    }
}

fn deleting_a_path_in_both_layers_keeps_the_lower_copy(hook: bool) {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let hook_log = base.join("hook.log");
        let extra = if hook {
            let script = write(
                &base.join("remount.sh"),
                &format!("#!/bin/sh\necho \"$1\" >> '{}'\nexec mount -o remount \"$1\"\n", hook_log.display()),
            );
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
            format!("remount-hook = \"{script}\"\n")
        } else {
            String::new()
        };
        let cfg = l.config_with(&extra);
        ours(&l.lower_uri(), &["init"]).ok();
        ours(&cfg, &["mount"]).ok();
        let file = write(&base.join("in/both"), "both\n");
        let p = add(&cfg, &file);
        assert_eq!(l.upper_entries(), vec![base_of(&p)]);
        // The lower store gets the same path later.
        assert_eq!(add(&l.lower_uri(), &file), p);
        let before = l.lower_fingerprint();
        let upper_ino = fs::metadata(l.real().join(base_of(&p))).unwrap().ino();
        assert_ne!(upper_ino, fs::metadata(l.lower_real().join(base_of(&p))).unwrap().ino(), "the upper copy hides the lower one");
        let r = ours(&cfg, &["delete", &p]).ok();
        assert!(r.out().starts_with("1 store paths deleted"), "{}", r.out());
        // Gone from the upper layer, no whiteout, and the lower copy shows through the mount.
        assert!(l.upper_entries().is_empty(), "{:?}", l.upper_entries());
        no_whiteouts(&l.upper());
        let merged = fs::metadata(l.real().join(base_of(&p))).unwrap();
        let lower = fs::metadata(l.lower_real().join(base_of(&p))).unwrap();
        assert_eq!(merged.ino(), lower.ino(), "the merged file is the lower file");
        assert_eq!(fs::read_to_string(l.real().join(base_of(&p))).unwrap(), "both\n");
        assert_eq!(l.lower_fingerprint(), before);
        // Still valid: through the lower store.
        ours(&cfg, &["verify-path", &p]).ok();
        ours(&cfg, &["verify", "--check-contents"]).ok();
        assert!(!l.state().join("overlay-remount-needed").exists());
        if hook {
            assert_eq!(fs::read_to_string(&hook_log).unwrap().trim(), l.real().to_str().unwrap());
        }
    });
}

#[test]
fn delete_in_both_layers_with_the_builtin_remount() {
    deleting_a_path_in_both_layers_keeps_the_lower_copy(false);
}

#[test]
fn delete_in_both_layers_with_a_remount_hook() {
    deleting_a_path_in_both_layers_keeps_the_lower_copy(true);
}

/// A Nix closure imported into an empty-lower overlay: referenced paths are refused, then
/// deletable referrers first; GC with a root keeps the closure, without one empties the
/// upper layer.
#[test]
fn referenced_paths_are_refused_and_gc_respects_roots() {
    if !have_nix() {
        return;
    }
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let sc = Scratch::new();
        let other = base.join("other");
        let top = nix_build_default(&sc, &other);
        let closure = nix_store(&sc, &other, &["-qR", &top]).ok().lines();
        let mut args = vec!["--export"];
        args.extend(closure.iter().map(String::as_str));
        let stream = nix_store(&sc, &other, &args).ok().stdout;
        // The lower store holds only hello.txt, so copied-up rows are in play too.
        let hello = add(&l.lower_uri(), &write(&base.join("in/hello.txt"), "hello\n"));
        let cfg = l.config_with("");
        ours(&cfg, &["mount"]).ok();
        ours_in(&cfg, &["import"], Some(&stream)).ok();
        let before = l.lower_fingerprint();
        let dep = closure.iter().find(|p| p.ends_with("-dep")).unwrap().clone();
        let r = ours(&cfg, &["delete", &dep]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains(&format!("Cannot delete path '{dep}' since it is still alive.")), "{}", r.stderr);
        assert_eq!(r.out().trim(), "0 store paths deleted, 0.00 MiB freed");
        let r = ours(&cfg, &["delete", &hello]);
        assert_eq!(r.code, 1, "hello.txt is referenced by top");
        // A root keeps the whole closure.
        let gcroots = l.state().join("gcroots");
        std::os::unix::fs::symlink(&top, gcroots.join("keep")).unwrap();
        let roots = ours(&cfg, &["gc", "--print-roots"]).ok().out();
        assert!(roots.contains(&format!("{} -> {top}", gcroots.join("keep").display())), "{roots}");
        let dead = ours(&cfg, &["gc", "--print-dead"]).ok().lines();
        assert!(!dead.contains(&top) && !dead.contains(&dep) && !dead.contains(&hello), "{dead:?}");
        ours(&cfg, &["gc"]).ok();
        for p in &closure {
            ours(&cfg, &["verify-path", p]).ok();
        }
        // Referrers first: top, then dep.
        fs::remove_file(gcroots.join("keep")).unwrap();
        let topdoc = closure.iter().find(|p| p.ends_with("-top-doc")).cloned();
        let mut first = vec![top.clone()];
        first.extend(topdoc);
        let mut a = vec!["delete"];
        a.extend(first.iter().map(String::as_str));
        ours(&cfg, &a).ok();
        ours(&cfg, &["delete", &dep]).ok();
        // GC without roots empties the upper layer; the lower store is untouched.
        let j: serde_json::Value = serde_json::from_str(&ours(&cfg, &["gc", "--json"]).ok().out()).unwrap();
        assert!(j["lowerRowsForgotten"].as_u64().unwrap() >= 1, "{j}");
        assert!(l.upper_entries().is_empty(), "{:?}", l.upper_entries());
        assert_eq!(l.lower_fingerprint(), before);
        assert_eq!(ours(&cfg, &["gc", "--print-live"]).ok().out(), "");
        ours(&cfg, &["verify", "--check-contents"]).ok();
        ours(&cfg, &["verify-path", &hello]).ok();
        let v = nix_store(&sc, &l.lower(), &["--verify", "--check-contents"]);
        assert_eq!(v.code, 0);
    });
}

#[test]
fn optimise_removes_an_upper_duplicate_of_a_later_lower_path() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config_with("");
        ours(&l.lower_uri(), &["init"]).ok();
        ours(&cfg, &["mount"]).ok();
        let big = base.join("in/big");
        fs::create_dir_all(&big).unwrap();
        for i in 0..20 {
            fs::write(big.join(format!("f{i}")), vec![i as u8; 50_000]).unwrap();
        }
        let p = add(&cfg, big.to_str().unwrap());
        let only_upper = add(&cfg, &write(&base.join("in/solo"), "solo\n"));
        assert_eq!(add(&l.lower_uri(), big.to_str().unwrap()), p);
        let st: serde_json::Value = serde_json::from_str(&ours(&cfg, &["stats", "--json"]).ok().out()).unwrap();
        assert_eq!(st["duplicates"]["paths"], 1, "{st}");
        assert_eq!(st["upperOnly"]["paths"], 1, "{st}");
        let r: serde_json::Value = serde_json::from_str(&ours(&cfg, &["optimise", "--json"]).ok().out()).unwrap();
        assert_eq!(r["pathsDeduplicated"], 1, "{r}");
        assert!(r["bytesFreed"].as_u64().unwrap() >= 1_000_000, "{r}");
        assert_eq!(l.upper_entries(), vec![base_of(&only_upper)]);
        no_whiteouts(&l.upper());
        ours(&cfg, &["verify", "--check-contents"]).ok();
        let st: serde_json::Value = serde_json::from_str(&ours(&cfg, &["stats", "--json"]).ok().out()).unwrap();
        assert_eq!(st["duplicates"]["paths"], 0, "{st}");
        assert_eq!(st["lowerKnownUpper"]["paths"], 1, "{st}");
    });
}

#[test]
fn verify_checks_copied_up_lower_paths_and_ignores_lower_only_ones() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config_with("");
        let known = add(&l.lower_uri(), &write(&base.join("in/known"), "known\n"));
        let unknown = add(&l.lower_uri(), &write(&base.join("in/unknown"), "unknown\n"));
        ours(&cfg, &["mount"]).ok();
        // Adding the same content caches `known`'s row upper (a validity query).
        add(&cfg, &base.join("in/known").to_string_lossy());
        let tamper = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            let f = l.lower_real().join(base_of(p));
            fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(&f, "tampered\n").unwrap();
        };
        tamper(&unknown);
        ours(&cfg, &["remount"]).ok();
        ours(&cfg, &["verify", "--check-contents"]).ok();
        tamper(&known);
        ours(&cfg, &["remount"]).ok();
        let r = ours(&cfg, &["verify", "--check-contents"]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains(&format!("path '{known}' was modified!")), "{}", r.stderr);
        assert!(!r.stderr.contains(&unknown));
    });
}

/// Symlinks in the upper layer pointing out of the store are removed, never followed.
#[test]
fn gc_removes_hostile_upper_entries_without_following_them() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config_with("");
        let keep_lower = add(&l.lower_uri(), &write(&base.join("in/k"), "k\n"));
        ours(&cfg, &["mount"]).ok();
        let victim = base.join("victim");
        write(&victim.join("precious"), "precious\n");
        let up = l.upper();
        std::os::unix::fs::symlink(&victim, up.join("00000000000000000000000000000000-evil")).unwrap();
        fs::create_dir_all(up.join("11111111111111111111111111111111-dir")).unwrap();
        std::os::unix::fs::symlink(&victim, up.join("11111111111111111111111111111111-dir/link")).unwrap();
        std::os::unix::fs::symlink(victim.join("precious"), up.join("not-a-store-path")).unwrap();
        // Planted lock entries: a symlink GC would write through, a FIFO it would block on.
        std::os::unix::fs::symlink(victim.join("precious"), up.join("22222222222222222222222222222222-x.lock")).unwrap();
        nix::unistd::mkfifo(&up.join("33333333333333333333333333333333-y.lock"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        ours(&cfg, &["remount"]).ok();
        let r = ours(&cfg, &["gc"]).ok();
        assert!(r.out().starts_with("5 store paths deleted"), "{}", r.out());
        assert!(l.upper_entries().is_empty(), "{:?}", l.upper_entries());
        assert_eq!(fs::read_to_string(victim.join("precious")).unwrap(), "precious\n");
        assert!(l.lower_real().join(base_of(&keep_lower)).exists());
    });
}

/// A GC stops once --max-freed bytes are freed.
#[test]
fn max_freed_really_stops() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config_with("");
        ours(&l.lower_uri(), &["init"]).ok();
        ours(&cfg, &["mount"]).ok();
        for i in 0..10 {
            add(&cfg, &write(&base.join(format!("in/f{i}")), &"x".repeat(100_000 + i)));
        }
        let j: serde_json::Value = serde_json::from_str(&ours(&cfg, &["gc", "--max-freed", "250000", "--json"]).ok().out()).unwrap();
        let freed = j["bytesFreed"].as_u64().unwrap();
        assert!((250_000..400_000).contains(&freed), "{j}");
        assert_eq!(l.upper_entries().len(), 7);
        ours(&cfg, &["verify", "--check-contents"]).ok();
        ours(&cfg, &["gc"]).ok();
        assert!(l.upper_entries().is_empty());
    });
}

/// `verify --repair --repair-from` restores a modified upper path from an export file and
/// from another store, and a removed one from a store root.
#[test]
fn repair_restores_modified_and_missing_upper_paths() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config_with("");
        ours(&l.lower_uri(), &["init"]).ok();
        ours(&cfg, &["mount"]).ok();
        let d = base.join("in/tree");
        write(&d.join("a"), "a\n");
        write(&d.join("sub/b"), "b\n");
        let p = add(&cfg, d.to_str().unwrap());
        let backup = base.join("backup.export");
        fs::write(&backup, ours(&cfg, &["export", &p]).ok().stdout).unwrap();
        let other = format!("local?root={}", base.join("other").display());
        add(&other, d.to_str().unwrap());
        let tamper = || {
            let f = l.upper().join(base_of(&p)).join("sub/b");
            Command::new("chmod").args(["-R", "u+w"]).arg(l.upper().join(base_of(&p))).status().unwrap();
            fs::write(&f, "evil\n").unwrap();
            ours(&cfg, &["remount"]).ok();
            assert_eq!(ours(&cfg, &["verify", "--check-contents"]).code, 1);
        };
        tamper();
        let r = ours(&cfg, &["verify", "--check-contents", "--repair", "--repair-from", backup.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.contains(&format!("repaired path '{p}'")), "{}", r.stderr);
        ours(&cfg, &["verify", "--check-contents"]).ok();
        tamper();
        ours(&cfg, &["verify", "--check-contents", "--repair", "--repair-from", &other]).ok();
        ours(&cfg, &["verify", "--check-contents"]).ok();
        assert_eq!(fs::read_to_string(l.real().join(base_of(&p)).join("sub/b")).unwrap(), "b\n");
        // Without a good copy the error stays.
        tamper();
        let empty = format!("local?root={}", base.join("empty").display());
        ours(&empty, &["init"]).ok();
        let r = ours(&cfg, &["verify", "--check-contents", "--repair", "--repair-from", &empty]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("cannot repair path"), "{}", r.stderr);
    });
}

/// A copied-up lower path whose lower copy was corrupted is repaired into the upper
/// layer (a directory and a file, from an export file and from a store), visible
/// through the mount, and the next verify is clean. The lower store is not written.
#[test]
fn repair_of_a_copied_up_lower_path_lands_in_the_upper_layer() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config_with("");
        let d = base.join("in/tree");
        write(&d.join("a"), "a\n");
        write(&d.join("sub/b"), "b\n");
        let tree = add(&l.lower_uri(), d.to_str().unwrap());
        let file = add(&l.lower_uri(), &write(&base.join("in/f"), "f\n"));
        let backup = base.join("backup.export");
        fs::write(&backup, ours(&l.lower_uri(), &["export", &tree, &file]).ok().stdout).unwrap();
        let good = format!("local?root={}", base.join("good").display());
        add(&good, d.to_str().unwrap());
        add(&good, &base.join("in/f").to_string_lossy());
        ours(&cfg, &["mount"]).ok();
        // Adding the same contents copies the rows up.
        add(&cfg, d.to_str().unwrap());
        add(&cfg, &base.join("in/f").to_string_lossy());
        let corrupt = || {
            Command::new("chmod").args(["-R", "u+w"]).arg(l.lower_real()).status().unwrap();
            fs::write(l.lower_real().join(base_of(&tree)).join("sub/b"), "evil\n").unwrap();
            write(&l.lower_real().join(base_of(&tree)).join("extra"), "extra\n");
            fs::write(l.lower_real().join(base_of(&file)), "evil\n").unwrap();
            ours(&cfg, &["remount"]).ok();
            let r = ours(&cfg, &["verify", "--check-contents"]);
            assert_eq!(r.code, 1, "{}", r.stderr);
        };
        for source in [backup.to_str().unwrap().to_string(), good.clone()] {
            corrupt();
            let r = ours(&cfg, &["verify", "--check-contents", "--repair", "--repair-from", &source]);
            assert_eq!(r.code, 0, "repair from {source}: {}", r.stderr);
            assert!(r.stderr.contains(&format!("repaired path '{tree}'")), "{}", r.stderr);
            ours(&cfg, &["verify", "--check-contents"]).ok();
            assert!(l.upper().join(base_of(&tree)).join("sub/b").exists());
            assert_eq!(fs::read_to_string(l.real().join(base_of(&tree)).join("sub/b")).unwrap(), "b\n");
            assert!(!l.real().join(base_of(&tree)).join("extra").exists(), "the broken lower copy's extra file shows through");
            assert_eq!(fs::read_to_string(l.real().join(base_of(&file))).unwrap(), "f\n");
            assert_eq!(fs::read_to_string(l.lower_real().join(base_of(&file))).unwrap(), "evil\n", "the lower store was written");
            // Undo the repair for the next round: the upper copies go, the lower shows.
            Command::new("rm").arg("-rf").arg(l.upper().join(base_of(&tree))).arg(l.upper().join(base_of(&file))).status().unwrap();
            for p in [&tree, &file] {
                fs::remove_dir_all(l.lower_real().join(base_of(p))).or_else(|_| fs::remove_file(l.lower_real().join(base_of(p)))).unwrap();
            }
            Command::new("cp").arg("-a").arg(base.join("good/nix/store").join(base_of(&tree))).arg(l.lower_real()).status().unwrap();
            Command::new("cp").arg("-a").arg(base.join("good/nix/store").join(base_of(&file))).arg(l.lower_real()).status().unwrap();
            ours(&cfg, &["remount"]).ok();
            ours(&cfg, &["verify", "--check-contents"]).ok();
        }
    });
}

/// Verify on an overlay that is not mounted changes nothing, with or without
/// check-mount; an unreadable path is reported, never forgotten.
#[test]
fn verify_never_forgets_rows_of_an_unmounted_overlay() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config_with("");
        ours(&l.lower_uri(), &["init"]).ok();
        ours(&cfg, &["mount"]).ok();
        let p = add(&cfg, &write(&base.join("in/new"), "new\n"));
        let db = l.state().join("db/db.sqlite");
        ours(&cfg, &["umount"]).ok();
        let before = fs::read(&db).unwrap();
        let r = ours(&cfg, &["verify"]);
        assert_eq!(r.code, 1);
        let unchecked = l.config_with("check-mount = false");
        let r = ours(&unchecked, &["verify", "--check-contents"]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("is not mounted: verify forgot nothing"), "{}", r.stderr);
        assert!(!r.stderr.contains("removing from database"), "{}", r.stderr);
        assert_eq!(fs::read(&db).unwrap(), before, "the upper database changed");
        ours(&cfg, &["mount"]).ok();
        ours(&cfg, &["verify", "--check-contents"]).ok();
        ours(&cfg, &["query", "--hash", &p]).ok();
    });
}

/// A delete killed after its row went finishes when run again: the upper files go, the
/// lower copy stays, nothing is left to verify.
#[test]
fn a_delete_re_run_after_a_crash_finishes() {
    with_private_scratch(move |base| {
        let l = Layers::new(&base);
        let cfg = l.config_with("");
        let both = add(&l.lower_uri(), &write(&base.join("in/both"), "both\n"));
        ours(&cfg, &["mount"]).ok();
        let upper_only = add(&cfg, &write(&base.join("in/up"), "up\n"));
        // What a kill between the row deletion and the file removal leaves: files, no row.
        let db = l.state().join("db/db.sqlite");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute("delete from ValidPaths where path = ?1", [&upper_only]).unwrap();
        drop(conn);
        write(&l.upper().join(base_of(&both)), "stale upper copy\n");
        ours(&cfg, &["remount"]).ok();
        let r = ours(&cfg, &["delete", &upper_only, &both]).ok();
        assert!(r.out().starts_with("2 store paths deleted"), "{}", r.out());
        assert!(l.upper_entries().is_empty(), "{:?}", l.upper_entries());
        assert!(l.lower_real().join(base_of(&both)).exists());
        assert_eq!(fs::read_to_string(l.real().join(base_of(&both))).unwrap(), "both\n");
        ours(&cfg, &["verify", "--check-contents"]).ok();
    });
}
