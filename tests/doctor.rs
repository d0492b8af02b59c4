//! `doctor` on a real overlay: it names what is wrong and how to fix it (an unmounted or
//! wrongly mounted overlay, a group-writable policy, stale temporary roots), changes
//! nothing, and passes once things are fixed.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

fn checks(cfg: &str) -> (i32, serde_json::Value) {
    let r = ours(cfg, &["doctor", "--json"]);
    (r.code, serde_json::from_str(r.out().trim()).unwrap_or_else(|e| panic!("{e}: {}", r.out())))
}

fn find<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} check: {doc}"))
}

#[test]
fn doctor_names_the_problem_and_the_fix() {
    with_private_scratch(|base| {
        let l = Layers::new(&base);
        ours(&l.lower_uri(), &["init"]).ok();
        let policy = write(&base.join("policy.lua"), "return {}\n");
        let cfg = l.config_with("policy = \"policy.lua\"");
        ours(&cfg, &["init"]).ok();
        let before = listing(&base);

        fs::set_permissions(&policy, fs::Permissions::from_mode(0o664)).unwrap();
        let (code, doc) = checks(&cfg);
        assert_eq!(code, 1, "{doc}");
        assert_eq!(doc["ok"], false);
        let mount = find(&doc, "mount");
        assert_eq!(mount["status"], "fail");
        assert!(mount["fix"].as_str().unwrap().contains(" mount"), "{mount}");
        let p = find(&doc, "policy");
        assert_eq!(p["status"], "fail");
        assert!(p["fix"].as_str().unwrap().starts_with("chmod go-w"), "{p}");
        assert_eq!(find(&doc, "kernel")["status"], "ok");
        assert_eq!(listing(&base), before, "doctor changes nothing");
        // The text form says the same for people.
        let text = ours(&cfg, &["doctor"]);
        assert_eq!(text.code, 1);
        assert!(text.out().contains("FAIL  mount:") && text.out().contains("to fix:"), "{}", text.out());

        // Fixed: mounted, policy private. A stale temp root is a warning, not a failure.
        fs::set_permissions(&policy, fs::Permissions::from_mode(0o644)).unwrap();
        ours(&cfg, &["mount"]).ok();
        fs::create_dir_all(l.state().join("temproots")).unwrap();
        fs::write(l.state().join("temproots/999999999"), b"").unwrap();
        let (code, doc) = checks(&cfg);
        assert_eq!(code, 0, "{doc}");
        assert_eq!(find(&doc, "mount")["status"], "ok");
        assert_eq!(find(&doc, "temp-roots")["status"], "warn");
        assert_eq!(find(&doc, "policy")["status"], "ok");

        assert_eq!(find(&doc, "locks")["status"], "ok", "{doc}");
        let unchanged = find(&doc, "lower-unchanged");
        assert_eq!(unchanged["status"], "ok", "{unchanged}");
        assert!(unchanged["detail"].as_str().unwrap().contains("as it was at mount time"), "{unchanged}");

        // The lower store changed under the live mount: named, with the remount that fixes it.
        add(&l.lower_uri(), &write(&base.join("late"), "added to the lower store while mounted\n"));
        let (code, doc) = checks(&cfg);
        assert_eq!(code, 1, "{doc}");
        let changed = find(&doc, "lower-unchanged");
        assert_eq!(changed["status"], "fail", "{changed}");
        let detail = changed["detail"].as_str().unwrap();
        assert!(detail.contains("lower store directory") && detail.contains("lower database"), "{changed}");
        assert!(changed["fix"].as_str().unwrap().contains("umount &&"), "{changed}");
        ours(&cfg, &["umount"]).ok();
        ours(&cfg, &["mount"]).ok();
        assert_eq!(find(&checks(&cfg).1, "lower-unchanged")["status"], "ok");

        // A running GC holds gc.lock: a warning naming the process.
        let gc_lock = l.state().join("gc.lock");
        let mut holder = std::process::Command::new("flock").arg(&gc_lock).args(["sleep", "60"]).spawn().expect("flock (util-linux)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let locks = loop {
            let (_, doc) = checks(&cfg);
            let locks = find(&doc, "locks").clone();
            if locks["status"] == "warn" || std::time::Instant::now() > deadline {
                break locks;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!(locks["status"], "warn", "{locks}");
        assert!(locks["detail"].as_str().unwrap().contains("gc.lock held by pid"), "{locks}");

        // Something else mounted there: named, with the fix.
        ours(&cfg, &["umount"]).ok();
        nix::mount::mount(Some("tmpfs"), &l.real(), Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
        let (code, doc) = checks(&cfg);
        assert_eq!(code, 1);
        let mount = find(&doc, "mount");
        assert!(mount["detail"].as_str().unwrap().contains("tmpfs"), "{mount}");
        assert!(mount["fix"].as_str().unwrap().starts_with("umount"), "{mount}");
    });
}
