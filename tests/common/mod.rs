//! Shared helpers for the end-to-end tests: a scratch directory per test, our binary,
//! and real Nix 2.8 as an oracle.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_overlay-store");

/// Whether real Nix is here. With `OVERLAY_STORE_REQUIRE_NIX=1` a missing Nix fails the
/// test instead of skipping it, so CI cannot pass without having run the interop tests.
pub fn have_nix() -> bool {
    let ok = Command::new("nix-store")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("OVERLAY_STORE_REQUIRE_NIX").as_deref() == Ok("1") {
            panic!("real Nix (nix-store) is required (OVERLAY_STORE_REQUIRE_NIX=1) but was not found; install Debian's nix-bin");
        }
        eprintln!("skipping: nix-store not found (install nix-bin, or set OVERLAY_STORE_REQUIRE_NIX=1 to make this fatal)");
    }
    ok
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A scratch directory, removed at the end of the test (after making it writable again:
/// store objects are read-only).
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::Builder::new().prefix("os-test-").tempdir().expect("tempdir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.dir.path()).status();
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn lines(&self) -> Vec<String> {
        self.out().lines().map(str::to_string).collect()
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "command failed: stderr:\n{}\nstdout:\n{}", self.stderr, self.out());
        self
    }
}

fn finish(o: Output) -> Run {
    Run { code: o.status.code().unwrap_or(-1), stdout: o.stdout, stderr: String::from_utf8_lossy(&o.stderr).into_owned() }
}

pub fn run_cmd(cmd: &mut Command, stdin: Option<&[u8]>) -> Run {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        si.write_all(data).expect("write stdin");
    }
    finish(child.wait_with_output().expect("wait"))
}

/// Our binary on a store given as URI or TOML file.
pub fn ours(store: &str, args: &[&str]) -> Run {
    ours_in(store, args, None)
}

pub fn ours_in(store: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut c = Command::new(BIN);
    if store.ends_with(".toml") {
        c.arg("--config").arg(store);
    } else {
        c.arg("--store").arg(store);
    }
    c.args(args);
    c.env_remove("RUST_LOG");
    run_cmd(&mut c, stdin)
}

/// `nix-store`/`nix`/`nix-build` with the environment that works here as root without a
/// daemon; HOME points into the scratch dir so Nix's caches stay inside the test.
pub fn nix(scratch: &Scratch, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    nix_with(NIX_CONFIG, scratch, program, args, stdin)
}

/// What `nix` runs Nix with.
pub const NIX_CONFIG: &str =
    "build-users-group = \nexperimental-features = nix-command\nextra-sandbox-paths = /busybox=/bin/busybox\nsubstituters = \n";

/// `nix` with another `NIX_CONFIG` (for example with more experimental features).
pub fn nix_with(config: &str, scratch: &Scratch, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
    nix_env(config, scratch, program, args, stdin, &[])
}

pub fn nix_env(
    config: &str,
    scratch: &Scratch,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &std::ffi::OsStr)],
) -> Run {
    let home = scratch.join("home");
    fs::create_dir_all(&home).unwrap();
    let mut c = Command::new(program);
    c.args(args).env("NIX_CONFIG", config).env("HOME", &home).env("XDG_CACHE_HOME", home.join(".cache")).env_remove("NIX_REMOTE");
    c.envs(env.iter().copied());
    run_cmd(&mut c, stdin)
}

pub fn nix_store(scratch: &Scratch, root: &Path, args: &[&str]) -> Run {
    let mut a = vec!["--store", root.to_str().unwrap()];
    a.extend_from_slice(args);
    nix(scratch, "nix-store", &a, None)
}

