//! Builds for clients, delegated rather than re-implemented: the closure of what a
//! derivation needs is copied up, then stock Nix's builder (`[serve] builder`, by
//! default `nix-store --realise`) runs against the overlay as a local store (the merged
//! directory and the upper database, under Nix's own locks), and what it registered is
//! checked: every output valid in the upper database with its whole closure.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use super::connection::Conn;
use super::protocol::{read_map_count, read_string_list};
use super::trust::Trust;
use crate::format::StorePath;
use crate::spec::StoreKind;
use crate::store::daemon::wire::{read_string, read_u64, write_string, write_u64};
use crate::store::{Opened, Store};

/// What a client asked to have built or present: `drv!out1,out2`, `drv!*`, or a path.
struct Target {
    text: String,
    path: StorePath,
    /// `None` for a plain path; `Some(empty)` for every output.
    outputs: Option<Vec<String>>,
}

fn parse_target(conn: &Conn, s: &str) -> Result<Target, String> {
    let (path, outputs) = match s.split_once('!') {
        Some((p, outs)) if outs == "*" => (p, Some(Vec::new())),
        Some((p, outs)) => (p, Some(outs.split(',').filter(|o| !o.is_empty()).map(str::to_string).collect())),
        None => (s, None),
    };
    let path = conn.store_dir().parse_path(path).map_err(|e| format!("'{s}': {e}"))?;
    Ok(Target { text: s.to_string(), path, outputs })
}

/// Nix's `BuildResult` status codes (the ones we report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Built = 0,
    Substituted = 1,
    AlreadyValid = 2,
    PermanentFailure = 3,
    MiscFailure = 9,
}

pub(super) struct Outcome {
    pub target: String,
    pub status: Status,
    pub error: String,
    pub start: u64,
    pub stop: u64,
    /// `(DrvOutput id, realisation JSON)` of each wanted output, for clients that take
    /// the output paths from the result (`nix build`).
    pub built: Vec<(String, String)>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self.status, Status::Built | Status::Substituted | Status::AlreadyValid)
    }
}

/// A `BuildResult` as protocol 1.34 writes it.
pub(super) fn write_result(w: &mut impl Write, minor: u64, r: &Outcome) -> std::io::Result<()> {
    write_u64(w, r.status as u64)?;
    write_string(w, &r.error)?;
    if minor >= 29 {
        write_u64(w, u64::from(r.status == Status::Built))?; // timesBuilt
        write_u64(w, 0)?; // isNonDeterministic
        write_u64(w, r.start)?;
        write_u64(w, r.stop)?;
    }
    if minor >= 28 {
        write_u64(w, r.built.len() as u64)?;
        for (id, json) in &r.built {
            write_string(w, id)?;
            write_string(w, json)?;
        }
    }
    Ok(())
}

pub(super) struct Missing {
    pub will_build: BTreeSet<StorePath>,
    pub unknown: BTreeSet<StorePath>,
}

/// What building `targets` would involve: derivations whose outputs are not all valid
/// (and, recursively, their inputs'), and paths that are neither valid nor buildable.
pub(super) fn query_missing(conn: &mut Conn, targets: &[String]) -> crate::store::Result<Missing> {
    let mut m = Missing { will_build: BTreeSet::new(), unknown: BTreeSet::new() };
    let mut stack: Vec<(StorePath, bool)> = Vec::new();
    for t in targets {
        let Ok(t) = parse_target(conn, t) else { continue };
        stack.push((t.path, t.outputs.is_some()));
    }
    let mut seen = BTreeSet::new();
    while let Some((path, built)) = stack.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let store = conn.store.store();
        if !built {
            if !store.is_valid(&path)? {
                m.unknown.insert(path);
            }
            continue;
        }
        if !store.is_valid(&path)? {
            m.unknown.insert(path);
            continue;
        }
        let outputs = store.derivation_outputs(&path)?;
        let mut all_valid = !outputs.is_empty();
        for out in outputs.values() {
            all_valid &= store.is_valid(out)?;
        }
        if all_valid {
            continue;
        }
        let info = store.path_info(&path)?.expect("checked valid");
        m.will_build.insert(path);
        for input in info.references.into_iter().filter(StorePath::is_derivation) {
            stack.push((input, true));
        }
    }
    Ok(m)
}

