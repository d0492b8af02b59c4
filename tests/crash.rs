//! kill -9 at points spread through add, import, delete, GC and optimise on a real
//! overlay: afterwards the store verifies, no whiteout hides a lower path, the lower
//! store is untouched, and the interrupted command succeeds when re-run. Also an import
//! and a GC running at once.

mod common;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Setup {
    base: PathBuf,
    cfg: String,
}

impl Setup {
    fn new(base: &Path) -> Setup {
        let cfg = write(
            &base.join("store.toml"),
            "root = \"merged\"\nupper-layer = \"upper\"\nlower-store = { type = \"local\", root = \"lower\" }\n[mount]\nworkdir = \"work\"\n",
        );
        Setup { base: base.to_path_buf(), cfg }
    }
    fn lower_uri(&self) -> String {
        Layers::new(&self.base).lower_uri()
    }
    fn lower_fingerprint(&self) -> (Vec<String>, Vec<u8>) {
        Layers::new(&self.base).lower_fingerprint()
    }
    fn check(&self, lower_before: &(Vec<String>, Vec<u8>)) {
        let v = ours(&self.cfg, &["verify", "--check-contents"]);
        assert_eq!(v.code, 0, "verify after a crash: {}", v.stderr);
        for e in fs::read_dir(self.base.join("upper")).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_char_device() {
                let name = e.file_name();
                assert!(!self.base.join("lower/nix/store").join(&name).exists(), "a whiteout hides lower path {name:?}");
            }
        }
        assert_eq!(&self.lower_fingerprint(), lower_before, "the lower store changed");
    }
}

/// Starts our binary and SIGKILLs it after `delay`.
fn kill_after(cfg: &str, args: &[&str], stdin: Option<&Path>, delay: Duration) {
    let mut c = Command::new(BIN);
    c.arg("--config").arg(cfg).args(args).stdout(Stdio::null()).stderr(Stdio::null());
    c.stdin(match stdin {
        Some(p) => Stdio::from(fs::File::open(p).unwrap()),
        None => Stdio::null(),
    });
    let mut child = c.spawn().unwrap();
    std::thread::sleep(delay);
    let _ = child.kill();
    let _ = child.wait();
}

fn tree(dir: &Path, files: usize, seed: usize) -> String {
    for i in 0..files {
        write(&dir.join(format!("d{}/f{i}", i % 17)), &format!("{seed}-{i}\n").repeat(40));
    }
    dir.to_str().unwrap().to_string()
}

const DELAYS_MS: [u64; 6] = [1, 4, 9, 16, 30, 60];

#[test]
fn kill_9_during_add_import_delete_gc_and_optimise() {
    with_private_scratch(move |base| {
        let st = Setup::new(&base);
        let shared = tree(&base.join("in/shared"), 300, 0);
        ours(&st.lower_uri(), &["add", &shared]).ok();
        ours(&st.cfg, &["mount"]).ok();
        let lower_before = st.lower_fingerprint();

        // add
        for (k, d) in DELAYS_MS.iter().enumerate() {
            let src = tree(&base.join(format!("in/add{k}")), 1500, k + 1);
            kill_after(&st.cfg, &["add", &src, &shared], None, Duration::from_millis(*d));
            st.check(&lower_before);
            ours(&st.cfg, &["add", &src, &shared]).ok();
            st.check(&lower_before);
        }
        // import: a stream of many paths made in a scratch local store
        let src_uri = format!("local?root={}", base.join("src").display());
        let mut paths = Vec::new();
        for k in 0..40 {
            let t = tree(&base.join(format!("in/imp{k}")), 60, 100 + k);
            paths.push(ours(&src_uri, &["add", &t]).ok().out().trim().to_string());
        }
        let mut ea = vec!["export"];
        ea.extend(paths.iter().map(String::as_str));
        let stream = ours(&src_uri, &ea).ok().stdout;
        let stream_file = base.join("stream");
        fs::write(&stream_file, &stream).unwrap();
        for d in DELAYS_MS {
            kill_after(&st.cfg, &["import"], Some(&stream_file), Duration::from_millis(d));
            st.check(&lower_before);
        }
        ours_in(&st.cfg, &["import"], Some(&stream)).ok();
        st.check(&lower_before);
        // delete and gc (no roots: everything upper is garbage)
        for (k, d) in DELAYS_MS.iter().enumerate() {
            if k % 2 == 0 {
                let some: Vec<&str> = paths.iter().skip(k * 3).take(3).map(String::as_str).collect();
                let mut a = vec!["delete"];
                a.extend(&some);
                kill_after(&st.cfg, &a, None, Duration::from_millis(*d));
                st.check(&lower_before);
                // Run again, a killed delete finishes (rows already gone or not).
                let again = ours(&st.cfg, &a).ok();
                assert!(again.out().starts_with("3 store paths deleted"), "{}", again.out());
                for p in &some {
                    assert!(!base.join("upper").join(base_of(p)).exists(), "{p} left after the re-run");
                }
                st.check(&lower_before);
            } else {
                kill_after(&st.cfg, &["gc"], None, Duration::from_millis(*d));
                st.check(&lower_before);
            }
        }
        ours(&st.cfg, &["gc"]).ok();
        st.check(&lower_before);
        let left: Vec<String> = listing(&base.join("upper")).into_iter().filter(|n| n != ".links").collect();
        assert!(left.is_empty(), "gc after crashes left {left:?}");
        // optimise: upper copies of paths the lower store gets later
        for (k, d) in DELAYS_MS.iter().enumerate() {
            let t = tree(&base.join(format!("in/opt{k}")), 400, 200 + k);
            ours(&st.cfg, &["add", &t]).ok();
            ours(&st.lower_uri(), &["add", &t]).ok();
            let lower_now = st.lower_fingerprint();
            kill_after(&st.cfg, &["optimise"], None, Duration::from_millis(*d));
            st.check(&lower_now);
            ours(&st.cfg, &["optimise"]).ok();
            st.check(&lower_now);
        }
    });
}

/// An import and a GC at once: the GC never collects what the import is adding, and both
/// finish.
#[test]
fn import_and_gc_at_once() {
    with_private_scratch(move |base| {
        let st = Setup::new(&base);
        ours(&st.lower_uri(), &["init"]).ok();
        ours(&st.cfg, &["mount"]).ok();
        let src_uri = format!("local?root={}", base.join("src").display());
        let mut paths = Vec::new();
        for k in 0..60 {
            let t = tree(&base.join(format!("in/imp{k}")), 40, k);
            paths.push(ours(&src_uri, &["add", &t]).ok().out().trim().to_string());
        }
        let mut ea = vec!["export"];
        ea.extend(paths.iter().map(String::as_str));
        let stream = ours(&src_uri, &ea).ok().stdout;
        for round in 0..4 {
            // Some garbage for the GC to chew on.
            for k in 0..30 {
                ours(&st.cfg, &["add", &write(&base.join(format!("in/g{round}-{k}")), &format!("{round}{k}"))]).ok();
            }
            let cfg = st.cfg.clone();
            let gc = std::thread::spawn(move || ours(&cfg, &["gc"]));
            let imported = ours_in(&st.cfg, &["import"], Some(&stream));
            let g = gc.join().unwrap();
            assert_eq!(imported.code, 0, "import: {}", imported.stderr);
            assert_eq!(g.code, 0, "gc: {}", g.stderr);
            // Whatever the GC did, nothing registered lost its files.
            ours(&st.cfg, &["verify", "--check-contents"]).ok();
            ours(&st.cfg, &["gc"]).ok();
        }
    });
}
