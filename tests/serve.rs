//! `serve` with real Nix 2.8 clients on a real overlay: queries answer as the lower store
//! does, uploads and builds land in the upper layer only, GC collects upper garbage only,
//! and hostile or many clients cost nothing but their own connections.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A running `serve`, its stderr in a file; killed when dropped.
struct Served {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Served {
    fn start(cfg: &str, socket: &Path, log: &Path, home: &Path) -> Served {
        fs::create_dir_all(home).unwrap();
        let child = Command::new(BIN)
            .args(["--config", cfg, "serve", "--socket"])
            .arg(socket)
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("HOME", home)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let s = Served { child, socket: socket.to_path_buf(), log: log.to_path_buf() };
        let t = Instant::now();
        while !s.log().contains("serving ") {
            assert!(t.elapsed() < Duration::from_secs(20), "serve did not get ready: {}", s.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A Nix client on our socket (`--store daemon`: Nix 2.8 cannot parse a `unix://`
    /// path with a space in it).
    fn nix(&self, sc: &Scratch, program: &str, args: &[&str]) -> Run {
        self.nix_in(sc, program, args, None)
    }

    fn nix_in(&self, sc: &Scratch, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut a = vec!["--store", "daemon"];
        a.extend_from_slice(args);
        nix_env(NIX_CONFIG, sc, program, &a, stdin, &[("NIX_DAEMON_SOCKET_PATH", self.socket.as_os_str())])
    }

    fn stop(mut self) -> String {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}: {}", self.log());
        assert!(!self.socket.exists(), "serve removes its socket when it stops");
        self.log()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An overlay on a lower store Nix built `default.nix` into, mounted, and served.
fn overlay_served(base: &Path, sc: &Scratch) -> (Layers, String, String, Served) {
    let l = Layers::new(base);
    let top = nix_build_default(sc, &l.lower());
    let cfg = l.config();
    ours(&cfg, &["mount"]).ok();
    let served = Served::start(&cfg, &base.join("sock dir/served.socket"), &base.join("serve.log"), &sc.join("home"));
    (l, cfg, top, served)
}

#[test]
fn nix_queries_through_serve_equal_the_lower_store() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let (l, _cfg, top, served) = overlay_served(&base, &sc);
        let lower = l.lower();
        let requisites = nix_store(&sc, &lower, &["-q", "--requisites", &top]).ok().out();
        let mut paths: Vec<String> = requisites.lines().map(str::to_string).collect();
        let drv = nix_store(&sc, &lower, &["-q", "--deriver", &top]).ok().out().trim().to_string();
        paths.push(drv);
        for p in &paths {
            for q in ["--requisites", "--references", "--referrers", "--referrers-closure", "--deriver", "--hash", "--size"] {
                let want = nix_store(&sc, &lower, &["-q", q, p]);
                let got = served.nix(&sc, "nix-store", &["-q", q, p]);
                assert_eq!(got.code, want.code, "-q {q} {p}: {}", got.stderr);
                assert_eq!(got.out(), want.out(), "-q {q} {p}");
            }
        }
        let want = nix(&sc, "nix", &["path-info", "--store", lower.to_str().unwrap(), "--json", "-r", &top], None).ok().out();
        let got = served.nix(&sc, "nix", &["path-info", "--json", "-r", &top]).ok().out();
        // Registration times differ only if the rows were copied at another time; they
        // are copied with the lower store's, so the JSON is the same.
        assert_eq!(got, want);
        let bad = served.nix(&sc, "nix-store", &["-q", "--references", "/nix/store/00000000000000000000000000000000-nope"]);
        assert_ne!(bad.code, 0);
        assert!(bad.stderr.contains("is not valid"), "{}", bad.stderr);
        let log = served.stop();
        assert!(log.contains("accepted connection from pid"), "{log}");
    });
}

#[test]
fn uploads_land_in_the_upper_layer_with_nix_s_rows() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let (l, cfg, top, served) = overlay_served(&base, &sc);
        let before = l.lower_fingerprint();
        let fixtures = make_fixtures(&base.join("in"));
        // nix-store --add: AddToStore. Rows equal what Nix itself writes for the file.
        let oracle = base.join("oracle");
        for f in &fixtures {
            let f = f.to_str().unwrap();
            let got = served.nix(&sc, "nix-store", &["--add", f]).ok().out();
            let want = nix_store(&sc, &oracle, &["--add", f]).ok().out();
            assert_eq!(got, want, "{f}");
            let p = got.trim();
            // (hello.txt is in the lower store already: valid there, so nothing is written.)
            let in_lower = l.lower_real().join(base_of(p)).exists();
            assert_eq!(l.upper_entries().contains(&base_of(p)), !in_lower, "{p} lands in the upper layer unless the lower store has it");
            for q in ["--hash", "--size", "--references"] {
                assert_eq!(served.nix(&sc, "nix-store", &["-q", q, p]).ok().out(), nix_store(&sc, &oracle, &["-q", q, p]).ok().out());
            }
        }
        // nix-store --import: AddToStoreNar. An item referring to a lower path.
        let src = base.join("src-store");
        let file = write(&base.join("in/refers"), &format!("uses {top}\n"));
        let imported = nix_store(&sc, &src, &["--add", &file]).ok().out().trim().to_string();
        let stream = nix_store(&sc, &src, &["--export", &imported]).ok().stdout;
        let got = served.nix_in(&sc, "nix-store", &["--import"], Some(&stream)).ok().out();
        assert_eq!(got.trim(), imported);
        assert!(l.upper_entries().contains(&base_of(&imported)));
        // Its row is the one stock Nix writes importing the same stream (but for when).
        let nix_import = base.join("oracle-import");
        nix(&sc, "nix-store", &["--store", nix_import.to_str().unwrap(), "--import"], Some(&stream)).ok();
        let json = |store: &str, p: &str| nix(&sc, "nix", &["path-info", "--store", store, "--json", p], None);
        let strip_time = |s: String| {
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            let mut v = v[0].clone();
            v.as_object_mut().unwrap().remove("registrationTime");
            v
        };
        assert_eq!(
            strip_time(served.nix(&sc, "nix", &["path-info", "--json", &imported]).ok().out()),
            strip_time(json(nix_import.to_str().unwrap(), &imported).ok().out())
        );
        // nix copy --to: AddMultipleToStore, a closure at once.
        let dir = write_default_nix(&base.join("expr2"));
        let _ = dir;
        let extra = write(&base.join("in/extra"), "extra\n");
        let extra_path = nix_store(&sc, &src, &["--add", &extra]).ok().out().trim().to_string();
        let r = nix_env(
            NIX_CONFIG,
            &sc,
            "nix",
            &["copy", "--from", src.to_str().unwrap(), "--to", "daemon", &extra_path, &imported],
            None,
            &[("NIX_DAEMON_SOCKET_PATH", served.socket.as_os_str())],
        );
        assert_eq!(r.code, 0, "nix copy: {}", r.stderr);
        assert!(l.upper_entries().contains(&base_of(&extra_path)));
        // The row stock `nix copy` writes into a plain store of its own.
        let nix_copy = base.join("oracle-copy");
        nix(&sc, "nix", &["copy", "--from", src.to_str().unwrap(), "--to", nix_copy.to_str().unwrap(), &extra_path], None).ok();
        assert_eq!(
            strip_time(served.nix(&sc, "nix", &["path-info", "--json", &extra_path]).ok().out()),
            strip_time(json(nix_copy.to_str().unwrap(), &extra_path).ok().out())
        );
        // The store verifies, through us and through stock Nix's view of the upper
        // database; the lower store is untouched.
        ours(&cfg, &["verify", "--check-contents"]).ok();
        assert_eq!(served.nix(&sc, "nix-store", &["--verify", "--check-contents"]).code, 0);
        assert_eq!(l.lower_fingerprint(), before, "the lower store changed");
        served.stop();
    });
}

