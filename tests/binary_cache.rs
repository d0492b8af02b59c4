//! Binary caches with real Nix 2.8 on real overlays: caches stock `nix copy --to` made
//! (several compressions, over file:// and a test-local HTTP server) fill only the
//! missing part of a closure into the upper layer with the rows stock `nix copy --from`
//! writes; tampered, unsigned, truncated, hanging and runaway caches change nothing;
//! what `copy --to` and `serve --http` publish, stock Nix substitutes with signature
//! checking on; and a fleet of three overlays on one lower store shares a cache.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How the test HTTP server misbehaves for NAR files.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Honest,
    /// Sends the headers and half the body, then closes.
    Truncate,
    /// Sends the headers, then nothing, for a long time.
    Hang,
    /// Sends far more than the file, without a length.
    Flood,
}

/// A test-local HTTP server for a cache directory (GET and HEAD of files).
struct HttpFiles {
    port: u16,
    mode: Arc<Mutex<Mode>>,
}

impl HttpFiles {
    fn start(dir: PathBuf) -> HttpFiles {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(Mode::Honest));
        let m = mode.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let dir = dir.clone();
                let mode = *m.lock().unwrap();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let mut length = 0usize;
                    let mut chunked = false;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        let lower = h.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("/").trim_start_matches('/').to_string();
                    if method == "PUT" {
                        // Uploads (copy --to http://…): a plain or chunked body into the directory.
                        let mut body = Vec::new();
                        if chunked {
                            loop {
                                let mut size = String::new();
                                reader.read_line(&mut size).unwrap();
                                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                                let mut chunk = vec![0u8; n + 2];
                                std::io::Read::read_exact(&mut reader, &mut chunk).unwrap();
                                if n == 0 {
                                    break;
                                }
                                body.extend_from_slice(&chunk[..n]);
                            }
                        } else {
                            body.resize(length, 0);
                            std::io::Read::read_exact(&mut reader, &mut body).unwrap();
                        }
                        let dest = dir.join(&path);
                        fs::create_dir_all(dest.parent().unwrap()).unwrap();
                        fs::write(dest, body).unwrap();
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        return;
                    }
                    let Ok(body) = fs::read(dir.join(&path)) else {
                        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                        return;
                    };
                    let is_nar = path.starts_with("nar/");
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    match (mode, is_nar) {
                        (Mode::Truncate, true) => {
                            let _ = conn.write_all(head.as_bytes());
                            let _ = conn.write_all(&body[..body.len() / 2]);
                        }
                        (Mode::Hang, true) => {
                            let _ = conn.write_all(head.as_bytes());
                            std::thread::sleep(Duration::from_secs(60));
                        }
                        (Mode::Flood, true) => {
                            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                            let junk = vec![0u8; 1 << 20];
                            for _ in 0..4096 {
                                if conn.write_all(&junk).is_err() {
                                    break;
                                }
                            }
                        }
                        _ => {
                            let _ = conn.write_all(head.as_bytes());
                            if method != "HEAD" {
                                let _ = conn.write_all(&body);
                            }
                        }
                    }
                });
            }
        });
        HttpFiles { port, mode }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

/// A source store where Nix built default.nix (top -> dep, hello.txt), a key pair, and
/// the closure of `top`.
struct Source {
    root: PathBuf,
    top: String,
    closure: Vec<String>,
    sk: String,
    pk: String,
    base: PathBuf,
    alias: NixAlias,
}

impl Source {
    /// A `file://` URL (and its parameters' paths) as stock Nix can parse it.
    fn for_nix(&self, url: &str) -> String {
        url.replace(self.base.to_str().unwrap(), self.alias.path.to_str().unwrap())
    }
}

fn source(sc: &Scratch, base: &Path) -> Source {
    let root = base.join("source");
    let top = nix_build_default(sc, &root);
    let closure = nix_store(sc, &root, &["-q", "--requisites", &top]).ok().lines();
    let sk = base.join("keys/cache-1.sk");
    let pk = base.join("keys/cache-1.pk");
    fs::create_dir_all(sk.parent().unwrap()).unwrap();
    nix(sc, "nix-store", &["--generate-binary-cache-key", "cache-1", sk.to_str().unwrap(), pk.to_str().unwrap()], None).ok();
    Source {
        root,
        top,
        closure,
        sk: sk.to_str().unwrap().into(),
        pk: fs::read_to_string(&pk).unwrap().trim().to_string(),
        base: base.to_path_buf(),
        alias: nix_alias(base),
    }
}

