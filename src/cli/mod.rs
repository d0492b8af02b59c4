//! The command line: arguments, output formats and exit codes. Everything here is a
//! thin shell over the library; errors are rendered for humans only at this edge.

mod args;
mod cache;
mod docs;
mod doctor;
mod gc;
mod logging;
mod output;
mod paths;
mod pivot;
mod progress;
mod query;
mod read;
mod realisation;
mod serve;
mod verify;
mod watch;

use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;

use args::{Cli, Command, PolicyCommand};
use overlay_store::policy::LuaPolicy;
use overlay_store::spec::{SpecError, StoreKind, StoreSpec};
use overlay_store::store::local::ingest;
use overlay_store::store::local::{LocalConfig, LocalStore};
use overlay_store::store::overlay::{self, MountError, MountPlan};
pub use overlay_store::store::Opened;
use overlay_store::store::StoreError;

/// A failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
    /// A policy that does not load: a configuration error.
    #[error("{0}")]
    Policy(String),
    /// The command already reported its problems; just exit 1.
    #[error("")]
    Reported,
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Spec(_) | CliError::Policy(_) => 2,
            _ => 1,
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Runs the command line; the process's exit status.
pub fn main() -> u8 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The completion scripts' callback: not a command of the tree, never logs.
    if args.get(1).is_some_and(|a| a == "__complete-paths") {
        docs::complete_paths(&args[2..]);
        return 0;
    }
    let cli = match Cli::parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let verbosity = if cli.global.quiet { -1 } else { cli.global.verbose.min(2) as i8 };
    logging::init(cli.global.log_format, verbosity);
    match run(cli) {
        Ok(()) => 0,
        Err(CliError::Store(StoreError::Io { source, .. })) if source.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            if !matches!(e, CliError::Reported) {
                tracing::error!("{e}");
            }
            e.exit_code()
        }
    }
}

fn load_spec(cli: &Cli) -> CliResult<StoreSpec> {
    let spec = if let Some(file) = &cli.global.config {
        StoreSpec::from_file(file)?
    } else if let Some(uri) = &cli.global.store {
        StoreSpec::parse_arg(uri)?
    } else if let Some(file) = std::env::var_os("OVERLAY_STORE_CONFIG") {
        StoreSpec::from_file(std::path::Path::new(&file))?
    } else {
        return Err(CliError::Usage(
            "no store given: pass --config FILE (a TOML store spec) or --store URI (for example --store local?root=/tmp/s)".into(),
        ));
    };
    for w in spec.warnings() {
        tracing::warn!("{w}");
    }
    Ok(spec)
}

/// Loads the spec's Lua policy, if it names one.
pub fn load_policy(spec: &StoreSpec) -> CliResult<Option<LuaPolicy>> {
    match &spec.policy {
        None => Ok(None),
        Some(file) => LuaPolicy::load(file, &spec.policy_limits, Some(spec)).map(Some).map_err(|e| CliError::Policy(e.to_string())),
    }
}

/// Opens the store a spec describes, with its policy loaded (for the CLI's errors).
fn open_store(spec: &StoreSpec) -> CliResult<Opened> {
    let policy: Box<dyn overlay_store::store::overlay::OverlayPolicy> = match spec.kind {
        StoreKind::LocalOverlay => match load_policy(spec)? {
            Some(p) => Box::new(p),
            None => Box::new(overlay_store::store::overlay::NixPolicy),
        },
        _ => Box::new(overlay_store::store::overlay::NixPolicy),
    };
    if spec.kind == StoreKind::Daemon {
        return Err(CliError::Usage("a daemon store can only be used as a lower store".into()));
    }
    Ok(Opened::open(spec, policy)?)
}

fn overlay_plan(spec: &StoreSpec, command: &str) -> CliResult<MountPlan> {
    if spec.kind != StoreKind::LocalOverlay {
        return Err(CliError::Usage(format!("{command} applies to local-overlay stores; this spec is a {} store", spec.kind)));
    }
    Ok(overlay::mount_plan(spec)?)
}

fn stdout() -> BufWriter<io::StdoutLock<'static>> {
    BufWriter::with_capacity(1 << 16, io::stdout().lock())
}

fn out_err(e: io::Error) -> CliError {
    CliError::Store(StoreError::Io { path: "<stdout>".into(), source: e })
}

/// The store a command opened, kept so that policy failures can be checked at the end.
#[derive(Default)]
struct Session {
    opened: Option<Opened>,
}

impl Session {
    fn open(&mut self, spec: &StoreSpec) -> CliResult<&mut Opened> {
        Ok(self.opened.insert(open_store(spec)?))
    }

