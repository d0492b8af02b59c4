//! Progress of long commands: bars when stderr is a terminal (a real pty, through
//! `script`), nothing on a pipe or with `--quiet`, and structured events with counts
//! that add up under `--log-format json`.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::*;

/// Single-quoted for `sh`.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs our binary with stderr on a fresh pty (stdout discarded); what the terminal got.
fn on_terminal(store: &str, args: &[&str]) -> String {
    let mut cmd = format!("{} --store {}", q(BIN), q(store));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&q(a));
    }
    cmd.push_str(" >/dev/null");
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd} failed on a terminal:\n{text}");
    text
}

/// Progress events of the JSON log: (activity, phase, fields).
fn progress_events(stderr: &str) -> Vec<(String, String, serde_json::Value)> {
    stderr
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v| v["target"] == "overlay_store::progress")
        .map(|v| {
            let f = v["fields"].clone();
            (f["activity"].as_str().unwrap().to_string(), f["phase"].as_str().unwrap().to_string(), f)
        })
        .collect()
}

fn done_event<'a>(events: &'a [(String, String, serde_json::Value)], activity: &str, what: &str) -> &'a serde_json::Value {
    events
        .iter()
        .find(|(a, p, f)| a == activity && p == "done" && f["message"] == what)
        .map(|(_, _, f)| f)
        .unwrap_or_else(|| panic!("no done event of {activity} ({what}) in {events:?}"))
}

/// A store with `n` paths of a few files each, and their export stream.
fn filled(s: &Scratch, name: &str, n: usize) -> (String, Vec<String>, std::path::PathBuf) {
    let store = format!("local?root={}", s.join(name).display());
    let mut paths = Vec::new();
    for i in 0..n {
        let d = s.join(&format!("src-{name}/item{i}"));
        fs::create_dir_all(&d).unwrap();
        for j in 0..4 {
            fs::write(d.join(format!("f{j}")), format!("{name} {i} {j}\n").repeat(500 + i * 10)).unwrap();
        }
        paths.push(add(&store, d.to_str().unwrap()));
    }
    let mut args = vec!["export"];
    args.extend(paths.iter().map(String::as_str));
    let stream = ours(&store, &args).ok().stdout;
    let file = s.join(&format!("{name}.export"));
    fs::write(&file, stream).unwrap();
    (store, paths, file)
}

fn nar_bytes(store: &str, paths: &[String]) -> u64 {
    let mut args = vec!["path-info", "--json"];
    args.extend(paths.iter().map(String::as_str));
    let doc: serde_json::Value = serde_json::from_str(&ours(store, &args).ok().out()).unwrap();
    doc.as_object().unwrap().values().map(|i| i["narSize"].as_u64().unwrap()).sum()
}

#[test]
fn bars_on_a_terminal_nothing_on_a_pipe_or_when_quiet() {
    let s = Scratch::new();
    let (_, _, export) = filled(&s, "a", 30);
    let target = format!("local?root={}", s.join("target").display());
    let export = export.to_str().unwrap();

    // A pipe: the same commands print their notices and no progress.
    let r = ours(&target, &["import", export]).ok();
    assert!(!r.stderr.contains("paths read") && !r.stderr.contains('\u{1b}'), "{}", r.stderr);
    let r = ours(&target, &["verify", "--check-contents"]).ok();
    assert!(r.stderr.contains("checking store hashes") && !r.stderr.contains("paths hashed"), "{}", r.stderr);

    // A terminal: bars named after the command, counting what it does.
    let t = on_terminal(&target, &["verify", "--check-contents"]);
    assert!(t.contains("verify [") && t.contains("/30 paths hashed"), "{t:?}");
    // Notices are still there, above the bars.
    assert!(t.contains("checking store hashes..."), "{t:?}");
    let t = on_terminal(&target, &["gc"]);
    assert!(t.contains("gc [") && t.contains("paths deleted"), "{t:?}");

    // --quiet on a terminal: no bars.
    let fresh = format!("local?root={}", s.join("quiet").display());
    let t = on_terminal(&fresh, &["--quiet", "import", export]);
    assert!(!t.contains("paths read"), "{t:?}");
    let t = on_terminal(&fresh, &["-q", "verify", "--check-contents"]);
    assert!(!t.contains("paths hashed") && !t.contains("checking"), "{t:?}");
}

#[test]
fn json_progress_events_count_what_was_done() {
    let s = Scratch::new();
    let (source, paths, export) = filled(&s, "b", 25);
    let bytes = nar_bytes(&source, &paths);
    let target = format!("local?root={}", s.join("target").display());

    let r = ours(&target, &["--log-format", "json", "import", export.to_str().unwrap()]).ok();
    let events = progress_events(&r.stderr);
    let import = done_event(&events, "import", "paths read");
    assert_eq!(import["done"], 25);
    assert_eq!(import["bytes"], bytes);
    // Every task starts before it ends, under one id.
    let start = events.iter().find(|(a, p, _)| a == "import" && p == "start").expect("a start event");
    assert_eq!(start.2["id"], import["id"]);

    let r = ours(&target, &["--log-format", "json", "verify", "--check-contents"]).ok();
    let events = progress_events(&r.stderr);
    let verify = done_event(&events, "verify", "paths hashed");
    assert_eq!((verify["done"].as_u64(), verify["total"].as_u64()), (Some(25), Some(25)));
    assert_eq!((verify["bytes"].as_u64(), verify["total_bytes"].as_u64()), (Some(bytes), Some(bytes)));

    let r = ours(&target, &["--log-format", "json", "gc"]).ok();
    let events = progress_events(&r.stderr);
    assert_eq!(done_event(&events, "gc", "paths scanned")["total"], 25);
    let deleted = done_event(&events, "gc", "paths deleted");
    assert_eq!(deleted["done"], 25);
    assert!(deleted["bytes"].as_u64().unwrap() >= bytes / 2, "bytes freed are counted: {deleted}");

    // `add` counts the NAR bytes it copies.
    let d = s.join("big");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("blob"), vec![7u8; 3 << 20]).unwrap();
    let r = ours(&target, &["--log-format", "json", "add", d.to_str().unwrap()]).ok();
    let added = r.out().trim().to_string();
    let events = progress_events(&r.stderr);
    assert_eq!(done_event(&events, "add", "NAR bytes copied")["bytes"], nar_bytes(&target, &[added]));

    // --quiet: no events at all.
    let r = ours(&target, &["--log-format", "json", "-q", "verify", "--check-contents"]).ok();
    assert!(progress_events(&r.stderr).is_empty(), "{}", r.stderr);
}
