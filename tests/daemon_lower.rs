//! A running `nix-daemon` (Nix 2.8) as the lower store: queries, import, GC and verify
//! through the overlay; and daemons that vanish, hang or send garbage.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn config(base: &Path, socket: &Path, real: &Path, extra: &str) -> String {
    write(
        &base.join("store.toml"),
        &format!(
            "root = \"merged\"\nupper-layer = \"upper\"\n\n[lower-store]\ntype = \"daemon\"\nsocket = \"{}\"\nreal = \"{}\"\n{extra}\n[mount]\nworkdir = \"work\"\n",
            socket.display(),
            real.display()
        ),
    )
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn a_daemon_lower_store_serves_queries_import_gc_and_verify() {
    if !have_nix() {
        return;
    }
    with_private_scratch(move |base| {
        let sc = Scratch::new();
        let root = base.join("daemon-root");
        let daemon = Daemon::start(&sc, &root, &base.join("daemon.sock"), NIX_CONFIG);
        // Build through the daemon: `dep` (and its .drv) end up in the lower store.
        write_default_nix(&base.join("expr"));
        let dep_nix = write(
            &base.join("expr/dep.nix"),
            "derivation {\n  name = \"dep\"; system = builtins.currentSystem; builder = \"/busybox\";\n  args = [ \"sh\" \"-c\" \"/busybox mkdir $out && echo dep > $out/file\" ];\n}\n",
        );
        let dep = daemon.nix(&sc, "nix-build", &[&dep_nix, "--no-out-link"]).ok().out().trim().to_string();
        let cfg = config(&base, &daemon.socket, &root.join("nix/store"), "");
        ours(&cfg, &["mount"]).ok();
        ours(&cfg, &["check-mount"]).ok();
        // Fall-through queries agree with Nix asking the daemon.
        let lower_paths = daemon.nix(&sc, "nix-store", &["-qR", &dep]).ok().lines();
        let drv = daemon.nix(&sc, "nix-store", &["-q", "--deriver", &dep]).ok().out().trim().to_string();
        for p in lower_paths.iter().chain([&drv]) {
            for flag in ["--references", "--referrers", "--deriver", "--hash", "--size", "--requisites"] {
                let ours_v = sorted(ours(&cfg, &["query", flag, p]).ok().lines());
                let nix_v = sorted(daemon.nix(&sc, "nix-store", &["-q", flag, p]).ok().lines());
                assert_eq!(ours_v, nix_v, "{flag} {p}");
            }
        }
        assert_eq!(ours(&cfg, &["query", "--valid-derivers", &dep]).ok().out().trim(), drv);
        assert_eq!(sorted(ours(&cfg, &["query", "--outputs", &drv]).ok().lines()), vec![dep.clone()]);
        let hp = &Path::new(&dep).file_name().unwrap().to_str().unwrap()[..32];
        assert_eq!(ours(&cfg, &["path-from-hash-part", hp]).ok().out().trim(), dep);
        ours(&cfg, &["verify-path", &dep]).ok();

        // Import a closure built elsewhere: its reference to `dep` is satisfied by copy-up
        // from the daemon; only the new paths land upper.
        let other = base.join("other");
        let top = nix_build_default(&sc, &other);
        let closure = nix_store(&sc, &other, &["-qR", &top]).ok().lines();
        let mut args = vec!["--export"];
        args.extend(closure.iter().map(String::as_str));
        let stream = nix_store(&sc, &other, &args).ok().stdout;
        ours_in(&cfg, &["import"], Some(&stream)).ok();
        let upper = listing(&base.join("upper")).into_iter().filter(|n| n != ".links").collect::<Vec<_>>();
        assert!(!upper.iter().any(|n| dep.ends_with(n.as_str())), "dep must not be copied into the upper layer: {upper:?}");
        assert!(upper.iter().any(|n| top.ends_with(n.as_str())));
        // Stock Nix sees a complete upper database.
        let view = format!("local?real={}&state={}", base.join("merged/nix/store").display(), base.join("merged/nix/var/nix").display());
        let v = nix(&sc, "nix-store", &["--store", &view, "--verify", "--check-contents"], None);
        assert_eq!(v.code, 0, "{}", v.stderr);
        ours(&cfg, &["verify", "--check-contents"]).ok();
        // GC without roots empties the upper layer; the daemon's store is untouched.
        ours(&cfg, &["gc"]).ok();
        assert!(listing(&base.join("upper")).into_iter().all(|n| n == ".links"));
        ours(&cfg, &["verify-path", &dep]).ok();
        let lv = daemon.nix(&sc, "nix-store", &["--verify", "--check-contents"]);
        assert_eq!(lv.code, 0, "{}", lv.stderr);
        // The daemon goes away: a clear error, and the upper store is intact once it is back.
        drop(daemon);
        let r = ours(&cfg, &["query", "--hash", &dep]);
        assert_eq!(r.code, 1);
        assert!(r.stderr.contains("cannot connect to nix-daemon"), "{}", r.stderr);
        let daemon = Daemon::start(&sc, &root, &base.join("daemon.sock"), NIX_CONFIG);
        ours(&cfg, &["verify", "--check-contents"]).ok();
        drop(daemon);
    });
}

