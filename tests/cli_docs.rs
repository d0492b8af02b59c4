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

/// What the bash completion offers for `overlay-store ARGS… CURRENT<TAB>`.
fn complete_in_bash(sc: &Scratch, args: &[&str], current: &str) -> Vec<String> {
    let script = run_cmd(Command::new(BIN).args(["completions", "bash"]), None).ok().out();
    let file = write(&sc.join("completion.bash"), &script);
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    // As a user has it: the program by name, found on PATH.
    let words: Vec<String> = std::iter::once("overlay-store").chain(args.iter().copied()).chain([current]).map(q).collect();
    let probe = format!(
        "source {} && COMP_WORDS=({}) && COMP_CWORD={} && _overlay_store_with_paths overlay-store {} x && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        q(&file),
        words.join(" "),
        args.len() + 1,
        q(current)
    );
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
    // On the way there, the store directory itself.
    assert_eq!(complete_in_bash(&sc, &["--store", &store, "path-info"], "/ni"), vec!["/nix/store/".to_string()]);
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