#[test]
fn nix_build_through_serve_builds_into_the_upper_layer_and_gc_keeps_its_root() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let (l, cfg, top, served) = overlay_served(&base, &sc);
        let before = l.lower_fingerprint();
        // A relative import: the scratch path has spaces, which Nix path literals cannot.
        let consumer = write(
            &sc.join("consumer/default.nix"),
            "let top = import ../expr/default.nix; in derivation { name = \"consumer\"; system = builtins.currentSystem; builder = \"/busybox\"; args = [ \"sh\" \"-c\" \"echo ${top} > $out\" ]; }\n",
        );
        let link = base.join("result");
        let r = served.nix(&sc, "nix-build", &[&consumer, "-o", link.to_str().unwrap()]);
        assert_eq!(r.code, 0, "nix-build: {}\n{}", r.stderr, served.log());
        let out = r.out().trim().to_string();
        assert!(out.ends_with("-consumer"), "{out}");
        assert_eq!(fs::read_to_string(l.real().join(base_of(&out))).unwrap().trim(), top);
        assert!(l.upper_entries().contains(&base_of(&out)), "the output is in the upper layer");
        assert!(!l.lower_real().join(base_of(&out)).exists());
        // The sandbox hard-links inputs (copying lower files up); the server drops those copies.
        for p in nix_store(&sc, &l.lower(), &["-q", "--requisites", &top]).ok().lines() {
            assert!(!l.upper_entries().contains(&base_of(&p)), "upper copy of lower input {p} left behind");
        }
        ours(&cfg, &["verify", "--check-contents"]).ok();
        ours(&cfg, &["verify-path", &out]).ok();
        // `nix build` takes the output paths from the build results (BuildPathsWithResults:
        // realisations named by the derivation's hash modulo, recursively over its inputs).
        let r = served.nix(&sc, "nix", &["build", "-f", &consumer, "--json", "--no-link"]);
        assert_eq!(r.code, 0, "nix build: {}", r.stderr);
        let json: serde_json::Value = serde_json::from_str(&r.out()).unwrap();
        assert_eq!(json[0]["outputs"]["out"].as_str(), Some(out.as_str()), "{json}");
        // The -o link is an indirect root: GC through serve keeps the output, and
        // collects only upper garbage.
        let junk = served.nix(&sc, "nix-store", &["--add", &write(&base.join("in/junk"), "junk\n")]).ok().out().trim().to_string();
        let r = served.nix(&sc, "nix-store", &["--gc"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!l.upper_entries().contains(&base_of(&junk)), "junk was collected");
        assert!(l.upper_entries().contains(&base_of(&out)), "the rooted output stays");
        assert_eq!(served.nix(&sc, "nix-store", &["-q", "--hash", &out]).code, 0);
        // Delete: refused while rooted, done once the root is gone.
        let r = served.nix(&sc, "nix-store", &["--delete", &out]);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("since it is still alive"), "{}", r.stderr);
        fs::remove_file(&link).unwrap();
        served.nix(&sc, "nix-store", &["--delete", &out]).ok();
        assert!(!l.upper_entries().contains(&base_of(&out)));
        assert_eq!(l.lower_fingerprint(), before, "the lower store changed");
        ours(&cfg, &["verify", "--check-contents"]).ok();
        served.stop();
    });
}

