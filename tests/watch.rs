//! `watch` in the background on a real overlay, with its files edited the ways editors
//! edit them; and `pivot` to a newer lower store, also interrupted by kill -9.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A running `watch` whose stderr goes to a file we can poll.
struct Watch {
    child: Child,
    log: PathBuf,
}

impl Watch {
    fn start(cfg: &str, log: &Path) -> Watch {
        let err = fs::File::create(log).unwrap();
        let child = Command::new(BIN)
            .args(["--config", cfg, "watch"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let w = Watch { child, log: log.to_path_buf() };
        w.wait_for("watching ", 1);
        w
    }

    fn text(&self) -> String {
        let mut s = String::new();
        fs::File::open(&self.log).unwrap().read_to_string(&mut s).unwrap();
        s
    }

    /// Waits until `needle` occurs at least `n` times in the log.
    #[track_caller]
    fn wait_for(&self, needle: &str, n: usize) -> String {
        let t = Instant::now();
        loop {
            let s = self.text();
            if s.matches(needle).count() >= n {
                return s;
            }
            if t.elapsed() > Duration::from_secs(20) {
                panic!("timed out waiting for {n}x {needle:?}; log:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> String {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "watch exited with {status}: {}", self.text());
        self.text()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Saves like an editor that writes a temp file and renames it over the original.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn config_text(upper: &str, extra: &str) -> String {
    format!(
        "root = \"merged\"\nupper-layer = \"{upper}\"\npolicy = \"policy.lua\"\nlower-store = {{ type = \"local\", root = \"lower\" }}\n{extra}\n[mount]\nworkdir = \"work-{upper}\"\n[watch]\ndebounce-ms = 100\ngc-interval-secs = 1\n"
    )
}

const KEEP_NAMED_KEEP: &str = "local p = {}\nfunction p.gc(c)\n  local d = {}\n  for _, x in ipairs(c) do\n    if not x.path:find('keep') then d[#d + 1] = x.path end\n  end\n  return d\nend\nfunction p.on_reload(old, new)\n  log.info('reloaded policy, upper layer now ' .. new.upper_layer)\nend\nreturn p\n";

fn entries(dir: &Path) -> Vec<String> {
    listing(dir).into_iter().filter(|n| n != ".links").collect()
}

#[test]
fn watch_reloads_good_edits_and_survives_bad_ones() {
    with_private_scratch(move |base| {
        let cfg_path = base.join("store.toml");
        write(&base.join("policy.lua"), KEEP_NAMED_KEEP);
        let cfg = write(&cfg_path, &config_text("upper", ""));
        ours(&format!("local?root={}", base.join("lower").display()), &["init"]).ok();
        let w = Watch::start(&cfg, &base.join("watch.log"));
        let log = w.text();
        assert!(log.contains("store.toml") && log.contains("policy.lua"), "{log}");
        ours(&cfg, &["check-mount"]).ok();
        // Reading the files (every command does) is not an edit: no reload.
        for _ in 0..3 {
            ours(&cfg, &["stats"]).ok();
        }
        std::thread::sleep(Duration::from_millis(400));
        assert!(!w.text().contains("reloaded"), "a read caused a reload: {}", w.text());

        // The policy's GC decisions apply: `keep` survives the scheduled GC, `junk` goes.
        let keep = ours(&cfg, &["add", &write(&base.join("in/keep"), "k\n")]).ok().out().trim().to_string();
        ours(&cfg, &["add", &write(&base.join("in/junk"), "j\n")]).ok();
        let n = w.text().matches("scheduled gc").count();
        w.wait_for("scheduled gc", n + 2);
        assert_eq!(entries(&base.join("upper")).len(), 1);

        // A bad TOML edit: one clear error, the old config keeps serving.
        let n_err = w.text().matches("keeping the previous config").count();
        save_by_rename(&cfg_path, "root = \"merged\"\nupper-layer = \n");
        let log = w.wait_for("keeping the previous config", n_err + 1);
        assert!(log.contains("store.toml:2:"), "{log}");
        // A Lua syntax error: reported with file and line, old policy kept.
        fs::write(&cfg_path, config_text("upper", "")).unwrap();
        w.wait_for("reloaded '", 1);
        save_by_rename(&base.join("policy.lua"), "return {\n  gc = function(c)\n    return {\nend }\n");
        let log = w.wait_for("keeping the previous config", n_err + 2);
        assert!(log.contains("policy.lua:4:"), "{log}");
        assert!(entries(&base.join("upper")).contains(&Path::new(&keep).file_name().unwrap().to_string_lossy().to_string()));

        // A good policy edit (delete and recreate) changes the next GC's decisions.
        fs::remove_file(base.join("policy.lua")).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        fs::write(base.join("policy.lua"), "return { on_reload = function(o, n) log.info('deleting everything from now on') end }\n")
            .unwrap();
        w.wait_for("deleting everything from now on", 1);
        let n = w.text().matches("scheduled gc").count();
        w.wait_for("scheduled gc", n + 2);
        assert!(entries(&base.join("upper")).is_empty(), "{:?}", entries(&base.join("upper")));

        // SIGTERM: a clean exit, the overlay stays mounted.
        let log = w.stop();
        assert!(log.contains("stopping"), "{log}");
        ours(&cfg, &["check-mount"]).ok();
    });
}

#[test]
fn changing_the_upper_layer_remounts_and_waits_for_a_running_gc() {
    with_private_scratch(move |base| {
        let cfg_path = base.join("store.toml");
        write(&base.join("policy.lua"), KEEP_NAMED_KEEP);
        let cfg = write(&cfg_path, &config_text("upper", "").replace("gc-interval-secs = 1\n", ""));
        let lower = format!("local?root={}", base.join("lower").display());
        let l = ours(&lower, &["add", &write(&base.join("in/l"), "l\n")]).ok().out().trim().to_string();
        let w = Watch::start(&cfg, &base.join("watch.log"));
        // A GC holds gc.lock: the remount waits for it.
        let gc_lock = nix::fcntl::Flock::lock(
            fs::OpenOptions::new().read(true).write(true).create(true).open(base.join("merged/nix/var/nix/gc.lock")).unwrap(),
            nix::fcntl::FlockArg::LockExclusive,
        )
        .unwrap();
        save_by_rename(&cfg_path, &config_text("upper2", "").replace("gc-interval-secs = 1\n", ""));
        w.wait_for("waiting for the big garbage collector lock", 1);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!w.text().contains("remounted"), "remounted while the GC held its lock");
        drop(gc_lock);
        let log = w.wait_for("remounted", 1);
        assert!(log.contains("reloaded policy, upper layer now"), "on_reload of the new policy: {log}");
        ours(&cfg, &["check-mount"]).ok();
        let new_upper = base.join("upper2");
        // This thread's own mount namespace (not the process's main thread's).
        let info = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        let escaped = new_upper.display().to_string().replace(' ', "\\040");
        assert!(info.contains(&format!("upperdir={escaped}")), "{info}");
        ours(&cfg, &["verify-path", &l]).ok();
        // Extra mount options remount too.
        save_by_rename(
            &cfg_path,
            &config_text("upper2", "")
                .replace("gc-interval-secs = 1\n", "")
                .replace("workdir = \"work-upper2\"", "workdir = \"work-upper2\"\noptions = [\"redirect_dir=nofollow\"]"),
        );
        w.wait_for("remounted", 2);
        ours(&cfg, &["check-mount"]).ok();

        // A remount that works but whose store then cannot be opened (a file where the
        // new upper layer's `.links` directory must go): the mount moves back, so the
        // store the service keeps serving is the one mounted; a fixed save goes through.
        let upper3 = base.join("upper3");
        fs::create_dir_all(&upper3).unwrap();
        fs::write(upper3.join(".links"), "not a directory").unwrap();
        let text3 = config_text("upper3", "").replace("gc-interval-secs = 1\n", "");
        save_by_rename(&cfg_path, &text3);
        let log = w.wait_for("rolled back to the old mount", 1);
        assert!(log.contains(".links"), "the error names what failed: {log}");
        let info = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(info.contains(&format!("upperdir={escaped},")) || info.contains(&format!("upperdir={escaped} ")), "{info}");
        assert!(!info.contains("upper3"), "the failed reload left the new mount in place: {info}");
        fs::remove_file(upper3.join(".links")).unwrap();
        let reloads = w.text().matches("reloaded '").count();
        save_by_rename(&cfg_path, &text3);
        w.wait_for("reloaded '", reloads + 1);
        let info = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        assert!(info.contains(&format!("upperdir={}", upper3.display().to_string().replace(' ', "\\040"))), "{info}");
        w.stop();
    });
}

/// Builds `drv` expressions with Nix into a lower store root.
fn nix_build(sc: &Scratch, root: &Path, expr: &Path, attr: Option<&str>) -> Vec<String> {
    let mut args = vec!["--store", root.to_str().unwrap(), expr.to_str().unwrap(), "--no-out-link"];
    if let Some(a) = attr {
        args.extend(["-A", a]);
    }
    nix(sc, "nix-build", &args, None).ok().lines()
}

const EXPR: &str = r#"let
  mk = name: deps: derivation {
    inherit name; system = builtins.currentSystem; builder = "/busybox";
    args = [ "sh" "-c" "/busybox mkdir $out && echo ${name} ${builtins.concatStringsSep " " deps} > $out/f" ];
  };
in rec {
  base = mk "base" [];
  lib1 = mk "lib1" [ "${base}" ];
  lib2 = mk "lib2" [ "${base}" ];
  old = { inherit base lib1; };
  new = { inherit base lib2; };
}
"#;

/// Pivot from a lower store to a newer one that shares part of it: every live upper
/// closure stays complete and verifiable; a kill -9 mid-pivot leaves the old setup working.
#[test]
fn pivot_to_a_newer_lower_store() {
    if !have_nix() {
        return;
    }
    with_private_scratch(move |base| {
        let sc = Scratch::new();
        let expr = write(&base.join("expr/default.nix"), EXPR);
        let expr = PathBuf::from(expr);
        let (lower_a, lower_b) = (base.join("lower-a"), base.join("lower-b"));
        let a = nix_build(&sc, &lower_a, &expr, Some("old"));
        let b = nix_build(&sc, &lower_b, &expr, Some("new"));
        let lib1 = a.iter().find(|p| p.ends_with("-lib1")).unwrap().clone();
        let shared = a.iter().find(|p| p.ends_with("-base")).unwrap().clone();
        assert!(b.contains(&shared));
        let spec = |lower: &str| {
            format!("root = \"merged\"\nupper-layer = \"upper\"\nlower-store = {{ type = \"local\", root = \"{lower}\" }}\n[mount]\nworkdir = \"work\"\n")
        };
        let cfg_a = write(&base.join("a.toml"), &spec("lower-a"));
        let cfg_b = write(&base.join("b.toml"), &spec("lower-b"));
        ours(&cfg_a, &["mount"]).ok();
        // A live upper path whose closure uses lib1 (only in A) and base (in both), and a
        // dead one using lib1 too.
        let stream: Vec<u8>;
        {
            // Export lib1's closure from A, plus an upper "app" referring to it, built by
            // importing a stream whose item lists lib1 as a reference.
            let app_src = base.join("in/app");
            write(&app_src, &format!("uses {lib1}\n"));
            let scratch_store = format!("local?root={}", base.join("scratch").display());
            let app = ours(&scratch_store, &["add", app_src.to_str().unwrap()]).ok().out().trim().to_string();
            let one = ours(&scratch_store, &["export", &app]).ok().stdout;
            // Rewrite the reference count (0 → 1) and append lib1 as the reference.
            let tail = 8 + 8 + 8 + 8; // refs count, deriver "", sig flag, end
            let mut item = one[..one.len() - tail].to_vec();
            item.extend_from_slice(&1u64.to_le_bytes());
            item.extend_from_slice(&(lib1.len() as u64).to_le_bytes());
            item.extend_from_slice(lib1.as_bytes());
            item.resize(item.len() + (8 - lib1.len() % 8) % 8, 0);
            item.extend_from_slice(&0u64.to_le_bytes());
            item.extend_from_slice(&0u64.to_le_bytes());
            item.extend_from_slice(&0u64.to_le_bytes());
            stream = item;
        }
        let app = ours_in(&cfg_a, &["import"], Some(&stream)).ok().out().trim().to_string();
        std::os::unix::fs::symlink(&app, base.join("merged/nix/var/nix/gcroots/app")).unwrap();
        ours(&cfg_a, &["verify", "--check-contents"]).ok();

        // The plan: lib1 is live and only in A → copy; base is in B → refreshed.
        let plan = ours(&cfg_a, &["pivot", "--to", &cfg_b, "--dry-run"]).ok().out();
        assert!(plan.contains(&format!("copy {lib1}")), "{plan}");
        assert!(!plan.contains(&shared), "{plan}");
        assert_eq!(ours(&cfg_a, &["check-mount"]).code, 0, "a dry run changes nothing");

        // A running process's temporary root keeps what it uses: without its GC root,
        // app is dead and lib1 (only in A) would be dropped, unless a temp root holds app.
        let app_root = base.join("merged/nix/var/nix/gcroots/app");
        fs::remove_file(&app_root).unwrap();
        let plan = ours(&cfg_a, &["pivot", "--to", &cfg_b, "--dry-run"]).ok().out();
        assert!(plan.contains(&format!("drop {lib1}")), "{plan}");
        {
            use overlay_store::format::StoreDir;
            use overlay_store::store::local::temproots::TempRoots;
            let sd = StoreDir::new("/nix/store");
            let mut roots = TempRoots::new(&base.join("merged/nix/var/nix"), &sd);
            roots.add(&sd.parse_path(&app).unwrap()).unwrap();
            let plan = ours(&cfg_a, &["pivot", "--to", &cfg_b, "--dry-run"]).ok().out();
            assert!(plan.contains(&format!("copy {lib1}")), "a temp root must keep app's closure: {plan}");
        }
        std::os::unix::fs::symlink(&app, &app_root).unwrap();

        // kill -9 part-way: the old setup keeps working.
        for d in [2u64, 8, 20] {
            let mut c = Command::new(BIN)
                .args(["--config", &cfg_a, "pivot", "--to", &cfg_b])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(d));
            let _ = c.kill();
            let _ = c.wait();
            let journal = base.join("merged/nix/var/nix/pivot-in-progress");
            let committing = fs::read_to_string(&journal).map(|t| t.lines().any(|l| l == "committing")).unwrap_or(false);
            if committing || (ours(&cfg_b, &["check-mount"]).code == 0 && !journal.exists()) {
                // It finished, or was killed past the point of no return (it rolls
                // forward): B is the setup now and must verify; go back to A for the
                // next round.
                let v = ours(&cfg_b, &["verify", "--check-contents"]);
                assert_eq!(v.code, 0, "new setup after kill at {d} ms while committing: {}", v.stderr);
                ours(&cfg_b, &["check-mount"]).ok();
                ours(&cfg_b, &["pivot", "--to", &cfg_a]).ok();
                continue;
            }
            let v = ours(&cfg_a, &["verify", "--check-contents"]);
            assert_eq!(v.code, 0, "old setup after kill at {d} ms: {}", v.stderr);
            ours(&cfg_a, &["check-mount"]).ok();
            ours(&cfg_a, &["verify-path", &app]).ok();
        }

        // kill -9 at the worst moments, deterministically. After the mounts were swapped
        // but before the commit began, the pivot is undone.
        let journal = base.join("merged/nix/var/nix/pivot-in-progress");
        let pivot_killed_at = |cfg: &str, to: &str, point: &str| {
            let mut c = Command::new(BIN);
            c.args(["--config", cfg, "pivot", "--to", to]).env("OVERLAY_STORE_KILL_AT", point);
            let r = run_cmd(&mut c, None);
            assert_eq!(r.code, -1, "the pivot must die at {point}: {}", r.stderr);
            assert!(journal.exists(), "killed at {point}, the journal stays for recovery");
        };
        pivot_killed_at(&cfg_a, &cfg_b, "pivot-swapped");
        // Opened with the new spec, the uncommitted pivot is undone too, and says so.
        let r = ours(&cfg_b, &["verify"]);
        assert_ne!(r.code, 0, "the database still describes the old lower store");
        assert!(r.stderr.contains("has been undone"), "{}", r.stderr);
        let v = ours(&cfg_a, &["verify", "--check-contents"]);
        assert_eq!(v.code, 0, "undone after a kill at pivot-swapped: {}", v.stderr);
        ours(&cfg_a, &["check-mount"]).ok();
        assert!(!journal.exists());
        // Killed once the journal says "committing", before or after the transaction
        // committed: the pivot is finished either way, whichever spec opens it next.
        pivot_killed_at(&cfg_a, &cfg_b, "pivot-committing");
        let r = ours(&cfg_a, &["verify"]);
        assert_ne!(r.code, 0, "the old spec no longer describes the store");
        assert!(r.stderr.contains("use the spec that names that lower store"), "{}", r.stderr);
        assert!(!journal.exists(), "opening with either spec finishes the pivot");
        for point in ["", "pivot-committed"] {
            if !point.is_empty() {
                pivot_killed_at(&cfg_a, &cfg_b, point);
            }
            let v = ours(&cfg_b, &["verify", "--check-contents"]);
            assert_eq!(v.code, 0, "finished after a kill at {point:?}: {}", v.stderr);
            ours(&cfg_b, &["check-mount"]).ok();
            ours(&cfg_b, &["verify-path", &app]).ok();
            assert!(!journal.exists());
            ours(&cfg_b, &["pivot", "--to", &cfg_a]).ok();
        }

        // The real pivot.
        ours(&cfg_a, &["pivot", "--to", &cfg_b]).ok();
        ours(&cfg_b, &["check-mount"]).ok();
        let v = ours(&cfg_b, &["verify", "--check-contents"]);
        assert_eq!(v.code, 0, "{}", v.stderr);
        for p in [&app, &lib1, &shared] {
            ours(&cfg_b, &["verify-path", p]).ok();
        }
        // lib1's files are upper now; the new lower store was not touched.
        assert!(base.join("upper").join(Path::new(&lib1).file_name().unwrap()).exists());
        let nv = nix_store(&sc, &lower_b, &["--verify", "--check-contents"]);
        assert_eq!(nv.code, 0);
    });
}