/// Builds (or checks present) every target, one outcome each, in order.
pub(super) fn build(conn: &mut Conn, targets: &[String]) -> crate::store::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for text in targets {
        let start = now();
        let outcome = match parse_target(conn, text) {
            Err(e) => Outcome { target: text.clone(), status: Status::MiscFailure, error: e, start, stop: now(), built: Vec::new() },
            Ok(t) => build_one(conn, &t, start),
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn build_one(conn: &mut Conn, t: &Target, start: u64) -> Outcome {
    let fail = |status, error: String| Outcome { target: t.text.clone(), status, error, start, stop: now(), built: Vec::new() };
    let sd = conn.store_dir();
    let shown = sd.display(&t.path);
    let Some(wanted) = &t.outputs else {
        // A plain path: there is nothing to build, only to have.
        return match conn.store.store().is_valid(&t.path) {
            Ok(true) => Outcome {
                target: t.text.clone(),
                status: Status::AlreadyValid,
                error: String::new(),
                start,
                stop: now(),
                built: Vec::new(),
            },
            Ok(false) => match conn.substitute(&t.path) {
                Ok(true) => Outcome {
                    target: t.text.clone(),
                    status: Status::Substituted,
                    error: String::new(),
                    start,
                    stop: now(),
                    built: Vec::new(),
                },
                Ok(false) => fail(Status::MiscFailure, format!("path '{shown}' is not valid, and this store has no substituters")),
                Err(e) => fail(Status::MiscFailure, e),
            },
            Err(e) => fail(Status::MiscFailure, e.to_string()),
        };
    };
    match outputs_present(conn, &t.path, wanted) {
        Ok(true) => {
            let built = built_outputs(conn, &t.path, wanted);
            return Outcome { target: t.text.clone(), status: Status::AlreadyValid, error: String::new(), start, stop: now(), built };
        }
        Ok(false) => {}
        Err(e) => return fail(Status::MiscFailure, e),
    }
    if conn.trust != Trust::Trusted && !conn.store.store().is_valid(&t.path).unwrap_or(false) {
        return fail(Status::MiscFailure, format!("derivation '{shown}' is not valid; upload it first"));
    }
    if let Err(e) = copy_up_inputs(conn, &t.path) {
        return fail(Status::MiscFailure, format!("preparing the build of '{shown}': {e}"));
    }
    if let Err(e) = run_builder(conn, &t.text) {
        return fail(Status::PermanentFailure, e);
    }
    if let Err(e) = check_outputs(conn, &t.path, wanted) {
        return fail(Status::MiscFailure, e);
    }
    drop_copied_up_inputs(conn);
    let built = built_outputs(conn, &t.path, wanted);
    Outcome { target: t.text.clone(), status: Status::Built, error: String::new(), start, stop: now(), built }
}

/// Nix's sandbox hard-links regular-file inputs into the build's chroot, and on
/// OverlayFS a hard link of a lower file copies it up: after a build the upper layer can
/// hold identical copies of lower inputs. `optimise` takes them out again.
fn drop_copied_up_inputs(conn: &mut Conn) {
    let Opened::Overlay(o) = &mut conn.store else { return };
    let lower = o.plan().lowerdir.clone();
    let upper = o.upper_layer().to_path_buf();
    let duplicated = std::fs::read_dir(&upper)
        .map(|rd| rd.flatten().any(|e| !e.file_name().to_string_lossy().starts_with('.') && lower.join(e.file_name()).exists()))
        .unwrap_or(false);
    if duplicated {
        let mut notice = |m: &str| tracing::debug!("{m}");
        match o.optimise(&mut notice) {
            Ok(r) if !r.paths.is_empty() => tracing::info!("removed {} upper copies of lower inputs after a build", r.paths.len()),
            Ok(_) => {}
            Err(e) => tracing::warn!("could not remove upper copies of lower inputs after a build: {e}"),
        }
    }
}

/// The wanted outputs of `drv` as Nix names them in a build result: `sha256:<hash
/// modulo>!<output>` and a realisation. Each is checked by recomputing the output's path
/// from the hash; one that does not come out right (an unusual derivation) is left out
/// rather than sent wrong.
fn built_outputs(conn: &Conn, drv: &StorePath, wanted: &[String]) -> Vec<(String, String)> {
    let store = conn.store.store();
    let sd = conn.store_dir();
    let read = |p: &StorePath| -> Result<crate::format::derivation::Derivation, String> {
        let text =
            crate::store::fs::tree::read_small_file(&store.real_path(p), crate::store::local::MAX_DRV_SIZE).map_err(|e| e.to_string())?;
        crate::format::derivation::Derivation::parse(&text).map_err(|e| e.to_string())
    };
    let mut memo: std::collections::HashMap<String, crate::format::Hash> = std::collections::HashMap::new();
    fn modulo(
        path: &str,
        sd: &crate::format::StoreDir,
        read: &dyn Fn(&StorePath) -> Result<crate::format::derivation::Derivation, String>,
        memo: &mut std::collections::HashMap<String, crate::format::Hash>,
    ) -> Result<crate::format::Hash, String> {
        if let Some(h) = memo.get(path) {
            return Ok(*h);
        }
        let p = sd.parse_path(path).map_err(|e| e.to_string())?;
        let d = read(&p)?;
        let h = d.hash_modulo(false, &mut |input| modulo(input, sd, read, memo))?;
        memo.insert(path.to_string(), h);
        Ok(h)
    }
    let Ok(d) = read(drv) else { return Vec::new() };
    let Ok(hash) = d.hash_modulo(true, &mut |input| modulo(input, &sd, &read, &mut memo)) else { return Vec::new() };
    let drv_name = drv.name().strip_suffix(".drv").unwrap_or(drv.name()).to_string();
    let mut built = Vec::new();
    for (name, path, _, _) in &d.outputs {
        if !(wanted.is_empty() || wanted.contains(name)) || path.is_empty() {
            continue;
        }
        let out_name = if name == "out" { drv_name.clone() } else { format!("{drv_name}-{name}") };
        let Ok(expect) = sd.make_store_path(&format!("output:{name}"), &hash, &out_name) else { continue };
        if sd.display(&expect) != *path {
            continue;
        }
        let id = format!("sha256:{}!{name}", hash.to_base16());
        let json = serde_json::json!({
            "dependentRealisations": {},
            "id": id,
            "outPath": expect.basename(),
            "signatures": [],
        });
        built.push((id, json.to_string()));
    }
    built
}

/// Whether every wanted output of `drv` is valid already.
fn outputs_present(conn: &Conn, drv: &StorePath, wanted: &[String]) -> Result<bool, String> {
    let store = conn.store.store();
    if !store.is_valid(drv).map_err(|e| e.to_string())? {
        return Ok(false);
    }
    let outputs = store.derivation_outputs(drv).map_err(|e| e.to_string())?;
    if outputs.is_empty() {
        return Ok(false);
    }
    for (name, path) in &outputs {
        if (wanted.is_empty() || wanted.contains(name)) && !store.is_valid(path).map_err(|e| e.to_string())? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Copies up the derivation's closure and the valid outputs of every derivation in it,
/// so Nix's builder, which sees only the upper database, finds its inputs valid.
fn copy_up_inputs(conn: &mut Conn, drv: &StorePath) -> crate::store::Result<()> {
    let Opened::Overlay(o) = &conn.store else { return Ok(()) };
    if !o.is_valid(drv)? {
        return Ok(());
    }
    let closure = crate::store::Store::closure(o, std::slice::from_ref(drv))?;
    let mut wanted: Vec<StorePath> = vec![drv.clone()];
    for info in &closure {
        if info.path.is_derivation() && info.path != *drv {
            for out in o.derivation_outputs(&info.path)?.into_values() {
                if o.is_valid(&out)? {
                    wanted.push(out);
                }
            }
        }
    }
    o.copy_up(&wanted)?;
    Ok(())
}

/// The store URI under which Nix's builder sees this store: for an overlay, the merged
/// directory with the upper database, as a plain local store.
fn builder_store_uri(conn: &Conn) -> String {
    let mut local = conn.spec.clone();
    if local.kind == StoreKind::LocalOverlay {
        local.kind = StoreKind::Local;
        local.lower_store = None;
        local.upper_layer = None;
        local.mount = None;
        local.remount_hook = None;
    }
    local.policy = None;
    local.to_uri()
}

fn run_builder(conn: &mut Conn, target: &str) -> Result<(), String> {
    let argv = conn.spec.serve.builder.clone();
    let uri = builder_store_uri(conn);
    let realise = target.strip_suffix("!*").unwrap_or(target);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).args(["--store", &uri, "--realise", realise]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // The builder must not find our socket as its daemon, nor inherit a client's settings.
    cmd.env_remove("NIX_REMOTE");
    tracing::info!("building '{realise}' with {} --store '{uri}'", argv.join(" "));
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("cannot build: the builder '{}' was not found (install Nix, or set [serve] builder in the store spec)", argv[0])
        } else {
            format!("cannot start the builder '{}': {e}", argv[0])
        }
    })?;
    let stderr = child.stderr.take().expect("piped");
    let mut last_lines: Vec<String> = Vec::new();
    let mut stderr = BufReader::new(stderr);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // Bytes, not lines of UTF-8: a build log may hold anything, and stopping early
        // would close the pipe on the builder.
        match stderr.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(raw.strip_suffix(b"\n").unwrap_or(&raw)).into_owned();
        // Forwarded as it comes, so the client sees the build log live.
        let _ = conn.log(&line);
        last_lines.push(line);
        if last_lines.len() > 20 {
            last_lines.remove(0);
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for the builder: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        let tail = last_lines.iter().rev().find(|l| l.contains("error")).cloned().unwrap_or_else(|| last_lines.join("\n"));
        Err(format!("build of '{realise}' failed ({status}): {}", crate::store::daemon::wire::strip_ansi(&tail)))
    }
}

/// After the builder: every wanted output valid in the upper database, its closure too.
fn check_outputs(conn: &mut Conn, drv: &StorePath, wanted: &[String]) -> Result<(), String> {
    let sd = conn.store_dir();
    let upper = conn.store.registry();
    let outputs = upper.db().derivation_outputs(drv).map_err(|e| e.to_string())?;
    if outputs.is_empty() {
        return Err(format!("the builder registered no outputs for '{}'", sd.display(drv)));
    }
    let outs: Vec<StorePath> = outputs.into_iter().filter(|(n, _)| wanted.is_empty() || wanted.contains(n)).map(|(_, p)| p).collect();
    for out in &outs {
        if !upper.db().is_valid(out).map_err(|e| e.to_string())? {
            return Err(format!("the builder did not register output '{}'", sd.display(out)));
        }
    }
    // `closure` fails on any reference the upper database lacks.
    crate::store::Store::closure(&*upper, &outs)
        .map_err(|e| format!("the outputs of '{}' are not closure-complete: {e}", sd.display(drv)))?;
    Ok(())
}

/// BuildDerivation: a derivation sent inline. We build it from its `.drv` in the store
/// (which must be valid there); the inline copy is read and checked for its path only.
pub(super) fn build_derivation(conn: &mut Conn) -> Result<Outcome, super::connection::Failure> {
    let drv = conn.read_path()?;
    // The inline derivation: outputs, inputs, platform, builder, args, env.
    let n = read_map_count(&mut conn.r)?;
    for _ in 0..n {
        for _ in 0..4 {
            read_string(&mut conn.r)?; // name, path, hash algo, hash
        }
    }
    read_string_list(&mut conn.r)?; // input sources
    read_string(&mut conn.r)?; // platform
    read_string(&mut conn.r)?; // builder
    read_string_list(&mut conn.r)?; // args
    let n = read_map_count(&mut conn.r)?;
    for _ in 0..n {
        read_string(&mut conn.r)?;
        read_string(&mut conn.r)?;
    }
    read_u64(&mut conn.r)?; // build mode
    let start = now();
    let sd = conn.store_dir();
    if !conn.store.store().is_valid(&drv)? {
        return Ok(Outcome {
            target: sd.display(&drv),
            status: Status::MiscFailure,
            error: format!(
                "derivation '{}' is not valid here: this server builds from .drv files in the store (copy it first)",
                sd.display(&drv)
            ),
            start,
            stop: now(),
            built: Vec::new(),
        });
    }
    if conn.trust != Trust::Trusted {
        return Ok(Outcome {
            target: sd.display(&drv),
            status: Status::MiscFailure,
            error: "you are not privileged to build input-addressed derivations".into(),
            start,
            stop: now(),
            built: Vec::new(),
        });
    }
    let t = Target { text: format!("{}!*", sd.display(&drv)), path: drv, outputs: Some(Vec::new()) };
    Ok(build_one(conn, &t, start))
}