/// Garbage, a huge length, a truncated frame and silence each cost one connection;
/// eight clients at once share the store; afterwards everything verifies.
#[test]
fn hostile_and_concurrent_clients() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let (_l, cfg, top, served) = overlay_served(&base, &sc);
        let connect = || crate::common::connect_long(&served.socket);
        let hello = |s: &mut UnixStream| {
            s.write_all(&0x6e697863u64.to_le_bytes()).unwrap();
            let mut b = [0u8; 16];
            s.read_exact(&mut b).unwrap();
            s.write_all(&0x122u64.to_le_bytes()).unwrap();
            s.write_all(&[0u8; 16]).unwrap();
        };
        // Garbage instead of the magic.
        let mut s = connect();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        // A huge string length in a request.
        let mut s = connect();
        hello(&mut s);
        s.write_all(&1u64.to_le_bytes()).unwrap();
        s.write_all(&u64::MAX.to_le_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut rest);
        // A truncated upload, then the client dies.
        let mut s = connect();
        hello(&mut s);
        s.write_all(&39u64.to_le_bytes()).unwrap();
        s.write_all(&[7u8; 13]).unwrap();
        drop(s);
        // Silence: a connection that never says anything.
        let idle = connect();
        // Eight clients at once, querying and adding.
        let socket = served.socket.clone();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (socket, top) = (socket.clone(), top.clone());
                let sc_home = sc.join(&format!("home{i}"));
                let file = write(&base.join(format!("in/c{i}")), &format!("client {i}\n"));
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        let env = [("NIX_DAEMON_SOCKET_PATH", socket.as_os_str()), ("HOME", sc_home.as_os_str())];
                        let mut c = Command::new("nix-store");
                        c.args(["--store", "daemon", "-q", "--requisites", &top]).env("NIX_CONFIG", NIX_CONFIG).envs(env);
                        let r = run_cmd(&mut c, None);
                        assert_eq!(r.code, 0, "{}", r.stderr);
                        let mut c = Command::new("nix-store");
                        c.args(["--store", "daemon", "--add", &file]).env("NIX_CONFIG", NIX_CONFIG).envs(env);
                        let r = run_cmd(&mut c, None);
                        assert_eq!(r.code, 0, "{}", r.stderr);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(idle);
        let r = served.nix(&sc, "nix-store", &["-q", "--references", &top]);
        assert_eq!(r.code, 0, "the server still serves: {}", r.stderr);
        ours(&cfg, &["verify", "--check-contents"]).ok();
        served.stop();
    });
}

