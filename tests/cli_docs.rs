//! Shell completions and man pages, generated from the command tree: every command has a
//! page, and the completion scripts load in their shells (bash here; zsh and fish when
//! installed) and offer the commands.

mod common;

use std::fs;
use std::process::Command;

use common::*;

/// Every subcommand the program's own help lists.
fn commands() -> Vec<String> {
    let help = run_cmd(Command::new(BIN).arg("--help"), None).ok().out();
    let mut in_list = false;
    let mut names = Vec::new();
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_list = true;
            continue;
        }
        if in_list {
            if line.trim().is_empty() {
                break;
            }
            let name = line.split_whitespace().next().unwrap().to_string();
            if name != "help" {
                names.push(name);
            }
        }
    }
    assert!(names.len() > 20, "{help}");
    names
}

#[test]
fn every_command_has_a_man_page() {
    let sc = Scratch::new();
    let dir = sc.join("man pages");
    run_cmd(Command::new(BIN).arg("man").arg(&dir), None).ok();
    let main = fs::read_to_string(dir.join("overlay-store.1")).unwrap();
    assert!(main.contains(".TH overlay-store 1"), "{main}");
    for c in commands() {
        let page = dir.join(format!("overlay-store-{c}.1"));
        let text = fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(text.contains(".SH NAME") && text.contains(".SH SYNOPSIS"), "{c}: {text}");
    }
    assert!(dir.join("overlay-store-policy-check.1").exists(), "nested commands get pages");
    // Needs no store, and says where the pages went.
    let r = run_cmd(Command::new(BIN).arg("man").arg(&dir).env_remove("OVERLAY_STORE_CONFIG"), None).ok();
    assert!(r.stderr.contains("man page(s)"), "{}", r.stderr);
}