    /// For commands that only read. An existing local store is then opened as a reader:
    /// no layout check, no big lock, a read-only connection without the writer's
    /// settings. A short query spends a third of its time opening the store otherwise.
    /// A store that does not exist yet is created as usual, as Nix does.
    fn open_to_read(&mut self, spec: &StoreSpec) -> CliResult<&mut Opened> {
        // (A policy on a local spec goes the usual way, which warns that it is unused.)
        if spec.kind == StoreKind::Local && !spec.read_only && !spec.immutable && spec.policy.is_none() {
            let mut config = LocalConfig::from_spec(spec);
            if config.db_path().exists() && config.db_dir().join("schema").exists() {
                config.lone_reader = true;
                return Ok(self.opened.insert(Opened::Local(LocalStore::open(config)?)));
            }
        }
        self.open(spec)
    }
}

fn run(cli: Cli) -> CliResult {
    if let Command::Policy(PolicyCommand::Check { file }) = &cli.command {
        return policy_check(file);
    }
    if let Command::GenerateKey { name, secret_key_file, public_key_file } = &cli.command {
        return cache::generate_key(name, secret_key_file, public_key_file);
    }
    match &cli.command {
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man { dir } => return docs::man_pages(dir),
        _ => {}
    }
    let mut session = Session::default();
    let result = run_command(cli, &mut session);
    let failed_hooks = session.opened.as_ref().map(|o| o.consequential_policy_failures()).unwrap_or(0);
    match result {
        Ok(()) if failed_hooks > 0 => {
            tracing::error!("{failed_hooks} policy hook call(s) failed and the safe default changed what this command did (see above)");
            Err(CliError::Reported)
        }
        r => r,
    }
}

fn policy_check(file: &std::path::Path) -> CliResult {
    let limits = overlay_store::spec::PolicyLimits::default();
    let results = overlay_store::policy::check::check(file, &limits).map_err(CliError::Failed)?;
    let mut bad = 0;
    for r in &results {
        match &r.outcome {
            Ok(what) => println!("ok    {}: {what}", r.hook),
            Err(e) => {
                bad += 1;
                println!("FAIL  {}: {}", r.hook, e.message);
            }
        }
    }
    if bad > 0 {
        return Err(CliError::Failed(format!("{}: {bad} hook(s) failed on sample data", file.display())));
    }
    println!("{}: {} hook(s), all ran on sample data", file.display(), results.len());
    Ok(())
}