/// A raw worker-protocol client, for what Nix's own client cannot be made to do here
/// (connect as another user from inside this test process).
struct RawClient {
    s: UnixStream,
}

impl RawClient {
    fn u64(&mut self, n: u64) {
        self.s.write_all(&n.to_le_bytes()).unwrap();
    }
    fn str(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.s.write_all(b).unwrap();
        self.s.write_all(&[0u8; 8][..(8 - b.len() % 8) % 8]).unwrap();
    }
    fn strs(&mut self, items: &[&str]) {
        self.u64(items.len() as u64);
        for i in items {
            self.str(i.as_bytes());
        }
    }
    fn read_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.s.read_exact(&mut b).unwrap();
        u64::from_le_bytes(b)
    }
    fn read_str(&mut self) -> String {
        let n = self.read_u64() as usize;
        let mut b = vec![0u8; n + (8 - n % 8) % 8];
        self.s.read_exact(&mut b).unwrap();
        b.truncate(n);
        String::from_utf8(b).unwrap()
    }
    /// Log frames until `STDERR_LAST` (Ok) or `STDERR_ERROR` (its message).
    fn result(&mut self) -> Result<(), String> {
        loop {
            match self.read_u64() {
                0x616c_7473 => return Ok(()),
                0x6f6c_6d67 => {
                    self.read_str();
                }
                0x6378_7470 => {
                    self.read_str();
                    self.read_u64();
                    self.read_str();
                    let msg = self.read_str();
                    self.read_u64();
                    for _ in 0..self.read_u64() {
                        self.read_u64();
                        self.read_str();
                    }
                    return Err(msg);
                }
                other => panic!("unexpected frame {other:#x}"),
            }
        }
    }
    fn handshake(&mut self) -> Result<(), String> {
        self.u64(0x6e69_7863);
        assert_eq!(self.read_u64(), 0x6478_696f);
        assert_eq!(self.read_u64(), 0x122);
        self.u64(0x122);
        self.u64(0);
        self.u64(0);
        let version = self.read_str();
        assert!(!version.is_empty());
        self.result()
    }
    fn framed(&mut self, data: &[u8]) {
        for chunk in data.chunks(1000) {
            self.u64(chunk.len() as u64);
            self.s.write_all(chunk).unwrap();
        }
        self.u64(0);
    }
}

