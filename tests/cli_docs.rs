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
