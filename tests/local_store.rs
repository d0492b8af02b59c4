//! End to end through the binary: a plain local store, checked against real Nix 2.8.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn uri(root: &Path) -> String {
    format!("local?root={}", root.display())
}

#[test]
fn add_prints_the_same_store_paths_as_nix() {
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let fixtures = make_fixtures(&s.join("fx"));
    let (ours_root, nix_root) = (s.join("ours"), s.join("nix"));
    for f in &fixtures {
        let f = f.to_str().unwrap();
        let a = ours(&uri(&ours_root), &["add", f]).ok().out();
        let b = nix_store(&s, &nix_root, &["--add", f]).ok().out();
        assert_eq!(a, b, "store path of {f}");
    }
    // Adding again is a no-op with the same answer.
    let again = ours(&uri(&ours_root), &["add", fixtures[0].to_str().unwrap()]).ok().out();
    assert_eq!(again.trim(), "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");
    // Nix accepts the store we filled, contents and all.
    let v = nix_store(&s, &ours_root, &["--verify", "--check-contents"]);
    assert_eq!(v.code, 0, "nix verify of our store: {}", v.stderr);
    assert!(!v.stderr.contains("was modified"), "{}", v.stderr);
    // And its rows read back the same through Nix.
    for f in &fixtures {
        let p = ours(&uri(&ours_root), &["add", f.to_str().unwrap()]).ok().out();
        let p = p.trim();
        let ours_hash = ours(&uri(&ours_root), &["query", "--hash", p]).ok().out();
        let nix_hash = nix_store(&s, &ours_root, &["-q", "--hash", p]).ok().out();
        assert_eq!(ours_hash, nix_hash);
        let nix_size = nix_store(&s, &nix_root, &["-q", "--size", p]).ok().out();
        assert_eq!(ours(&uri(&ours_root), &["query", "--size", p]).ok().out(), nix_size);
    }
}

#[test]
fn dump_is_byte_identical_to_nix() {
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let fixtures = make_fixtures(&s.join("fx"));
    let root = s.join("ours");
    for f in &fixtures {
        let p = ours(&uri(&root), &["add", f.to_str().unwrap()]).ok().out();
        let ours_nar = ours(&uri(&root), &["dump", p.trim()]).ok().stdout;
        let real = root.join("nix/store").join(Path::new(p.trim()).file_name().unwrap());
        let nix_nar = nix(&s, "nix-store", &["--dump", real.to_str().unwrap()], None).ok().stdout;
        assert_eq!(ours_nar, nix_nar, "NAR of {}", f.display());
    }
}