/// Connects to `socket` as uid/gid 65534 (nobody): the directory is opened while still
/// root, then only this thread drops its credentials (a raw setresuid affects one
/// thread), so the server's SO_PEERCRED sees an ordinary user.
fn as_nobody<T: Send + 'static>(socket: &Path, f: impl FnOnce(RawClient) -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(socket.parent().unwrap()).unwrap();
    let name = socket.file_name().unwrap().to_owned();
    std::thread::spawn(move || {
        // SAFETY: raw syscalls changing only this thread's credentials.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
        }
        let via = Path::new("/proc/thread-self/fd").join(dir.as_raw_fd().to_string()).join(name);
        let s = UnixStream::connect(&via).expect("connect as nobody");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        f(RawClient { s })
    })
    .join()
    .unwrap()
}

/// Untrusted users get Nix's limits (stricter where the overlay is shared): no deleting,
/// no input-addressed uploads without a signature, censored roots, content-addressed
/// uploads allowed; users not allowed are refused at the handshake with a reason.
#[test]
fn untrusted_users_get_nix_s_limits() {
    if !have_nix() || !is_root() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let (l, _cfg, top, served) = overlay_served(&base, &sc);
        let file = write(&base.join("in/untrusted"), "from nobody\n");
        let nar = nix(&sc, "nix-store", &["--dump", &file], None).ok().stdout;
        let ca_path = nix_store(&sc, &base.join("oracle"), &["--add", &file]).ok().out().trim().to_string();
        let hash16 = {
            let h = nix(&sc, "nix-hash", &["--type", "sha256", &file], None).ok().out();
            h.trim().to_string()
        };
        let hash32 = nix(&sc, "nix-hash", &["--type", "sha256", "--base32", &file], None).ok().out().trim().to_string();
        let other = write(&base.join("in/other"), "not what the address says\n");
        let other_nar = nix(&sc, "nix-store", &["--dump", &other], None).ok().stdout;
        let other16 = nix(&sc, "nix-hash", &["--type", "sha256", &other], None).ok().out().trim().to_string();
        // A NAR of a symlink to /dev/zero, uploaded as a `.drv` (registering a .drv reads it).
        let zero = base.join("in/zero.drv");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let zero_nar = nix(&sc, "nix-store", &["--dump", zero.to_str().unwrap()], None).ok().stdout;
        let (top2, ca2) = (top.clone(), ca_path.clone());
        let outcome = as_nobody(&served.socket, move |mut c| {
            c.handshake().expect("nobody is an allowed user");
            // Reading is fine.
            c.u64(1);
            c.str(top2.as_bytes());
            c.result().unwrap();
            assert_eq!(c.read_u64(), 1);
            // Deleting is not.
            c.u64(20);
            c.u64(3);
            c.strs(&[&top2]);
            c.u64(0);
            c.u64(u64::MAX);
            c.u64(0);
            c.u64(0);
            c.u64(0);
            let gc = c.result().unwrap_err();
            // An input-addressed upload without a signature is refused, and the
            // connection stays in step (its NAR is drained).
            c.u64(39);
            c.str(b"/nix/store/0000000000000000000000000000000a-claims-to-be-anything");
            c.str(b"");
            c.str(hash16.as_bytes());
            c.strs(&[]);
            c.u64(0);
            c.u64(nar.len() as u64);
            c.u64(0);
            c.strs(&[]);
            c.str(b"");
            c.u64(0);
            c.u64(1);
            c.framed(&nar);
            let upload = c.result().unwrap_err();
            // A content-addressed upload proves itself.
            c.u64(7);
            c.str(b"untrusted");
            c.str(b"fixed:r:sha256");
            c.strs(&[]);
            c.u64(0);
            c.framed(&nar);
            c.result().expect("a content-addressed upload is allowed");
            let added = c.read_str();
            for _ in 0..2 {
                c.read_str();
            }
            for _ in 0..c.read_u64() {
                c.read_str();
            }
            for _ in 0..4 {
                c.read_u64();
            }
            c.read_str();
            assert_eq!(added, ca2);
            // A content address that is not the content's: refused (Nix's "ca hash
            // mismatch"), whoever asks.
            c.u64(39);
            c.str(ca2.as_bytes());
            c.str(b"");
            c.str(other16.as_bytes());
            c.strs(&[]);
            c.u64(0);
            c.u64(other_nar.len() as u64);
            c.u64(0);
            c.strs(&[]);
            c.str(format!("fixed:r:sha256:{hash32}").as_bytes());
            c.u64(0);
            c.u64(0);
            c.framed(&other_nar);
            let forged = c.result().unwrap_err();
            // A `.drv` that is a symlink to /dev/zero: an error, not a read of it.
            c.u64(7);
            c.str(b"zero.drv");
            c.str(b"fixed:r:sha256");
            c.strs(&[]);
            c.u64(0);
            c.framed(&zero_nar);
            let zero_drv = c.result().unwrap_err();
            // Roots: other processes' temp roots are censored.
            c.u64(11);
            c.str(top2.as_bytes());
            c.result().unwrap();
            c.read_u64();
            c.u64(14);
            c.result().unwrap();
            let n = c.read_u64();
            let links: Vec<String> = (0..n).map(|_| (c.read_str(), c.read_str()).0).collect();
            (gc, upload, links, forged, zero_drv)
        });
        let (gc, upload, links, forged, zero_drv) = outcome;
        assert!(forged.contains("ca hash mismatch"), "{forged}");
        assert!(zero_drv.contains("is not a regular file"), "{zero_drv}");
        assert!(gc.contains("not privileged to delete"), "{gc}");
        assert!(upload.contains("lacks a signature by a trusted key"), "{upload}");
        assert!(links.iter().all(|l| !l.starts_with("{temp:")), "{links:?}");
        assert!(l.upper_entries().contains(&base_of(&ca_path)), "the content-addressed upload landed in the upper layer");
        assert!(l.real().join(base_of(&top)).exists());

        // A spec that allows only root: nobody is turned away at the handshake.
        let cfg2 = l.config_with("[serve]\nallowed-users = [\"root\"]\nmax-connections = 1\n");
        let served2 = Served::start(&cfg2, &base.join("sock dir/root-only.socket"), &base.join("serve2.log"), &sc.join("home"));
        let refused = as_nobody(&served2.socket, |mut c| c.handshake());
        let msg = refused.unwrap_err();
        assert!(msg.contains("is not allowed to connect"), "{msg}");
        assert!(served2.log().contains("refused a connection"), "{}", served2.log());
        // One connection at most: a second client is told why it is turned away.
        // (The refused connection above may still be counted for a moment.)
        let mut first = RawClient { s: connect_long(&served2.socket) };
        for _ in 0..100 {
            match first.handshake() {
                Ok(()) => break,
                Err(e) if e.contains("limit") => {
                    std::thread::sleep(Duration::from_millis(20));
                    first = RawClient { s: connect_long(&served2.socket) };
                }
                Err(e) => panic!("{e}"),
            }
        }
        let mut second = RawClient { s: connect_long(&served2.socket) };
        let msg = second.handshake().unwrap_err();
        assert!(msg.contains("limit of 1 connections"), "{msg}");
        drop(first);
        served2.stop();
        served.stop();
    });
}