/// `nix copy --to file://DIR?…` from the source store.
fn nix_publish(sc: &Scratch, src: &Source, dir: &Path, params: &str, paths: &[&str]) {
    let url = src.for_nix(&format!("file://{}?{params}", dir.display()));
    let mut args = vec!["copy", "--store", src.root.to_str().unwrap(), "--to", url.as_str()];
    args.extend_from_slice(paths);
    nix(sc, "nix", &args, None).ok();
}

/// An overlay whose lower store holds `dep` (imported from the source), mounted; the
/// spec trusts the source's key (and `extra` goes into its [binary-caches] table).
fn overlay(sc: &Scratch, base: &Path, src: &Source, extra: &str) -> (Layers, String, String) {
    let l = Layers::new(base);
    let dep = src.closure.iter().find(|p| p.ends_with("-dep")).unwrap().clone();
    let stream = nix_store(sc, &src.root, &["--export", &dep]).ok().stdout;
    nix(sc, "nix-store", &["--store", l.lower().to_str().unwrap(), "--import"], Some(&stream)).ok();
    let cfg = l.config_with(&format!("[binary-caches]\ntrusted-public-keys = [\"{}\"]\n{extra}\n", src.pk));
    // config_with puts `extra` before [lower-store]; the table ends where that begins.
    ours(&cfg, &["mount"]).ok();
    (l, cfg, dep)
}

/// The ValidPaths rows of `paths` in a database, without id and registration time.
fn rows(db: &Path, paths: &[String]) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut out = Vec::new();
    for p in paths {
        let row: String = conn
            .query_row(
                "select path || '|' || hash || '|' || coalesce(deriver,'-') || '|' || coalesce(narSize,'-') || '|' || coalesce(ultimate,'-') || '|' || coalesce(sigs,'-') || '|' || coalesce(ca,'-') from ValidPaths where path = ?",
                [p],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| format!("{p}: no row ({e})"));
        let refs: Vec<String> = conn
            .prepare("select v2.path from Refs r join ValidPaths v1 on r.referrer = v1.id join ValidPaths v2 on r.reference = v2.id where v1.path = ? order by v2.path")
            .unwrap()
            .query_map([p], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out.push(format!("{row}|{}", refs.join(",")));
    }
    out
}

fn upper_db(l: &Layers) -> PathBuf {
    l.state().join("db/db.sqlite")
}

fn count_rows(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("select count(*) from ValidPaths", [], |r| r.get(0)).unwrap()
}

