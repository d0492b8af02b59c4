//! The Debian package, built with cargo-deb by `packaging/build-deb.sh` and installed
//! with dpkg into a scratch root (its own dpkg database, nothing of the machine's
//! touched); then the installed binary runs the packaged quick start on a real overlay,
//! and removing and purging the package behave as Debian's rules say.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn have_cargo_deb() -> bool {
    let ok = Command::new("cargo").args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("OVERLAY_STORE_REQUIRE_PACKAGE").as_deref() == Ok("1") {
            panic!("cargo-deb is required (OVERLAY_STORE_REQUIRE_PACKAGE=1) but missing: cargo install cargo-deb --locked");
        }
        eprintln!("skipping: cargo-deb is not installed (cargo install cargo-deb --locked)");
    }
    ok
}

fn dpkg(root: &Path, args: &[&str]) -> Run {
    run_cmd(Command::new("dpkg").arg(format!("--root={}", root.display())).arg("--force-not-root").args(args), None)
}

fn gunzip(file: &Path) -> String {
    let out = run_cmd(Command::new("gzip").arg("-dc").arg(file), None).ok();
    out.out()
}

#[test]
fn the_debian_package_installs_and_runs_the_quick_start() {
    if !is_root() || !have_cargo_deb() {
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let built = run_cmd(Command::new(repo.join("packaging/build-deb.sh")).current_dir(&repo), None);
    assert_eq!(built.code, 0, "build-deb.sh failed:\n{}\n{}", built.stderr, built.out());
    let deb = built.lines().into_iter().rev().find(|l| l.ends_with(".deb")).expect("cargo deb prints the package's path");
    let deb = if Path::new(&deb).is_absolute() { PathBuf::from(deb) } else { repo.join(deb) };

    // `cargo install --path .` works from the checkout (and reuses the release build).
    let sc = Scratch::new();
    let installed = run_cmd(
        Command::new("cargo").args(["install", "--locked", "--offline", "--path", "."]).arg("--root").arg(sc.path()).current_dir(&repo),
        None,
    );
    assert_eq!(installed.code, 0, "cargo install: {}", installed.stderr);
    run_cmd(Command::new(sc.join("bin/overlay-store")).arg("--version"), None).ok();

    with_private_scratch(move |base| {
        let root = base.join("root");
        for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("var/lib/dpkg/status"), b"").unwrap();
        let r = dpkg(&root, &["-i", deb.to_str().unwrap()]);
        assert_eq!(r.code, 0, "dpkg -i: {}\n{}", r.stderr, r.out());

        // What the package installs.
        let bin = root.join("usr/bin/overlay-store");
        let v = run_cmd(Command::new(&bin).arg("--version"), None).ok();
        assert!(v.out().starts_with("overlay-store "), "{}", v.out());
        let mut elf = [0u8; 4];
        fs::File::open(&bin).unwrap().read_exact(&mut elf).unwrap();
        assert_eq!(&elf, b"\x7fELF");
        // A man page for the program and for every command its help lists.
        let man = root.join("usr/share/man/man1");
        assert!(gunzip(&man.join("overlay-store.1.gz")).contains(".TH overlay-store"));
        let help = run_cmd(Command::new(&bin).arg("--help"), None).ok().out();
        let commands: Vec<String> = help
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .filter(|c| c != "help")
            .collect();
        assert!(commands.len() > 20, "{help}");
        for c in &commands {
            let page = man.join(format!("overlay-store-{c}.1.gz"));
            assert!(page.exists(), "no man page for {c}");
        }
        for f in [
            "usr/share/bash-completion/completions/overlay-store",
            "usr/share/zsh/vendor-completions/_overlay-store",
            "usr/share/fish/vendor_completions.d/overlay-store.fish",
        ] {
            assert!(fs::read_to_string(root.join(f)).unwrap().contains("__complete-paths"), "{f}");
        }
        // The bash completion loads and offers the commands.
        let probe = format!(
            "source '{}' && COMP_WORDS=(overlay-store doc) COMP_CWORD=1 && _overlay_store_with_paths overlay-store doc overlay-store && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            root.join("usr/share/bash-completion/completions/overlay-store").display()
        );
        assert_eq!(run_cmd(Command::new("bash").args(["-c", &probe]), None).ok().lines(), ["doctor"]);
        // The units run the installed binary on the installed spec.
        for unit in ["overlay-store-watch.service", "overlay-store-serve.service"] {
            let text = fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
            let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
            assert!(exec.starts_with("ExecStart=/usr/bin/overlay-store --config /etc/overlay-store/store.toml"), "{unit}: {exec}");
        }
        assert!(fs::read_to_string(root.join("lib/systemd/system/overlay-store-serve.socket")).unwrap().contains("ListenStream="));
        // The default spec is a conffile, and it parses.
        let status = run_cmd(
            Command::new("dpkg-query").arg(format!("--admindir={}", root.join("var/lib/dpkg").display())).args(["-s", "overlay-store"]),
            None,
        )
        .ok();
        assert!(status.out().contains(" /etc/overlay-store/store.toml "), "{}", status.out());
        let spec = root.join("etc/overlay-store/store.toml");
        let uri = run_cmd(Command::new(&bin).arg("-c").arg(&spec).arg("uri"), None).ok();
        assert!(uri.out().starts_with("local-overlay://"), "{}", uri.out());

        // The quick start, with the installed binary first on PATH.
        let path = format!("{}:{}", root.join("usr/bin").display(), std::env::var("PATH").unwrap_or_default());
        let qs_dir = base.join("quick start");
        let qs = run_cmd(
            Command::new("sh")
                .arg(root.join("usr/share/overlay-store/quickstart.sh"))
                .arg(&qs_dir)
                .env("PATH", &path)
                .env_remove("RUST_LOG"),
            None,
        );
        assert_eq!(qs.code, 0, "quick start failed:\n{}\n{}", qs.out(), qs.stderr);
        let out = qs.out() + &qs.stderr;
        for want in ["hello from the lower store", "1 store paths deleted", "ok    mount:", "ok    lower-unchanged:", "unmounted"] {
            assert!(out.contains(want), "the quick start did not say {want:?}:\n{out}");
        }
        assert!(!out.contains("FAIL"), "{out}");

        // Remove keeps an edited conffile; purge removes it.
        fs::write(&spec, fs::read_to_string(&spec).unwrap() + "\n# edited by the admin\n").unwrap();
        let r = dpkg(&root, &["-r", "overlay-store"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!bin.exists());
        assert!(fs::read_to_string(&spec).unwrap().contains("edited by the admin"));
        let r = dpkg(&root, &["--purge", "overlay-store"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!spec.exists());
    });
}