/// systemd socket activation: the listening socket comes as fd 3 with `LISTEN_FDS` and
/// `LISTEN_PID`; serve uses it instead of binding, and leaves it to systemd at stop.
#[test]
fn systemd_socket_activation() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let sc = Scratch::new();
        let l = Layers::new(&base);
        nix_build_default(&sc, &l.lower());
        let cfg = l.config();
        ours(&cfg, &["mount"]).ok();
        let socket = base.join("sock dir/activated.socket");
        fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let listener = overlay_store::store::fs::socket::bind(&socket).unwrap();
        let fd = listener.as_raw_fd();
        let log = base.join("activated.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"", BIN, "--config", &cfg, "serve"])
            .env("NIX_CONFIG", NIX_CONFIG)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || if libc::dup2(fd, 3) == 3 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
        }
        let child = cmd.spawn().unwrap();
        let served = Served { child, socket: socket.clone(), log };
        let t = Instant::now();
        while !served.log().contains("serving ") {
            assert!(t.elapsed() < Duration::from_secs(20), "{}", served.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(listener);
        let r = served.nix(&sc, "nix-store", &["-q", "--requisites", "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"]);
        assert_eq!(r.code, 0, "{}\n{}", r.stderr, served.log());
        let mut served = served;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(served.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        assert!(served.child.wait().unwrap().success());
        assert!(socket.exists(), "an activated socket belongs to systemd: serve leaves it");
    });
}