#[test]
fn nix_caches_fill_only_the_missing_part_with_nix_s_rows() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let src = source(&sc, &base);
        let top = src.top.clone();
        let http = HttpFiles::start(base.join("cache-zstd"));
        let cases: Vec<(String, String)> = vec![
            ("cache-xz".into(), format!("secret-key={}", src.sk)),
            ("cache-zstd".into(), format!("compression=zstd&secret-key={}", src.sk)),
            ("cache-bzip2".into(), format!("compression=bzip2&secret-key={}", src.sk)),
            ("cache-none".into(), format!("compression=none&secret-key={}", src.sk)),
        ];
        for (i, (dir, params)) in cases.iter().enumerate() {
            nix_publish(&sc, &src, &base.join(dir), params, &[&top]);
            // Stock Nix substituting from the same cache into a scratch store: the oracle.
            let oracle = base.join(format!("oracle-{i}"));
            let from = format!("file://{}", base.join(dir).display());
            let trusted = format!("trusted-public-keys = {}\nrequire-sigs = true\n", src.pk);
            nix_with(
                &format!("{NIX_CONFIG}{trusted}"),
                &sc,
                "nix",
                &["copy", "--from", &src.for_nix(&from), "--to", oracle.to_str().unwrap(), &top],
                None,
            )
            .ok();

            let ob = base.join(format!("o{i}"));
            let (l, cfg, dep) = overlay(&sc, &ob, &src, "");
            let lower_before = l.lower_fingerprint();
            let url = if dir == "cache-zstd" { http.url() } else { from.clone() };
            let r = ours(&cfg, &["copy", "--from", &url, "--json", &top]).ok();
            let doc: serde_json::Value = serde_json::from_str(r.out().trim()).unwrap();
            let fetched: Vec<String> = doc["fetched"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect();
            let missing: Vec<String> = src.closure.iter().filter(|p| **p != dep).cloned().collect();
            let mut sorted = fetched.clone();
            sorted.sort();
            let mut want = missing.clone();
            want.sort();
            assert_eq!(sorted, want, "{dir}: only the paths the lower store lacks are fetched");
            assert_eq!(doc["present"].as_array().unwrap().len(), 1, "{dir}: dep is present (lower)");
            for p in &missing {
                assert!(l.upper().join(base_of(p)).exists(), "{dir}: {p} lands upper");
            }
            assert!(!l.upper().join(base_of(&dep)).exists(), "{dir}: the lower path is not copied into the upper layer");
            assert_eq!(rows(&upper_db(&l), &missing), rows(&oracle.join("nix/var/nix/db/db.sqlite"), &missing), "{dir}: Nix's rows");
            ours(&cfg, &["verify", "--check-contents"]).ok();
            nix_store(&sc, &l.merged_root(), &["--verify", "--check-contents"]).ok();
            assert_eq!(l.lower_fingerprint(), lower_before, "{dir}: the lower store is unchanged");
            // A second copy fetches nothing.
            let again = ours(&cfg, &["copy", "--from", &url, "--json", &top]).ok();
            assert!(again.out().contains("\"fetched\":[]"), "{}", again.out());
        }
    });
}

