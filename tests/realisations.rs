//! Realisations (`ca-derivations`) against real Nix 2.8: ours read what Nix wrote (on a
//! local store, through an overlay and through a nix-daemon lower store), and Nix reads
//! what `realisation add` wrote into an upper database, with its copy-up.

mod common;

use std::fs;
use std::path::Path;

use common::*;

const CA_NIX_CONFIG: &str = "build-users-group = \nexperimental-features = nix-command ca-derivations\nextra-sandbox-paths = /busybox=/bin/busybox\nsubstituters = \n";

/// Nix with `ca-derivations` on.
fn nix_ca(scratch: &Scratch, program: &str, args: &[&str]) -> Run {
    nix_with(CA_NIX_CONFIG, scratch, program, args, None)
}

/// A content-addressed derivation with no inputs.
const CADEP: &str = r#"derivation { name = "cadep"; system = builtins.currentSystem; builder = "/busybox";
    args = [ "sh" "-c" "/busybox mkdir $out; echo dep > $out/file" ];
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }"#;

/// `cadep` (content-addressed), and `name` depending on it: two realisations, the
/// second with a dependent realisation.
fn write_ca_nix(dir: &Path, name: &str) -> String {
    let text = format!(
        r#"let
  dep = {CADEP};
in derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/busybox";
    args = [ "sh" "-c" "/busybox mkdir $out; echo ${{dep}} > $out/dep" ];
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }}
"#
    );
    write(&dir.join(format!("{name}.nix")), &text)
}

/// Builds the expression into `root`; returns its output path.
fn build(sc: &Scratch, root: &Path, expr: &str) -> String {
    let r = nix_ca(sc, "nix-build", &["--store", root.to_str().unwrap(), expr, "--no-out-link"]).ok();
    r.out().trim().to_string()
}

/// `nix realisation info --json` of the expression's output, as Nix prints it.
fn nix_info(sc: &Scratch, store: &str, expr: &str) -> String {
    nix_ca(sc, "nix", &["realisation", "info", "--store", store, "--json", "--file", expr]).ok().out().trim().to_string()
}

/// The realisation's id and its dependent realisations' ids.
fn ids(json: &str) -> (String, Vec<String>) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let r = &v[0];
    (r["id"].as_str().unwrap().to_string(), r["dependentRealisations"].as_object().unwrap().keys().cloned().collect())
}

fn overlay_config(base: &Path, lower: &str) -> String {
    write(
        &base.join("store.toml"),
        &format!("root = \"merged\"\nupper-layer = \"upper\"\nlower-store = {lower}\n\n[mount]\nworkdir = \"work\"\n"),
    )
}