/// A client that dies in the middle of an `AddMultipleToStore` upload leaves nothing
/// registered and no files behind: the items are staged and registered together.
#[test]
fn a_client_killed_mid_upload_leaves_nothing() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let (l, cfg, _top, served) = overlay_served(&base, &sc);
        let files: Vec<String> = (0..2).map(|i| write(&base.join(format!("in/up{i}")), &format!("upload {i}\n").repeat(1000))).collect();
        let nars: Vec<Vec<u8>> = files.iter().map(|f| nix(&sc, "nix-store", &["--dump", f], None).ok().stdout).collect();
        let hashes: Vec<String> =
            files.iter().map(|f| nix(&sc, "nix-hash", &["--type", "sha256", f], None).ok().out().trim().to_string()).collect();
        let paths = ["/nix/store/1111111111111111111111111111111a-up0", "/nix/store/1111111111111111111111111111111b-up1"];
        let before = l.upper_entries();
        let mut c = RawClient { s: connect_long(&served.socket) };
        c.handshake().unwrap();
        // The framed body: count, then info + NAR per item; the second NAR is cut short.
        let mut body = Vec::new();
        let put_u64 = |b: &mut Vec<u8>, n: u64| b.extend_from_slice(&n.to_le_bytes());
        let put_str = |b: &mut Vec<u8>, s: &[u8]| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s);
            b.resize(b.len() + (8 - s.len() % 8) % 8, 0);
        };
        put_u64(&mut body, 2);
        for i in 0..2 {
            put_str(&mut body, paths[i].as_bytes());
            put_str(&mut body, b"");
            put_str(&mut body, hashes[i].as_bytes());
            put_u64(&mut body, 0);
            put_u64(&mut body, 0);
            put_u64(&mut body, nars[i].len() as u64);
            put_u64(&mut body, 0);
            put_u64(&mut body, 0);
            put_str(&mut body, b"");
            if i == 0 {
                body.extend_from_slice(&nars[0]);
            } else {
                body.extend_from_slice(&nars[1][..nars[1].len() / 2]);
            }
        }
        c.u64(44);
        c.u64(0);
        c.u64(0);
        // Frames of the body, then the client dies before the end.
        for chunk in body.chunks(4096) {
            c.u64(chunk.len() as u64);
            c.s.write_all(chunk).unwrap();
        }
        drop(c);
        // The server notices, cleans up, and serves the next client.
        let t = Instant::now();
        loop {
            let r = served.nix(&sc, "nix-store", &["--check-validity", paths[0]]);
            assert_ne!(r.code, 0, "the first item must not be registered on its own");
            if l.upper_entries() == before || t.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(l.upper_entries(), before, "no staged files are left behind");
        assert_ne!(served.nix(&sc, "nix-store", &["--check-validity", paths[1]]).code, 0);
        ours(&cfg, &["verify", "--check-contents"]).ok();
        served.stop();
    });
}