#[test]
fn tampered_unsigned_and_misbehaving_caches_change_nothing() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let src = source(&sc, &base);
        let top = src.top.clone();
        let good = base.join("good");
        nix_publish(&sc, &src, &good, &format!("compression=xz&secret-key={}", src.sk), &[&top]);
        let unsigned = base.join("unsigned");
        nix_publish(&sc, &src, &unsigned, "compression=none", &[&top]);
        // A second key: a cache signed by it is signed by nobody we trust.
        let other_sk = base.join("keys/other.sk");
        ours(
            "local?root=/nonexistent",
            &["generate-key", "other-1", other_sk.to_str().unwrap(), base.join("keys/other.pk").to_str().unwrap()],
        )
        .ok();
        let foreign = base.join("foreign");
        nix_publish(&sc, &src, &foreign, &format!("compression=none&secret-key={}", other_sk.display()), &[&top]);

        let (l, cfg, _dep) = overlay(
            &sc,
            &base.join("o"),
            &src,
            "download-attempts = 2\nstalled-download-timeout = 2\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0",
        );
        let top_narinfo = format!("{}.narinfo", &base_of(&top)[..32]);
        let copy = |dir: &Path, extra: &[&str]| {
            let url = format!("file://{}", dir.display());
            let mut args = vec!["copy", "--from", url.as_str()];
            args.extend_from_slice(extra);
            args.push(&top);
            ours(&cfg, &args)
        };
        let upper_before = l.upper_entries();
        let rows_before = count_rows(&upper_db(&l));
        let lower_before = l.lower_fingerprint();
        let unchanged = |what: &str| {
            assert_eq!(l.upper_entries(), upper_before, "{what}: the upper layer is unchanged");
            assert_eq!(count_rows(&upper_db(&l)), rows_before, "{what}: nothing registered");
            assert_eq!(l.lower_fingerprint(), lower_before, "{what}: the lower store is unchanged");
        };
        let refused = |r: Run, what: &str, needle: &str| {
            assert_eq!(r.code, 1, "{what}: {}", r.stderr);
            assert!(r.stderr.contains(needle), "{what}: expected '{needle}' in: {}", r.stderr);
            unchanged(what);
        };

        let r = copy(&unsigned, &[]);
        refused(r, "unsigned", "not signed");
        assert!(copy(&unsigned, &[]).stderr.contains(&base_of(&top)), "the message names the path");
        refused(copy(&foreign, &[]), "signed by another key", "none of its signatures");

        // Tampered narinfos: a changed NarHash or References breaks the signature.
        let tampered = base.join("tampered");
        let cp = |from: &Path, to: &Path| {
            Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
        };
        cp(&good, &tampered);
        let ni = tampered.join(&top_narinfo);
        let text = fs::read_to_string(&ni).unwrap();
        let refs_line = text.lines().find(|l| l.starts_with("References:")).unwrap().to_string();
        let lying = text.replace(&refs_line, &refs_line.split(' ').take(2).collect::<Vec<_>>().join(" "));
        assert_ne!(lying, text);
        fs::write(&ni, &lying).unwrap();
        refused(copy(&tampered, &[]), "references lie", "none of its signatures");

        // A NAR file with one byte changed (narinfo intact): the file hash catches it.
        fs::write(&ni, &text).unwrap();
        let nar_rel = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().to_string();
        let nar = tampered.join(&nar_rel);
        let mut bytes = fs::read(&nar).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&nar, &bytes).unwrap();
        let r = copy(&tampered, &[]);
        assert!(r.stderr.contains("mismatch") || r.stderr.contains("NAR of"), "{}", r.stderr);
        refused(r, "tampered NAR", &base_of(&top));

        // Without signature checks, a NAR whose content is not what the narinfo hashes.
        let plain = base.join("plain");
        cp(&unsigned, &plain);
        let pni = plain.join(&top_narinfo);
        let ptext = fs::read_to_string(&pni).unwrap();
        let pnar = plain.join(ptext.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap());
        let mut nb = fs::read(&pnar).unwrap();
        // A byte of a file's contents (a store path the `ref` file holds), not of the framing.
        let at = nb.windows(11).position(|w| w == b"/nix/store/").expect("a store path in the NAR") + 11;
        nb[at] = if nb[at] == b'0' { b'1' } else { b'0' };
        fs::write(&pnar, &nb).unwrap();
        let stripped: String =
            ptext.lines().filter(|l| !l.starts_with("FileHash") && !l.starts_with("FileSize")).map(|l| format!("{l}\n")).collect();
        fs::write(&pni, stripped).unwrap();
        refused(copy(&plain, &["--no-check-sigs"]), "NAR hash mismatch", "NAR hash mismatch");

        // A narinfo naming a reference the cache does not have.
        fs::write(&pni, &ptext).unwrap();
        fs::write(&pnar, fs::read(unsigned.join(ptext.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap())).unwrap()).unwrap();
        let hello = src.closure.iter().find(|p| p.ends_with("hello.txt")).unwrap();
        fs::remove_file(plain.join(format!("{}.narinfo", &base_of(hello)[..32]))).unwrap();
        refused(copy(&plain, &["--no-check-sigs"]), "missing reference", "in none of the binary caches");

        // Over HTTP: truncated, hanging and runaway NAR downloads.
        let http = HttpFiles::start(good.clone());
        for mode in [Mode::Truncate, Mode::Hang, Mode::Flood] {
            http.set(mode);
            let t = Instant::now();
            let r = ours(&cfg, &["copy", "--from", &http.url(), &top]);
            assert!(t.elapsed() < Duration::from_secs(50), "{mode:?} took {:?}", t.elapsed());
            refused(r, &format!("{mode:?}"), &http.url());
        }
        // kill -9 in the middle of a download: nothing is registered, and the re-run works.
        http.set(Mode::Hang);
        let mut child = Command::new(BIN)
            .args(["--config", &cfg, "copy", "--from", &http.url(), &top])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(count_rows(&upper_db(&l)), rows_before, "killed: nothing registered");
        // And then the honest cache works, so nothing above left debris in the way.
        http.set(Mode::Honest);
        ours(&cfg, &["copy", "--from", &http.url(), &top]).ok();
        ours(&cfg, &["verify", "--check-contents"]).ok();
        // What the killed run left under temporary names goes with the next GC.
        ours(&cfg, &["gc"]).ok();
        // Several substituters: an unusable one (unsigned, unreachable) is skipped with a
        // warning, as Nix does, and the next one serves.
        let text = fs::read_to_string(&cfg).unwrap();
        let list = format!(
            "[binary-caches]\nsubstituters = [\"file://{}\", \"http://127.0.0.1:9\", \"file://{}\"]\n",
            unsigned.display(),
            good.display()
        );
        let cfg2 = write(&Path::new(&cfg).with_file_name("several.toml"), &text.replacen("[binary-caches]\n", &list, 1));
        let r = ours(&cfg2, &["copy", "--json", &top]).ok();
        assert!(r.out().contains(&good.display().to_string()), "fetched from the good cache: {}", r.out());
        assert!(r.stderr.contains("trying the next substituter") || r.stderr.contains("not using this substituter"), "{}", r.stderr);
        let debris: Vec<String> = l.upper_entries().into_iter().filter(|e| e.contains("tmp-overlay-store")).collect();
        assert!(debris.is_empty(), "{debris:?}");
    });
}