fn run_command(cli: Cli, session: &mut Session) -> CliResult {
    if let Command::Policy(_) | Command::GenerateKey { .. } | Command::Completions { .. } | Command::Man { .. } = cli.command {
        unreachable!("handled before a store is opened");
    }
    let spec = load_spec(&cli)?;
    match cli.command {
        Command::Policy(_) | Command::GenerateKey { .. } | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before a store is opened")
        }
        Command::Doctor { json } => doctor::doctor(&spec, json),
        Command::Copy { from, to, no_check_sigs, json, paths } => {
            let opened = session.open(&spec)?;
            cache::copy(opened, &spec, cache::CopyArgs { from, to, no_check_sigs, json, paths })
        }
        Command::Sign { key_files, paths } => {
            let opened = session.open(&spec)?;
            cache::sign(opened, &spec, &key_files, &paths)
        }
        Command::Uri => {
            println!("{}", spec.to_uri());
            Ok(())
        }
        Command::Read(cmd) => read::run(cmd, session.open_to_read(&spec)?.store(), &spec),
        Command::Init => {
            match spec.kind {
                StoreKind::LocalOverlay => overlay::init(&spec)?,
                _ => drop(session.open(&spec)?),
            }
            tracing::info!("initialised store at '{}'", spec.real.display());
            Ok(())
        }
        Command::CheckMount => {
            let plan = overlay_plan(&spec, "check-mount")?;
            plan.check().map_err(StoreError::from)?;
            tracing::info!("overlay filesystem '{}' is mounted correctly", spec.real.display());
            Ok(())
        }
        Command::Mount => {
            let plan = overlay_plan(&spec, "mount")?;
            if spec.mount.is_none() {
                return Err(StoreError::from(MountError::NotManaged(spec.real.clone())).into());
            }
            // Before init, whose first directory would fail with a bare EACCES.
            if !nix::unistd::geteuid().is_root() && plan.state().map_err(StoreError::from)? == overlay::MountState::NotMounted {
                return Err(StoreError::from(MountError::NotPermitted { real: plan.real.clone() }).into());
            }
            overlay::init(&spec)?;
            if plan.mount().map_err(StoreError::from)? {
                tracing::info!("mounted overlay on '{}'", spec.real.display());
            } else {
                tracing::info!("overlay on '{}' is already mounted", spec.real.display());
            }
            Ok(())
        }
        Command::Umount => {
            let plan = overlay_plan(&spec, "umount")?;
            if plan.umount().map_err(StoreError::from)? {
                tracing::info!("unmounted '{}'", spec.real.display());
            }
            Ok(())
        }
        Command::Remount => {
            let plan = overlay_plan(&spec, "remount")?;
            plan.check().map_err(StoreError::from)?;
            overlay::mount::remount(&plan.real).map_err(StoreError::from)?;
            tracing::info!("remounted '{}'", spec.real.display());
            Ok(())
        }
        Command::Add { paths } => {
            let opened = session.open(&spec)?;
            let mut out = stdout();
            for p in paths {
                let sp = ingest::add_path(opened.ingest(), &p)?;
                writeln!(out, "{}", opened.store().store_dir().display(&sp)).map_err(out_err)?;
            }
            out.flush().map_err(out_err)
        }
        Command::Import { file } => {
            let opened = session.open(&spec)?;
            let mut input: Box<dyn Read> = match &file {
                Some(f) => Box::new(std::fs::File::open(f).map_err(|e| StoreError::Io { path: f.clone(), source: e })?),
                None => {
                    if io::stdin().is_terminal() {
                        return Err(CliError::Usage("import reads an export stream from FILE or stdin; stdin is a terminal".into()));
                    }
                    Box::new(io::stdin().lock())
                }
            };
            let mut reader = BufReader::with_capacity(1 << 20, &mut input);
            let imported = ingest::import(opened.ingest(), &mut reader)?;
            let mut out = stdout();
            for p in imported {
                writeln!(out, "{}", opened.store().store_dir().display(&p)).map_err(out_err)?;
            }
            out.flush().map_err(out_err)
        }
        Command::CheckValidity { print_invalid, paths } => {
            let opened = session.open(&spec)?;
            let store = opened.store();
            let mut out = stdout();
            for a in &paths {
                let p = paths::resolve(store, a)?;
                if !store.is_valid(&p)? {
                    if print_invalid {
                        writeln!(out, "{}", store.store_dir().display(&p)).map_err(out_err)?;
                    } else {
                        return Err(CliError::Failed(format!("path '{}' is not valid", store.store_dir().display(&p))));
                    }
                }
            }
            out.flush().map_err(out_err)
        }
        Command::Realisation(cmd) => {
            let opened = if cmd.only_reads() { session.open_to_read(&spec)? } else { session.open(&spec)? };
            realisation::run(cmd, opened)
        }
        Command::Pivot { to, dry_run, json } => {
            let new_spec =
                if to.ends_with(".toml") { StoreSpec::from_file(std::path::Path::new(&to))? } else { StoreSpec::parse_arg(&to)? };
            let opened = session.open(&spec)?;
            let Opened::Overlay(store) = opened else {
                return Err(CliError::Usage("pivot applies to local-overlay stores".into()));
            };
            pivot::pivot(store, &spec, &new_spec, dry_run, json)
        }
        Command::Watch => {
            let file = cli.global.config.clone().or_else(|| std::env::var_os("OVERLAY_STORE_CONFIG").map(PathBuf::from));
            let Some(file) = file else {
                return Err(CliError::Usage("watch needs a config file to watch: pass --config FILE".into()));
            };
            crate::cli::watch::run(&file, spec)
        }
        Command::Serve { socket, http, compression } => match http {
            Some(addr) => cache::serve_http(spec, &addr, &compression),
            None => crate::cli::serve::run(spec, socket),
        },
        Command::Delete { paths, json } => {
            let opened = session.open(&spec)?;
            gc::delete(opened, &spec, &paths, json)
        }
        Command::Gc(args) => {
            let opened = session.open(&spec)?;
            gc::gc(opened, &spec, &args)
        }
        Command::Optimise { json } => {
            let opened = session.open(&spec)?;
            gc::optimise(opened, json)
        }
        Command::Stats { json } => {
            let opened = session.open(&spec)?;
            let Opened::Overlay(store) = opened else {
                return Err(CliError::Usage("stats reports per overlay layer; it applies to local-overlay stores".into()));
            };
            let st = store.stats(spec.gc.keep_derivations, spec.gc.keep_outputs)?;
            if json {
                println!("{}", serde_json::to_string(&st).map_err(|e| CliError::Failed(e.to_string()))?);
            } else {
                let mib = |b: u64| b as f64 / 1048576.0;
                println!("upper-only paths:        {:>8}  {:>10.2} MiB", st.upper_only.paths, mib(st.upper_only.bytes));
                println!("lower paths known upper: {:>8}  {:>10.2} MiB", st.lower_known_upper.paths, mib(st.lower_known_upper.bytes));
                println!("duplicates (both layers):{:>8}  {:>10.2} MiB", st.duplicates.paths, mib(st.duplicates.bytes));
                println!("missing files:           {:>8}  {:>10.2} MiB", st.missing.paths, mib(st.missing.bytes));
                println!("dead paths:              {:>8}  {:>10.2} MiB", st.dead.paths, mib(st.dead.bytes));
                println!("unclaimed upper entries: {:>8}  {:>10.2} MiB", st.unclaimed.paths, mib(st.unclaimed.bytes));
                println!("reclaimable:                       {:>10.2} MiB", mib(st.reclaimable_bytes));
            }
            Ok(())
        }
        Command::Verify { check_contents, repair, repair_from } => {
            let opened = session.open(&spec)?;
            let from = if repair { repair_from.as_deref() } else { None };
            verify::verify(opened, check_contents, from)
        }
    }
}