/// The file fixtures of nix-formats.md: hello.txt, exe.sh, dir/ and more edge cases.
pub fn make_fixtures(base: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(base).unwrap();
    let hello = base.join("hello.txt");
    fs::write(&hello, "hello\n").unwrap();
    let exe = base.join("exe.sh");
    fs::write(&exe, "hi\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let empty = base.join("empty");
    fs::write(&empty, "").unwrap();
    let link = base.join("link");
    std::os::unix::fs::symlink("/nix/store/foo", &link).unwrap();
    let dir = base.join("dir");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.txt"), "hello\n").unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
    fs::write(dir.join("sub/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(dir.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let empty_dir = base.join("emptydir");
    fs::create_dir_all(&empty_dir).unwrap();
    let nested = base.join("nested");
    fs::create_dir_all(nested.join("a/b/c/d")).unwrap();
    fs::create_dir_all(nested.join("a/empty")).unwrap();
    for (i, name) in ["B", "a-b", "a.b", "z", "é"].iter().enumerate() {
        fs::write(nested.join(name), format!("{i}\n").repeat(1000 * i + 1)).unwrap();
    }
    fs::write(nested.join("a/b/c/d/deep"), vec![7u8; 100_000]).unwrap();
    vec![hello, exe, empty, link, dir, empty_dir, nested]
}

/// The two-derivation expression of nix-formats.md §2.5 (references, a self-reference,
/// a second output, derivers).
pub fn write_default_nix(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("hello.txt"), "hello\n").unwrap();
    let expr = r#"let
  dep = derivation {
    name = "dep"; system = builtins.currentSystem; builder = "/busybox";
    args = [ "sh" "-c" "/busybox mkdir $out && echo dep > $out/file" ];
  };
in derivation {
  name = "top"; system = builtins.currentSystem; builder = "/busybox";
  outputs = [ "out" "doc" ];
  args = [ "sh" "-c" "/busybox mkdir $out $doc && echo ${dep} > $out/ref && echo ${./hello.txt} >> $out/ref && echo $out > $out/self && echo doc > $doc/readme" ];
}
"#;
    let f = dir.join("default.nix");
    fs::write(&f, expr).unwrap();
    f
}

/// Builds default.nix into a chroot store with real Nix; returns the `top` output path.
pub fn nix_build_default(scratch: &Scratch, root: &Path) -> String {
    let f = write_default_nix(&scratch.join("expr"));
    let r = nix(scratch, "nix-build", &["--store", root.to_str().unwrap(), f.to_str().unwrap(), "--no-out-link"], None);
    assert_eq!(r.code, 0, "nix-build failed: {}", r.stderr);
    r.lines().into_iter().find(|l| l.ends_with("-top")).expect("top output")
}

/// Runs `f` in a thread with its own private mount namespace, with a fresh tmpfs mounted
/// on `dir`: every mount the test (or the processes it starts) makes disappears with the
/// thread, even when it panics. Returns false (skipping) when not root.
pub fn with_private_mounts(dir: &Path, f: impl FnOnce() + Send + 'static) -> bool {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    if !is_root() {
        if std::env::var("OVERLAY_STORE_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("this test mounts OverlayFS and must run as root");
        }
        eprintln!("skipping: OverlayFS tests need root");
        return false;
    }
    let dir = dir.to_path_buf();
    let handle = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).expect("make / private");
        fs::create_dir_all(&dir).unwrap();
        mount(Some("tmpfs"), &dir, Some("tmpfs"), MsFlags::empty(), Some("size=2g")).expect("mount tmpfs");
        f();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
    true
}

/// [`with_private_mounts`] on a fresh scratch directory, which `f` gets as its argument.
pub fn with_private_scratch(f: impl FnOnce(PathBuf) + Send + 'static) -> bool {
    let s = Scratch::new();
    let base = s.path().to_path_buf();
    with_private_mounts(s.path(), move || f(base))
}

/// Writes a file and returns its path as a string.
pub fn write(path: &Path, text: &str) -> String {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, text).unwrap();
    path.to_str().unwrap().to_string()
}

pub fn mount_overlay(lower: &Path, upper: &Path, work: &Path, merged: &Path) {
    for d in [upper, work, merged] {
        fs::create_dir_all(d).unwrap();
    }
    let data = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    nix::mount::mount(Some("overlay"), merged, Some("overlay"), nix::mount::MsFlags::empty(), Some(data.as_str())).expect("mount overlay");
}

pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// A nix-daemon serving `root` on `socket`, stopped when dropped.
pub struct Daemon {
    child: std::process::Child,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(scratch: &Scratch, root: &Path, socket: &Path, nix_config: &str) -> Daemon {
        fs::create_dir_all(scratch.join("home")).unwrap();
        let child = Command::new("nix-daemon")
            .args(["--store", root.to_str().unwrap()])
            .env("NIX_DAEMON_SOCKET_PATH", socket)
            .env("NIX_CONFIG", nix_config)
            .env("HOME", scratch.join("home"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nix-daemon");
        let t = std::time::Instant::now();
        while !socket.exists() {
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "nix-daemon did not create its socket");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Daemon { child, socket: socket.to_path_buf() }
    }

    /// Runs a Nix client against this daemon. Nix 2.8 cannot parse a `unix://` URI
    /// whose path has a space, so the socket is named the way Nix documents for that:
    /// `--store daemon` with `NIX_DAEMON_SOCKET_PATH`.
    pub fn nix(&self, scratch: &Scratch, program: &str, args: &[&str]) -> Run {
        let mut a = vec!["--store", "daemon"];
        a.extend_from_slice(args);
        nix_env(NIX_CONFIG, scratch, program, &a, None, &[("NIX_DAEMON_SOCKET_PATH", self.socket.as_os_str())])
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

/// The usual overlay fixture under `base`: a local lower store at `lower/`, the upper
/// layer at `upper/`, the workdir at `work/`, the merged root at `merged/` (store dir
/// `merged/nix/store`, state `merged/nix/var/nix`), and `store.toml` describing them.
pub struct Layers {
    pub base: PathBuf,
}

impl Layers {
    pub fn new(base: &Path) -> Layers {
        Layers { base: base.to_path_buf() }
    }
    pub fn lower(&self) -> PathBuf {
        self.base.join("lower")
    }
    pub fn lower_real(&self) -> PathBuf {
        self.lower().join("nix/store")
    }
    pub fn upper(&self) -> PathBuf {
        self.base.join("upper")
    }
    pub fn merged_root(&self) -> PathBuf {
        self.base.join("merged")
    }
    pub fn real(&self) -> PathBuf {
        self.merged_root().join("nix/store")
    }
    pub fn state(&self) -> PathBuf {
        self.merged_root().join("nix/var/nix")
    }
    pub fn lower_uri(&self) -> String {
        format!("local?root={}", self.lower().display())
    }
    /// The upper store seen as a plain local store over the merged dir (stock Nix's view).
    pub fn nix_view(&self) -> String {
        format!("local?real={}&state={}", self.real().display(), self.state().display())
    }
    /// Writes `store.toml`; `extra` goes among the top-level keys (it may end in tables).
    pub fn config_with(&self, extra: &str) -> String {
        write(
            &self.base.join("store.toml"),
            &format!(
                "type = \"local-overlay\"\nroot = \"merged\"\nupper-layer = \"upper\"\n{extra}\n[lower-store]\ntype = \"local\"\nroot = \"lower\"\n\n[mount]\nworkdir = \"work\"\n"
            ),
        )
    }
    pub fn config(&self) -> String {
        self.config_with("")
    }
    pub fn upper_entries(&self) -> Vec<String> {
        listing(&self.upper()).into_iter().filter(|n| n != ".links").collect()
    }
    /// Lower store contents and database bytes, to show they never change.
    pub fn lower_fingerprint(&self) -> (Vec<String>, Vec<u8>) {
        (listing(&self.lower_real()), fs::read(self.lower().join("nix/var/nix/db/db.sqlite")).unwrap())
    }
}

/// `add` through our binary; the printed store path.
pub fn add(store: &str, file: &str) -> String {
    ours(store, &["add", file]).ok().out().trim().to_string()
}

/// The base name of a store path.
pub fn base_of(p: &str) -> String {
    Path::new(p).file_name().unwrap().to_str().unwrap().to_string()
}

/// Connects to a Unix socket however long its path (through the directory's descriptor).
pub fn connect_long(path: &Path) -> std::os::unix::net::UnixStream {
    overlay_store::store::fs::socket::connect(path).expect("connect")
}

/// Nix 2.8 cannot parse a `file://` URL (or a URL parameter) with a space in it, and CI
/// runs under such a directory. Inside a test's private mount namespace this binds `dir`
/// onto a new space-free directory under /tmp, for the URLs given to stock Nix; the
/// directory is removed when the guard drops (the bind mount dies with the namespace).
pub struct NixAlias {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn nix_alias(dir: &Path) -> NixAlias {
    let alias = tempfile::Builder::new().prefix("os-nix-").tempdir_in("/tmp").expect("alias dir");
    nix::mount::mount(Some(dir), alias.path(), None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).expect("bind mount");
    NixAlias { path: alias.path().to_path_buf(), _dir: alias }
}

impl Drop for NixAlias {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}