/// A running `serve --http`; killed when dropped.
struct HttpServed(Child, PathBuf);

impl HttpServed {
    fn start(cfg: &str, log: PathBuf, compression: &str) -> (HttpServed, String) {
        let child = Command::new(BIN)
            .args(["--config", cfg, "serve", "--http", "127.0.0.1:0", "--compression", compression])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let s = HttpServed(child, log);
        let t = Instant::now();
        loop {
            let text = fs::read_to_string(&s.1).unwrap_or_default();
            if let Some(at) = text.find("on 'http://") {
                let url = text[at + 4..].split('\'').next().unwrap().to_string();
                return (s, url);
            }
            assert!(t.elapsed() < Duration::from_secs(20), "serve --http did not get ready: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HttpServed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn what_we_publish_and_serve_stock_nix_substitutes_with_signatures_checked() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let src = source(&sc, &base);
        let top = src.top.clone();
        // An overlay holding the whole closure: dep lower, the rest fetched upper.
        let nixcache = base.join("nix-cache");
        nix_publish(&sc, &src, &nixcache, &format!("compression=none&secret-key={}", src.sk), &[&top]);
        let ours_sk = base.join("keys/ours.sk");
        let ours_pk = base.join("keys/ours.pk");
        ours("local?root=/nonexistent", &["generate-key", "ours-1", ours_sk.to_str().unwrap(), ours_pk.to_str().unwrap()]).ok();
        let again = ours("local?root=/nonexistent", &["generate-key", "ours-1", ours_sk.to_str().unwrap(), ours_pk.to_str().unwrap()]);
        assert_eq!(again.code, 1, "keys are never overwritten");
        let pk = fs::read_to_string(&ours_pk).unwrap();
        let (l, cfg, _dep) = overlay(&sc, &base.join("o"), &src, &format!("secret-key-files = [\"{}\"]", ours_sk.display()));
        ours(&cfg, &["copy", "--from", &format!("file://{}", nixcache.display()), &top]).ok();

        let trusted = format!("{NIX_CONFIG}trusted-public-keys = {pk}\nrequire-sigs = true\n");
        for (i, params) in ["compression=none", "compression=xz", "compression=zstd", "compression=bzip2"].iter().enumerate() {
            let cache = base.join(format!("published-{i}"));
            ours(&cfg, &["copy", "--to", &format!("file://{}?{params}", cache.display()), &top]).ok();
            let dest = base.join(format!("nix-dest-{i}"));
            nix_with(
                &trusted,
                &sc,
                "nix",
                &["copy", "--from", &src.for_nix(&format!("file://{}", cache.display())), "--to", dest.to_str().unwrap(), &top],
                None,
            )
            .ok();
            nix_store(&sc, &dest, &["--verify", "--check-contents"]).ok();
            assert_eq!(nix_store(&sc, &dest, &["-q", "--requisites", &top]).ok().lines().len(), src.closure.len());
            if *params == "compression=none" {
                // Byte for byte what Nix writes for the same path with the same key.
                let nix_made = base.join("nix-made");
                nix_publish(&sc, &src, &nix_made, &format!("compression=none&secret-key={}", ours_sk.display()), &[&top]);
                let name = format!("{}.narinfo", &base_of(&top)[..32]);
                let mine = fs::read_to_string(cache.join(&name)).unwrap();
                let theirs = fs::read_to_string(nix_made.join(&name)).unwrap();
                // The source store's row carries no signature; ours has Nix's cache-1
                // signature (copied from the cache it came from) as well as our own.
                let without_cache1: String = mine.lines().filter(|l| !l.starts_with("Sig: cache-1:")).map(|l| format!("{l}\n")).collect();
                assert_eq!(without_cache1, theirs);
                assert_eq!(
                    fs::read_to_string(cache.join("nix-cache-info")).unwrap(),
                    fs::read_to_string(nix_made.join("nix-cache-info")).unwrap()
                );
            }
        }
        // copy --to an HTTP cache: PUT uploads, which stock Nix then substitutes from.
        let uploaded = base.join("uploaded");
        fs::create_dir_all(&uploaded).unwrap();
        let http = HttpFiles::start(uploaded.clone());
        ours(&cfg, &["copy", "--to", &format!("{}?compression=zstd", http.url()), &top]).ok();
        let dest = base.join("nix-dest-put");
        nix_with(&trusted, &sc, "nix", &["copy", "--from", &http.url(), "--to", dest.to_str().unwrap(), &top], None).ok();
        nix_store(&sc, &dest, &["--verify", "--check-contents"]).ok();

        // An untrusted key is refused by stock Nix: the check is real.
        let wrong = format!("{NIX_CONFIG}trusted-public-keys = {}\nrequire-sigs = true\n", src.pk);
        let refused_dest = base.join("nix-refused");
        let unsigned_cache = base.join("published-plain");
        ours(
            &format!("local?root={}", src.root.display()),
            &["copy", "--to", &format!("file://{}?compression=none", unsigned_cache.display()), &top],
        )
        .ok();
        let r = nix_with(
            &wrong,
            &sc,
            "nix",
            &[
                "copy",
                "--from",
                &src.for_nix(&format!("file://{}", unsigned_cache.display())),
                "--to",
                refused_dest.to_str().unwrap(),
                &top,
            ],
            None,
        );
        assert_ne!(r.code, 0, "stock Nix refuses unsigned paths");

        // serve --http: the merged view as a cache, signed on the fly.
        for compression in ["none", "zstd"] {
            let (served, url) = HttpServed::start(&cfg, base.join(format!("http-{compression}.log")), compression);
            let dest = base.join(format!("from-http-{compression}"));
            nix_with(&trusted, &sc, "nix", &["copy", "--from", &url, "--to", dest.to_str().unwrap(), &top], None).ok();
            nix_store(&sc, &dest, &["--verify", "--check-contents"]).ok();
            assert_eq!(nix_store(&sc, &dest, &["-q", "--requisites", &top]).ok().lines().len(), src.closure.len());
            drop(served);
        }

        // sign: a lower path is copied up and signed; stock Nix checks the signature.
        let dep = src.closure.iter().find(|p| p.ends_with("-dep")).unwrap();
        ours(&cfg, &["sign", "--key-file", ours_sk.to_str().unwrap(), dep]).ok();
        let info = nix(&sc, "nix", &["path-info", "--store", &l.nix_view(), "--json", dep], None).ok().out();
        assert!(info.contains("ours-1:"), "{info}");
        nix_with(&trusted, &sc, "nix", &["store", "verify", "--store", &l.nix_view(), "--sigs-needed", "1", dep], None).ok();
    });
}

#[test]
fn a_fleet_of_three_overlays_shares_one_lower_store_and_one_cache() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let lower = base.join("shared-lower");
        let top = nix_build_default(&sc, &lower);
        let dep = nix_store(&sc, &lower, &["-q", "--requisites", &top]).ok().lines().into_iter().find(|p| p.ends_with("-dep")).unwrap();
        let lower_fp = || (listing(&lower.join("nix/store")), fs::read(lower.join("nix/var/nix/db/db.sqlite")).unwrap());
        let before = lower_fp();
        let sk = base.join("fleet.sk");
        let pk = base.join("fleet.pk");
        ours("local?root=/nonexistent", &["generate-key", "fleet-1", sk.to_str().unwrap(), pk.to_str().unwrap()]).ok();
        let pk = fs::read_to_string(&pk).unwrap();
        let cache = base.join("fleet-cache");
        let machine = |name: &str| -> String {
            let m = base.join(name);
            fs::create_dir_all(&m).unwrap();
            let cfg = write(
                &m.join("store.toml"),
                &format!(
                    "type = \"local-overlay\"\nroot = \"merged\"\nupper-layer = \"upper\"\n[lower-store]\ntype = \"local\"\nroot = \"../shared-lower\"\n[mount]\nworkdir = \"work\"\n[binary-caches]\nsubstituters = [\"file://{}\"]\ntrusted-public-keys = [\"{pk}\"]\nsecret-key-files = [\"{}\"]\n",
                    cache.display(),
                    sk.display()
                ),
            );
            ours(&cfg, &["mount"]).ok();
            cfg
        };
        let (a, b, c) = (machine("a"), machine("b"), machine("c"));
        // Machine a makes something new on top of the shared lower store and publishes it.
        let tool = base.join("tool.txt");
        fs::write(&tool, format!("uses {dep}\n")).unwrap();
        let added = add(&a, tool.to_str().unwrap());
        ours(&a, &["copy", "--to", &format!("file://{}?compression=zstd", cache.display()), &added, &top]).ok();
        for cfg in [&b, &c] {
            let r = ours(cfg, &["copy", "--json", &added]).ok();
            assert!(r.out().contains(&added), "{}", r.out());
            let r = ours(cfg, &["copy", "--json", &top]).ok();
            assert!(r.out().contains("\"fetched\":[]"), "top is in the lower store: {}", r.out());
            ours(cfg, &["verify", "--check-contents"]).ok();
            let m = Path::new(cfg).parent().unwrap();
            assert_eq!(fs::read(m.join("merged/nix/store").join(base_of(&added))).unwrap(), fs::read(&tool).unwrap());
            assert!(m.join("upper").join(base_of(&added)).exists());
            assert!(!m.join("upper").join(base_of(&top)).exists());
        }
        ours(&a, &["verify", "--check-contents"]).ok();
        assert_eq!(lower_fp(), before, "the shared lower store is unchanged");
    });
}