/// Builds the §2.5 derivations with Nix, exports the closure, imports it into our store
/// and compares every query with Nix's answers on its own store.
#[test]
fn import_of_a_nix_export_keeps_all_metadata() {
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let nix_root = s.join("nix");
    let top = nix_build_default(&s, &nix_root);
    let closure = nix_store(&s, &nix_root, &["-qR", &top]).ok().lines();
    assert!(closure.len() >= 3);
    let mut args = vec!["--export"];
    args.extend(closure.iter().map(String::as_str));
    let stream = nix_store(&s, &nix_root, &args).ok().stdout;
    let ours_root = s.join("ours");
    let imported = ours_in(&uri(&ours_root), &["import"], Some(&stream)).ok().lines();
    let mut a = imported.clone();
    a.sort();
    let mut b = closure.clone();
    b.sort();
    assert_eq!(a, b);

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let q = |flag: &str, p: &str| ours(&uri(&ours_root), &["query", flag, p]).ok().lines();
    let nq = |flag: &str, p: &str| nix_store(&s, &nix_root, &["-q", flag, p]).ok().lines();
    assert_eq!(sorted(q("--requisites", &top)), sorted(nq("--requisites", &top)));
    // Dependencies before dependents.
    let req = q("--requisites", &top);
    assert_eq!(req.last().unwrap(), &top);
    for p in &closure {
        assert_eq!(sorted(q("--references", p)), sorted(nq("--references", p)), "references of {p}");
        assert_eq!(q("--deriver", p), nq("--deriver", p), "deriver of {p}");
        assert_eq!(q("--hash", p), nq("--hash", p));
        assert_eq!(q("--size", p), nq("--size", p));
    }
    // Stock Nix reads and verifies what we wrote.
    let v = nix_store(&s, &ours_root, &["--verify", "--check-contents"]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    // path-info JSON in current Nix's format 1.
    let j = ours(&uri(&ours_root), &["path-info", "--json", "-S", &top]).ok().out();
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    let entry = &v[&top];
    assert_eq!(entry["version"], 1);
    assert_eq!(entry["storeDir"], "/nix/store");
    assert!(entry["narHash"].as_str().unwrap().starts_with("sha256-"));
    assert!(entry["references"].as_array().unwrap().iter().any(|r| r == &serde_json::Value::from(top.clone())));
    assert!(entry["closureSize"].as_u64().unwrap() > entry["narSize"].as_u64().unwrap());
    // Re-exporting from our store gives Nix's bytes back.
    let mut eargs = vec!["export"];
    eargs.extend(closure.iter().map(String::as_str));
    let ours_stream = ours(&uri(&ours_root), &eargs).ok().stdout;
    assert_eq!(ours_stream, stream);
}

/// Our verify on a store Nix built (real derivers, DerivationOutputs), then a file
/// corrupted behind its back.
#[test]
fn verify_a_store_nix_filled_and_catch_corruption() {
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let root = s.join("nix");
    let top = nix_build_default(&s, &root);
    let r = ours(&uri(&root), &["verify", "--check-contents"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("checking store hashes..."), "{}", r.stderr);
    // The .drv registrations Nix made are visible as valid derivers and outputs.
    let drv = ours(&uri(&root), &["query", "--deriver", &top]).ok().out();
    let drv = drv.trim();
    assert!(drv.ends_with("-top.drv"));
    assert_eq!(ours(&uri(&root), &["query", "--valid-derivers", &top]).ok().out().trim(), drv);
    let outs = ours(&uri(&root), &["query", "--outputs", drv]).ok().lines();
    assert_eq!(outs.len(), 2);
    assert!(outs.contains(&top));
    let hp = &Path::new(&top).file_name().unwrap().to_str().unwrap()[..32];
    assert_eq!(ours(&uri(&root), &["path-from-hash-part", hp]).ok().out().trim(), top);
    assert_eq!(ours(&uri(&root), &["path-from-hash-part", "00000000000000000000000000000000"]).code, 1);

    let self_file = root.join("nix/store").join(Path::new(&top).file_name().unwrap()).join("self");
    let dir = self_file.parent().unwrap().to_path_buf();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&self_file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&self_file, "tampered\n").unwrap();
    let r = ours(&uri(&root), &["verify", "--check-contents"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(&format!("path '{top}' was modified! expected hash 'sha256:")), "{}", r.stderr);
    assert!(r.stderr.contains("not all store errors were fixed"));
    let r = ours(&uri(&root), &["verify-path", &top]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("was modified"));
    // Nix agrees.
    let n = nix_store(&s, &root, &["--verify-path", &top]);
    assert_eq!(n.code, 1);
}

#[test]
fn a_truncated_or_hostile_export_registers_nothing_and_leaves_nothing() {
    let s = Scratch::new();
    let fixtures = make_fixtures(&s.join("fx"));
    let src = s.join("src");
    let dst = s.join("dst");
    let mut paths = Vec::new();
    for f in &fixtures {
        paths.push(ours(&uri(&src), &["add", f.to_str().unwrap()]).ok().out().trim().to_string());
    }
    let mut args = vec!["export"];
    args.extend(paths.iter().map(String::as_str));
    let stream = ours(&uri(&src), &args).ok().stdout;
    ours(&uri(&dst), &["init"]).ok();
    let listing = |root: &Path| {
        let mut v: Vec<String> =
            fs::read_dir(root.join("nix/store")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let before = listing(&dst);
    for cut in [10, 200, stream.len() / 2, stream.len() - 9, stream.len() - 1] {
        let r = ours_in(&uri(&dst), &["import"], Some(&stream[..cut]));
        assert_eq!(r.code, 1, "cut at {cut}: {}", r.stderr);
        assert!(r.stderr.contains("truncated"), "{}", r.stderr);
        assert_eq!(listing(&dst), before, "leftovers after a cut at {cut}");
        let count = ours(&uri(&dst), &["verify"]).ok();
        drop(count);
    }
    // A hostile name deep inside the stream: nothing of the earlier items stays either.
    let mut hostile = stream.clone();
    let needle = b"a.txt";
    let pos = hostile.windows(5).position(|w| w == needle).unwrap();
    hostile[pos..pos + 5].copy_from_slice(b"../xx");
    let r = ours_in(&uri(&dst), &["import"], Some(&hostile));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("invalid file name"), "{}", r.stderr);
    assert_eq!(listing(&dst), before);
    // The intact stream imports.
    let mut imported = ours_in(&uri(&dst), &["import"], Some(&stream)).ok().lines();
    imported.sort();
    paths.sort();
    assert_eq!(imported, paths);
    ours(&uri(&dst), &["verify", "--check-contents"]).ok();
}

#[test]
fn import_with_a_missing_reference_fails_cleanly() {
    let s = Scratch::new();
    let src = s.join("src");
    let dst = s.join("dst");
    fs::create_dir_all(s.join("fx")).unwrap();
    fs::write(s.join("fx/a"), "a\n").unwrap();
    let a = ours(&uri(&src), &["add", s.join("fx/a").to_str().unwrap()]).ok().out().trim().to_string();
    // Hand-build a stream whose item refers to `a` without including it.
    let full = ours(&uri(&src), &["export", &a]).ok().stdout;
    // Change the item's path to a new name and make it refer to the original.
    let mut stream = Vec::new();
    let nar_end = full.len() - 8 - (8 + 8 + 8 + 8 + 8 + ((a.len() + 7) / 8) * 8);
    stream.extend_from_slice(&full[..nar_end]);
    let other = format!("/nix/store/{}-other", "1".repeat(32));
    let put = |v: &mut Vec<u8>, s: &str| {
        v.extend_from_slice(&(s.len() as u64).to_le_bytes());
        v.extend_from_slice(s.as_bytes());
        v.resize(v.len() + (8 - s.len() % 8) % 8, 0);
    };
    stream.extend_from_slice(&0x4558494eu64.to_le_bytes());
    put(&mut stream, &other);
    stream.extend_from_slice(&1u64.to_le_bytes());
    put(&mut stream, &a);
    put(&mut stream, "");
    stream.extend_from_slice(&0u64.to_le_bytes());
    stream.extend_from_slice(&0u64.to_le_bytes());
    let r = ours_in(&uri(&dst), &["import"], Some(&stream));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains(&format!("path '{a}' is not valid")), "{}", r.stderr);
    assert!(!dst.join("nix/store").join(Path::new(&other).file_name().unwrap()).exists());
}

/// Roots as Nix finds them: an indirect root from `nix-build --out-link`, a direct
/// symlink in gcroots, a root through a path inside a store path, and a profile link.
#[test]
fn query_roots_agrees_with_nix() {
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let root = s.join("nix");
    let f = write_default_nix(&s.join("expr"));
    let link = s.join("result");
    let r =
        nix(&s, "nix-build", &["--store", root.to_str().unwrap(), f.to_str().unwrap(), "--out-link", link.to_str().unwrap()], None).ok();
    let top = r.lines().into_iter().find(|l| l.ends_with("-top")).unwrap();
    let hello = "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt";
    let gcroots = root.join("nix/var/nix/gcroots");
    std::os::unix::fs::symlink(&top, gcroots.join("direct")).unwrap();
    std::os::unix::fs::symlink(format!("{hello}/sub"), gcroots.join("subpath")).unwrap();
    std::os::unix::fs::symlink("/nix/store/00000000000000000000000000000000-gone", gcroots.join("invalid")).unwrap();
    for p in [hello, top.as_str()] {
        // Nix keeps one target's links in a hash set: compare as sets. Runtime roots
        // (other tests' processes under /proc) come and go, so they are left out.
        let keep = |v: Vec<String>| v.into_iter().filter(|l| !l.starts_with("/proc/")).collect::<Vec<_>>();
        let mut ours_roots = keep(ours(&uri(&root), &["query", "--roots", p]).ok().lines());
        let mut nix_roots = keep(nix_store(&s, &root, &["-q", "--roots", p]).ok().lines());
        ours_roots.sort();
        nix_roots.sort();
        assert_eq!(ours_roots, nix_roots, "roots of {p}");
        assert!(!ours_roots.is_empty());
    }
    assert!(ours(&uri(&root), &["query", "--roots", hello]).ok().out().contains(&format!("{} -> {top}", gcroots.join("direct").display())));
}

/// Stock Nix's GC running while our import is half-way: the paths we have placed but not
/// yet registered are protected by our temporary roots (Nix's protocol), and the import
/// then completes.
#[test]
fn nix_gc_respects_our_temp_roots_mid_import() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let src = s.join("src");
    let dst = s.join("dst");
    let mut paths = Vec::new();
    for i in 0..6 {
        let f = s.join(&format!("fx/f{i}"));
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, format!("{i}\n")).unwrap();
        paths.push(ours(&uri(&src), &["add", f.to_str().unwrap()]).ok().out().trim().to_string());
    }
    paths.sort();
    let mut args = vec!["export"];
    args.extend(paths.iter().map(String::as_str));
    let stream = ours(&uri(&src), &args).ok().stdout;
    ours(&uri(&dst), &["init"]).ok();
    // Everything but the end-of-stream marker: every item restored under a temporary
    // name (protected by a temp root), nothing placed or registered yet.
    let mut child = Command::new(BIN)
        .args(["--store", &uri(&dst), "import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&stream[..stream.len() - 8]).unwrap();
    stdin.flush().unwrap();
    let staged = |root: &Path| listing(&root.join("nix/store")).into_iter().filter(|n| n.ends_with("-tmp-overlay-store-import")).count();
    for _ in 0..100 {
        if staged(&dst) >= paths.len() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(staged(&dst) >= paths.len(), "the import staged its files");
    let before = staged(&dst);
    let gc = nix_store(&s, &dst, &["--gc"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert_eq!(staged(&dst), before, "Nix's GC deleted files we were importing: {}", gc.stderr);
    stdin.write_all(&stream[stream.len() - 8..]).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = nix_store(&s, &dst, &["--verify", "--check-contents"]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    for p in &paths {
        ours(&uri(&dst), &["verify-path", p]).ok();
    }
}

/// A bad spec is a usage error (exit 2) naming file, line and key, and nothing is created.
#[test]
fn bad_specs_exit_2_and_create_nothing() {
    let s = Scratch::new();
    let cases = [
        ("root = \"store\"\nupper-layr = \"u\"\n", "store.toml:2:1: upper-layr: unknown key; did you mean `upper-layer`?"),
        ("root = 5\n", "store.toml:1:1: root: expected a path"),
        ("root = \"store\"\n[gc\n", "store.toml:2:"),
        ("type = \"local-overlay\"\nroot = \"store\"\nlower-store = \"/x\"\n", "upper-layer"),
    ];
    for (text, expect) in cases {
        let f = write(&s.join("store.toml"), text);
        let r = ours(&f, &["init"]);
        assert_eq!(r.code, 2, "{text}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{text}: expected {expect:?} in {}", r.stderr);
        assert!(!s.join("store").exists(), "{text}: something was created");
    }
    let r = ours("local?root=relative/path", &["init"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = ours("local?root=/tmp/x&frobnicate=1", &["init"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("frobnicate"), "{}", r.stderr);
}

/// Our own running operations' temporary roots show in `gc --print-roots` as Nix shows
/// them, `{temp:PID} -> path`, and protect the path from our GC.
#[test]
fn our_temp_roots_show_and_protect() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let s = Scratch::new();
    let src = s.join("src");
    let dst = s.join("dst");
    let f = write(&s.join("fx/one"), "one\n");
    let p = ours(&uri(&src), &["add", &f]).ok().out().trim().to_string();
    let stream = ours(&uri(&src), &["export", &p]).ok().stdout;
    ours(&uri(&dst), &["init"]).ok();
    let mut child = Command::new(BIN)
        .args(["--store", &uri(&dst), "import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&stream[..stream.len() - 8]).unwrap();
    stdin.flush().unwrap();
    let want = format!("{{temp:{}}} -> {p}", child.id());
    let mut roots = String::new();
    for _ in 0..200 {
        roots = ours(&uri(&dst), &["gc", "--print-roots"]).ok().out();
        if roots.contains(&want) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(roots.contains(&want), "{roots}");
    let staged = || listing(&dst.join("nix/store")).into_iter().filter(|n| n.ends_with("-tmp-overlay-store-import")).count();
    assert_eq!(staged(), 1);
    ours(&uri(&dst), &["gc"]).ok();
    assert_eq!(staged(), 1, "our GC deleted what our import holds");
    stdin.write_all(&stream[stream.len() - 8..]).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    ours(&uri(&dst), &["verify-path", &p]).ok();
}

/// A one-shot read command opens the database as a lone reader, which never writes the
/// `-shm` file. Writers in other processes (ours, then Nix's) commit while such a reader
/// is open; it sees every commit, and the store stays one Nix verifies.
#[test]
fn a_lone_reader_sees_commits_from_other_processes() {
    use overlay_store::store::local::{LocalConfig, LocalStore};
    use overlay_store::store::Store;
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let root = s.join("store");
    fs::write(s.join("a"), "a").unwrap();
    fs::write(s.join("b"), "b").unwrap();
    fs::write(s.join("c"), "c").unwrap();
    let first = ours(&uri(&root), &["add", s.join("a").to_str().unwrap()]).ok().out();
    let spec = overlay_store::spec::StoreSpec::parse_arg(&uri(&root)).unwrap();
    let config = LocalConfig { lone_reader: true, ..LocalConfig::from_spec(&spec) };
    let reader = LocalStore::open(config.clone()).unwrap();
    let valid = |p: &str| reader.path_info(&reader.store_dir().parse_path(p.trim()).unwrap()).unwrap().is_some();
    assert!(valid(&first));
    let second = ours(&uri(&root), &["add", s.join("b").to_str().unwrap()]).ok().out();
    assert!(valid(&second), "our writer's commit");
    let third = nix_store(&s, &root, &["--add", s.join("c").to_str().unwrap()]).ok().out();
    assert!(valid(&third), "Nix's commit");
    drop(reader);
    let reader = LocalStore::open(config).unwrap();
    assert_eq!(reader.db().count_paths().unwrap(), 3);
    drop(reader);
    let v = nix_store(&s, &root, &["--verify", "--check-contents"]);
    assert_eq!(v.code, 0, "{}", v.stderr);
}

/// State directories deeper than a Unix socket address (`sun_path`, 108 bytes): GC and
/// delete take the GC lock and serve `<state>/gc-socket/socket`.
#[test]
fn gc_and_delete_work_under_deep_state_directories() {
    let s = Scratch::new();
    let root = s.join(&format!("{}/{} ü", "d".repeat(70), "e".repeat(70)));
    assert!(root.join("nix/var/nix/gc-socket/socket").as_os_str().len() > 108);
    let store = uri(&root);
    let a = add(&store, &write(&s.join("in/a"), "a\n"));
    let b = add(&store, &write(&s.join("in/b"), "b\n"));
    ours(&store, &["delete", &a]).ok();
    let gc = ours(&store, &["gc"]).ok();
    assert!(gc.out().starts_with("1 store paths deleted"), "{}", gc.out());
    assert!(!root.join("nix/store").join(base_of(&b)).exists());
    assert!(root.join("nix/var/nix/gc-socket/socket").exists());
}

/// `delete` of a path that is no longer registered (a killed delete removed its row and
/// left its files) finishes the job, as `nix-store --delete` does: files gone, exit 0.
#[test]
fn delete_of_an_unregistered_path_removes_what_is_left() {
    if !have_nix() {
        return;
    }
    let s = Scratch::new();
    let root = s.join("ours");
    let store = uri(&root);
    let p = add(&store, &write(&s.join("in/a"), "a\n"));
    ours(&store, &["delete", &p]).ok();
    let again = ours(&store, &["delete", &p]).ok();
    // A killed delete's leftovers: files whose row is gone.
    let left = "/nix/store/11111111111111111111111111111111-left";
    write(&root.join("nix/store/11111111111111111111111111111111-left/f"), "data\n");
    let leftovers = ours(&store, &["delete", left]).ok();
    assert!(!root.join("nix/store/11111111111111111111111111111111-left").exists());
    // Nix prints the same on its own store.
    let nroot = s.join("nix");
    nix_store(&s, &nroot, &["--add", &s.join("in/a").to_string_lossy()]).ok();
    write(&nroot.join("nix/store/11111111111111111111111111111111-left/f"), "data\n");
    let n1 = nix_store(&s, &nroot, &["--delete", "/nix/store/00000000000000000000000000000000-gone"]).ok();
    let n2 = nix_store(&s, &nroot, &["--delete", left]).ok();
    assert_eq!(again.out(), n1.out());
    assert_eq!(leftovers.out(), n2.out());
    assert_eq!(again.out(), "1 store paths deleted, 0.00 MiB freed\n");
}