#[test]
fn realisations_nix_wrote_read_the_same_locally_and_through_an_overlay() {
    if !have_nix() {
        return;
    }
    with_private_scratch(move |base| {
        let sc = Scratch::new();
        let lower = base.join("lower");
        let expr = write_ca_nix(&base.join("expr"), "catop");
        let out = build(&sc, &lower, &expr);
        let json = nix_info(&sc, lower.to_str().unwrap(), &expr);
        let (top, deps) = ids(&json);
        assert_eq!(deps.len(), 1, "{json}");

        let local = format!("local?root={}", lower.display());
        assert_eq!(ours(&local, &["realisation", "info", "--json", &top]).ok().out().trim(), json);
        assert_eq!(ours(&local, &["realisation", "info", &top]).ok().out(), format!("{top} {out}\n"));

        let cfg = overlay_config(&base, &format!("{{ type = \"local\", root = \"{}\" }}", lower.display()));
        ours(&cfg, &["mount"]).ok();
        assert_eq!(ours(&cfg, &["realisation", "info", "--json", &top]).ok().out().trim(), json);
        let dep = ours(&cfg, &["realisation", "info", &deps[0]]).ok().out();
        assert!(dep.starts_with(&format!("{} /nix/store/", deps[0])) && dep.trim_end().ends_with("-cadep"), "{dep}");
        // Nothing was copied up by reading.
        assert!(!base.join("merged/nix/var/nix/db/ca-schema").exists());

        let missing = top.replacen("!out", "!doc", 1);
        let r = ours(&cfg, &["realisation", "info", &top, &missing]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains(&format!("no realisation of '{missing}'")), "{}", r.stderr);
        let r = ours(&cfg, &["realisation", "info", "sha256:nothex!out"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("invalid derivation output id"), "{}", r.stderr);
        ours(&cfg, &["umount"]).ok();
    });
}

#[test]
fn an_added_realisation_copies_up_what_it_needs_and_stock_nix_reads_it() {
    if !have_nix() {
        return;
    }
    with_private_scratch(move |base| {
        let sc = Scratch::new();
        // The lower store has `cadep` (and its realisation); another store builds
        // `catop2` on the same `cadep`.
        let lower = base.join("lower");
        let other = base.join("other");
        let expr = write_ca_nix(&base.join("expr"), "catop2");
        let only_dep = write(&base.join("expr/cadep.nix"), &format!("{CADEP}\n"));
        let dep_out = build(&sc, &lower, &only_dep);
        let top_out = build(&sc, &other, &expr);
        let json = nix_info(&sc, other.to_str().unwrap(), &expr);
        let (top, deps) = ids(&json);
        let dep_json = nix_info(&sc, lower.to_str().unwrap(), &only_dep);
        assert_eq!(ids(&dep_json).0, deps[0], "the same cadep realisation in both stores");

        let cfg = overlay_config(&base, &format!("{{ type = \"local\", root = \"{}\" }}", lower.display()));
        ours(&cfg, &["mount"]).ok();
        // The output closure arrives by import; cadep's files and row stay lower.
        let stream = nix_store(&sc, &other, &["--export", &top_out]).ok().stdout;
        ours_in(&cfg, &["import"], Some(&stream)).ok();
        assert_eq!(listing(&base.join("upper")), vec![Path::new(&top_out).file_name().unwrap().to_str().unwrap().to_string()]);

        let added = ours_in(&cfg, &["realisation", "add"], Some(json.as_bytes())).ok().out();
        assert_eq!(added, format!("{top} {top_out}\n"));
        // Adding it again is a no-op; a conflicting one is refused and changes nothing.
        ours_in(&cfg, &["realisation", "add"], Some(json.as_bytes())).ok();
        let conflicting = json.replace(
            Path::new(&top_out).file_name().unwrap().to_str().unwrap(),
            Path::new(&dep_out).file_name().unwrap().to_str().unwrap(),
        );
        let r = ours_in(&cfg, &["realisation", "add"], Some(conflicting.as_bytes()));
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("already has it as"), "{}", r.stderr);
        let r = ours_in(&cfg, &["realisation", "add"], Some(b"[{\"id\": 1}]"));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("<stdin>: invalid realisation JSON"), "{}", r.stderr);

        // The upper database alone (no fall-through) has both realisations: cadep's
        // was copied up with it.
        let state = base.join("merged/nix/var/nix");
        let upper_only = format!("local?real={}&state={}", base.join("merged/nix/store").display(), state.display());
        assert_eq!(ours(&upper_only, &["realisation", "info", "--json", &top]).ok().out().trim(), json);
        ours(&upper_only, &["realisation", "info", &deps[0]]).ok();
        assert_eq!(fs::read_to_string(state.join("db/ca-schema")).unwrap(), "3");

        // Stock Nix reads them from the upper database and finds it consistent.
        assert_eq!(nix_info(&sc, &upper_only, &expr), json);
        let v = nix_ca(&sc, "nix-store", &["--store", &upper_only, "--verify", "--check-contents"]);
        assert_eq!(v.code, 0, "{}", v.stderr);

        // GC removes the unrooted upper paths and their realisations without tripping
        // over the dependency between them; cadep's realisation still reads from lower.
        ours(&cfg, &["gc"]).ok();
        let r = ours(&cfg, &["realisation", "info", &top]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(ours(&cfg, &["realisation", "info", &deps[0]]).ok().out(), format!("{} {dep_out}\n", deps[0]));
        assert!(ours(&upper_only, &["realisation", "info", &deps[0]]).code == 1);
        ours(&cfg, &["verify"]).ok();
        ours(&cfg, &["umount"]).ok();
    });
}

#[test]
fn a_daemon_lower_store_answers_realisations() {
    if !have_nix() {
        return;
    }
    with_private_scratch(move |base| {
        let sc = Scratch::new();
        let root = base.join("daemon-store");
        let expr = write_ca_nix(&base.join("expr"), "catop");
        build(&sc, &root, &expr);
        let json = nix_info(&sc, root.to_str().unwrap(), &expr);
        let (top, deps) = ids(&json);
        let daemon = Daemon::start(&sc, &root, &base.join("daemon.sock"), CA_NIX_CONFIG);
        let lower =
            format!("{{ type = \"daemon\", socket = \"{}\", real = \"{}\" }}", daemon.socket.display(), root.join("nix/store").display());
        let cfg = overlay_config(&base, &lower);
        ours(&cfg, &["mount"]).ok();
        assert_eq!(ours(&cfg, &["realisation", "info", "--json", &top]).ok().out().trim(), json);
        ours(&cfg, &["realisation", "info", &deps[0]]).ok();
        let r = ours(&cfg, &["realisation", "info", &top.replacen("!out", "!dev", 1)]);
        assert_eq!(r.code, 1, "{}", r.stderr);
        ours(&cfg, &["umount"]).ok();
    });
}