#[test]
fn completions_load_in_bash_and_offer_the_commands() {
    let script = run_cmd(Command::new(BIN).args(["completions", "bash"]), None).ok().out();
    let sc = Scratch::new();
    let file = write(&sc.join("completion.bash"), &script);
    // Ask the completion function what `overlay-store co<TAB>` offers.
    let probe = format!(
        "source '{file}' && complete -p overlay-store >/dev/null && COMP_WORDS=(overlay-store co) COMP_CWORD=1 COMP_LINE='overlay-store co' COMP_POINT=16 && _overlay__store overlay-store co overlay-store && printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let r = run_cmd(Command::new("bash").args(["-c", &probe]), None).ok();
    let offered = r.lines();
    assert!(offered.contains(&"copy".to_string()) && offered.contains(&"completions".to_string()), "{offered:?}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run_cmd(Command::new(BIN).args(["completions", shell]), None).ok().out();
        assert!(out.contains("generate-key"), "{shell}");
    }
    let bad = run_cmd(Command::new(BIN).args(["completions", "tcsh"]), None);
    assert_eq!(bad.code, 2);
    // A pipe closed early is not an error (`| head`).
    let r = run_cmd(Command::new("sh").args(["-c", &format!("'{BIN}' completions bash | head -1")]), None).ok();
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// What the bash completion offers for `overlay-store ARGS… CURRENT<TAB>`, with the
/// line as a user types it (each argument single-quoted, so a space or `?` in it is
/// safe) and readline's view of the words: it keeps quotes and breaks at `=`, so only
/// the program's name and the current word are words the completion can use as given.
fn complete_in_bash(sc: &Scratch, args: &[&str], current: &str) -> Vec<String> {
    let script = run_cmd(Command::new(BIN).args(["completions", "bash"]), None).ok().out();
    let file = write(&sc.join("completion.bash"), &script);
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let typed: Vec<String> = args
        .iter()
        .map(|a| match a.split_once('=') {
            Some((opt, value)) if a.starts_with("--") => format!("{opt}={}", q(value)),
            _ if a.starts_with('-') => a.to_string(),
            _ => q(a),
        })
        .collect();
    let line = format!("overlay-store {} {current}", typed.join(" "));
    // Readline's words: quote marks kept, broken at `=` (what the binary must not rely on).
    let mut words = vec!["overlay-store".to_string()];
    for t in &typed {
        for (k, part) in t.split('=').enumerate() {
            if k > 0 {
                words.push(q("="));
            }
            words.push(q(part));
        }
    }
    words.push(q(current));
    let probe = format!(
        "source {} && COMP_LINE={} && COMP_POINT=${{#COMP_LINE}} && COMP_WORDS=({}) && COMP_CWORD={} && _overlay_store_with_paths overlay-store {} x && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        q(&file),
        q(&line),
        words.join(" "),
        words.len() - 1,
        q(current)
    );
    // As a user has it: the program by name, found on PATH.
    let path = format!("{}:{}", std::path::Path::new(BIN).parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    run_cmd(Command::new("bash").args(["-c", &probe]).env("PATH", path), None).ok().lines().into_iter().filter(|l| !l.is_empty()).collect()
}

#[test]
fn bash_completes_store_paths_from_the_named_store() {
    let sc = Scratch::new();
    let store = format!("local?root={}", sc.join("a store").display());
    let one = add(&store, &write(&sc.join("one"), "1\n"));
    let two = add(&store, &write(&sc.join("two"), "2\n"));
    let mut both = vec![one.clone(), two.clone()];
    both.sort();
    assert_eq!(complete_in_bash(&sc, &["--store", &store, "path-info"], "/nix/store/"), both);
    let hash_start = &one[..12];
    assert_eq!(complete_in_bash(&sc, &["--store", &store, "query", "--references"], hash_start), vec![one.clone()]);
    // On the way there, the store directory itself (and any file that matches).
    assert_eq!(complete_in_bash(&sc, &["--store", &store, "path-info"], "/ni").first().map(String::as_str), Some("/nix/store/"));
    // The `--store=URI` form, and a spec named by a path with a space.
    assert_eq!(complete_in_bash(&sc, &[&format!("--store={store}"), "path-info"], hash_start), vec![one.clone()]);
    // Commands still complete as before.
    let cmds = complete_in_bash(&sc, &["--store", &store], "path-i");
    assert_eq!(cmds, vec!["path-info".to_string()]);
    // A store that does not exist offers nothing and is not created.
    let missing = sc.join("missing");
    let none = complete_in_bash(&sc, &["--store", &format!("local?root={}", missing.display()), "path-info"], "/nix/store/");
    assert!(none.iter().all(|p| !p.contains("-one") && !p.contains("-two")), "{none:?}");
    assert!(!missing.exists());
    // The callback on its own: one path per line, silent on a bad spec.
    let r = run_cmd(Command::new(BIN).args(["__complete-paths", "--config", "/nonexistent.toml", "/nix/store/"]), None).ok();
    assert_eq!((r.out(), r.stderr), (String::new(), String::new()));
    let r = run_cmd(
        Command::new(BIN).args([
            "__complete-paths",
            "--line",
            &format!("overlay-store --store 'local?root={}' q /nix/store/", missing.display()),
        ]),
        None,
    )
    .ok();
    assert_eq!(r.out(), "");
    // The line as typed, split as the shell splits it: quotes, `=`, a blank at the end.
    let line = format!("overlay-store --store='{store}' query --references {hash_start}");
    let r = run_cmd(Command::new(BIN).args(["__complete-paths", "--line", &line]), None).ok();
    assert_eq!(r.lines(), vec![one.clone()]);
    let line = format!("overlay-store --store \"{store}\" path-info ");
    let r = run_cmd(Command::new(BIN).args(["__complete-paths", "--line", &line]), None).ok();
    assert_eq!(r.out(), "", "an empty word is not a path");
}

#[test]
fn an_overlay_completes_lower_and_upper_paths() {
    with_private_scratch(|base| {
        let sc = Scratch::new();
        let l = Layers::new(&base);
        let lower = add(&l.lower_uri(), &write(&base.join("low"), "low\n"));
        let cfg = l.config();
        ours(&cfg, &["init"]).ok();
        ours(&cfg, &["mount"]).ok();
        let upper = add(&cfg, &write(&base.join("up"), "up\n"));
        let mut both = vec![lower, upper];
        both.sort();
        assert_eq!(complete_in_bash(&sc, &["-c", &cfg, "path-info"], "/nix/store/"), both);
        ours(&cfg, &["umount"]).ok();
    });
}

/// Whether `shell` is installed; with OVERLAY_STORE_REQUIRE_SHELLS=1 (CI installs zsh
/// and fish) a missing one fails the test instead of skipping it.
fn have_shell(shell: &str) -> bool {
    let ok = Command::new(shell).args(["-c", "true"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert_ne!(std::env::var("OVERLAY_STORE_REQUIRE_SHELLS").as_deref(), Ok("1"), "{shell} is required but not installed");
        eprintln!("skipping: {shell} is not installed");
    }
    ok
}

#[test]
fn fish_completes_store_paths_and_still_files_and_zsh_parses_its_script() {
    let sc = Scratch::new();
    let store = format!("local?root={}", sc.join("a store").display());
    let one = add(&store, &write(&sc.join("one"), "1\n"));
    let path = format!("{}:{}", std::path::Path::new(BIN).parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    if have_shell("fish") {
        let script = write(&sc.join("c.fish"), &run_cmd(Command::new(BIN).args(["completions", "fish"]), None).ok().out());
        let file = write(&sc.join("a file"), "");
        // `complete -C` asks fish what it would offer for a command line, as typed.
        let probe = format!(
            "source '{script}'; complete -C \"overlay-store --store '{store}' path-info {}\"; echo SEP; complete -C \"overlay-store --store '{store}' add '{}\"",
            &one[..14],
            &file[..file.len() - 3],
        );
        let r = run_cmd(Command::new("fish").args(["--no-config", "-c", &probe]).env("PATH", &path), None).ok();
        let out = r.out();
        let (paths, files) = out.split_once("SEP\n").unwrap_or_else(|| panic!("{out}{}", r.stderr));
        assert_eq!(paths.lines().collect::<Vec<_>>(), [one.as_str()], "{out}");
        assert!(files.lines().any(|l| l.trim_end() == file), "file names still complete: {out}");
    }
    if have_shell("zsh") {
        let script = write(&sc.join("_overlay-store"), &run_cmd(Command::new(BIN).args(["completions", "zsh"]), None).ok().out());
        run_cmd(Command::new("zsh").args(["-n", &script]), None).ok();
        let text = std::fs::read_to_string(&script).unwrap();
        assert!(text.starts_with("#compdef overlay-store"));
        assert!(text.contains("compdef _overlay-store-with-paths overlay-store"), "the wrapper is the completer");
    }
}