/// A fake daemon: completes the handshake, then behaves badly on the first request.
fn fake_daemon(socket: &Path, behaviour: &'static str) -> std::thread::JoinHandle<()> {
    let listener = overlay_store::store::fs::socket::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 24];
            if c.read_exact(&mut buf[..16]).is_err() {
                continue;
            }
            let mut hello = Vec::new();
            hello.extend_from_slice(&0x6478696fu64.to_le_bytes());
            hello.extend_from_slice(&0x122u64.to_le_bytes());
            let _ = c.write_all(&hello);
            let _ = c.read_exact(&mut buf[..16]);
            let mut v = Vec::new();
            v.extend_from_slice(&5u64.to_le_bytes());
            v.extend_from_slice(b"2.8.0\0\0\0");
            v.extend_from_slice(&0x616c7473u64.to_le_bytes());
            let _ = c.write_all(&v);
            let mut req = [0u8; 8];
            let _ = c.read(&mut req);
            match behaviour {
                "garbage" => {
                    let _ = c.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
                }
                "huge" => {
                    let mut m = 0x616c7473u64.to_le_bytes().to_vec();
                    m.extend_from_slice(&1u64.to_le_bytes());
                    m.extend_from_slice(&u64::MAX.to_le_bytes());
                    let _ = c.write_all(&m);
                }
                "hang" => std::thread::sleep(Duration::from_secs(5)),
                _ => {}
            }
            drop(c);
        }
    })
}

#[test]
fn broken_daemons_give_clear_errors_and_leave_the_store_intact() {
    let s = Scratch::new();
    let base = s.path().to_path_buf();
    for (i, (behaviour, expect)) in
        [("close", "closed the connection"), ("garbage", "malformed"), ("huge", "malformed"), ("hang", "did not answer")]
            .into_iter()
            .enumerate()
    {
        let dir = base.join(format!("case{i}"));
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("sock");
        let _server = fake_daemon(&socket, behaviour);
        let cfg = config(&dir, &socket, &dir.join("lower-real"), "timeout-secs = 1\n");
        fs::create_dir_all(dir.join("lower-real")).unwrap();
        let cfg = {
            let text = fs::read_to_string(&cfg).unwrap().replace("root = \"merged\"", "root = \"merged\"\ncheck-mount = false");
            write(Path::new(&cfg), &text)
        };
        ours(&cfg, &["init"]).ok();
        let p = ours(&cfg, &["add", &write(&dir.join("in/x"), "x\n")]);
        // The add needs the daemon (is the content already lower?): it fails cleanly.
        let t = Instant::now();
        assert_eq!(p.code, 1, "{behaviour}: {}", p.stderr);
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(p.stderr.contains(expect), "{behaviour}: expected {expect:?} in {}", p.stderr);
        // Nothing was registered or left in the upper database.
        let db = rusqlite::Connection::open(dir.join("merged/nix/var/nix/db/db.sqlite")).unwrap();
        let n: i64 = db.query_row("select count(*) from ValidPaths", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "{behaviour}");
    }
}