#[test]
fn serve_substitutes_what_a_client_asks_for_from_the_spec_s_substituters() {
    if !have_nix() {
        return;
    }
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let src = source(&sc, &base);
        let top = src.top.clone();
        let cache = base.join("cache");
        nix_publish(&sc, &src, &cache, &format!("compression=zstd&secret-key={}", src.sk), &[&top]);
        let (l, cfg, _dep) = overlay(&sc, &base.join("o"), &src, &format!("substituters = [\"file://{}\"]", cache.display()));
        let socket = base.join("sock/served.socket");
        let log = base.join("serve.log");
        let mut child = Command::new(BIN)
            .args(["--config", &cfg, "serve", "--socket"])
            .arg(&socket)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !fs::read_to_string(&log).unwrap_or_default().contains("serving ") {
            assert!(t.elapsed() < Duration::from_secs(20), "serve did not start: {}", fs::read_to_string(&log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(20));
        }
        let client = |args: &[&str]| {
            let mut a = vec!["--store", "daemon"];
            a.extend_from_slice(args);
            nix_env(NIX_CONFIG, &sc, "nix-store", &a, None, &[("NIX_DAEMON_SOCKET_PATH", socket.as_os_str())])
        };
        assert_ne!(client(&["--check-validity", &top]).code, 0, "not there before");
        // QueryMissing counts the whole missing closure (top and hello.txt; dep is lower).
        let dry = client(&["--realise", "--dry-run", &top]);
        assert!(dry.stderr.contains("these 2 paths will be fetched"), "{}", dry.stderr);
        let r = client(&["--realise", &top]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(r.code, 0, "realise through serve: {}\nserve log: {}", r.stderr, fs::read_to_string(&log).unwrap_or_default());
        assert!(!r.stderr.contains("don't know how to build"), "QueryMissing says it will substitute: {}", r.stderr);
        assert!(l.upper().join(base_of(&top)).exists(), "substituted into the upper layer");
        ours(&cfg, &["verify", "--check-contents"]).ok();
    });
}
