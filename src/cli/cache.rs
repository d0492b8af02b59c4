//! Binary cache commands: `copy --from/--to`, `sign`, `generate-key`, `serve --http`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use overlay_store::cache::http_server::{HttpOptions, HttpServer};
use overlay_store::cache::publish::{self, PublishOptions};
use overlay_store::cache::substitute::{self, SubstituteOptions};
use overlay_store::cache::{self, CacheError, CacheUrl, Compression, Transport, TransportOptions};
use overlay_store::format::signing::SecretKey;
use overlay_store::format::StorePath;
use overlay_store::spec::StoreSpec;
use overlay_store::store::{Opened, Store};
use serde_json::json;

use super::{out_err, stdout, CliError, CliResult};

impl From<CacheError> for CliError {
    fn from(e: CacheError) -> CliError {
        match e {
            CacheError::Store(e) => CliError::Store(e),
            CacheError::Url { .. } => CliError::Usage(e.to_string()),
            e => CliError::Failed(e.to_string()),
        }
    }
}

fn transport_options(spec: &StoreSpec) -> TransportOptions {
    TransportOptions { stall_timeout_secs: spec.caches.stalled_download_timeout }
}

fn open_cache(url: &str, spec: &StoreSpec) -> CliResult<Transport> {
    let parsed = CacheUrl::parse(url)?;
    for p in parsed.unknown_params() {
        tracing::warn!("binary cache URL '{url}': unknown setting '{p}'");
    }
    Ok(Transport::new(parsed, transport_options(spec)))
}

/// Store paths named on the command line; they need not exist in the store yet.
fn store_paths(sd: &overlay_store::format::StoreDir, args: &[String]) -> CliResult<Vec<StorePath>> {
    args.iter()
        .map(|a| sd.parse_path_prefix(a).map_err(|e| CliError::Usage(format!("'{a}' is not a store path in '{}': {e}", sd.as_str()))))
        .collect()
}

pub struct CopyArgs {
    pub from: Option<String>,
    pub to: Option<String>,
    pub no_check_sigs: bool,
    pub json: bool,
    pub paths: Vec<String>,
}

pub fn copy(opened: &mut Opened, spec: &StoreSpec, args: CopyArgs) -> CliResult {
    match &args.to {
        Some(to) => copy_to(opened.store(), spec, to, &args),
        None => copy_from(opened, spec, &args),
    }
}

fn copy_from(opened: &mut Opened, spec: &StoreSpec, args: &CopyArgs) -> CliResult {
    let urls: Vec<String> = match &args.from {
        Some(u) => vec![u.clone()],
        None if spec.caches.substituters.is_empty() => {
            return Err(CliError::Usage("copy needs --from URL, --to URL, or `substituters` in the spec's [binary-caches] table".into()))
        }
        None => spec.caches.substituters.clone(),
    };
    let caches = urls.iter().map(|u| open_cache(u, spec)).collect::<CliResult<Vec<_>>>()?;
    let sd = opened.store().store_dir().clone();
    let roots = store_paths(&sd, &args.paths)?;
    let mut opts = SubstituteOptions::from_spec(spec);
    opts.require_sigs &= !args.no_check_sigs;
    let report = substitute::copy_from(opened.ingest(), &caches, &roots, &opts)?;
    let nar_bytes: u64 = report.fetched.iter().map(|f| f.nar_size).sum();
    let file_bytes: u64 = report.fetched.iter().map(|f| f.file_size).sum();
    if args.json {
        let fetched: Vec<_> = report
            .fetched
            .iter()
            .map(|f| json!({"path": sd.display(&f.path), "cache": f.cache, "narSize": f.nar_size, "fileSize": f.file_size}))
            .collect();
        let present: Vec<String> = report.present.iter().map(|p| sd.display(p)).collect();
        let doc = json!({"fetched": fetched, "present": present, "narBytes": nar_bytes, "downloadedBytes": file_bytes});
        let mut out = stdout();
        writeln!(out, "{doc}").map_err(out_err)?;
        out.flush().map_err(out_err)?;
    } else {
        tracing::info!(
            "copied {} path(s) ({:.2} MiB unpacked, {:.2} MiB downloaded); {} already present",
            report.fetched.len(),
            nar_bytes as f64 / 1048576.0,
            file_bytes as f64 / 1048576.0,
            report.present.len()
        );
    }
    Ok(())
}

/// The keys that sign what we publish: the URL's `secret-key` and the spec's files.
fn signing_keys(spec: &StoreSpec, extra: Option<&str>) -> CliResult<Vec<SecretKey>> {
    let mut files: Vec<PathBuf> = spec.caches.secret_key_files.clone();
    if let Some(f) = extra {
        files.push(PathBuf::from(f));
    }
    Ok(files.iter().map(|f| cache::read_secret_key(f)).collect::<Result<Vec<_>, _>>()?)
}

fn copy_to(store: &dyn Store, spec: &StoreSpec, to: &str, args: &CopyArgs) -> CliResult {
    let cache = open_cache(to, spec)?;
    let sd = store.store_dir().clone();
    let roots = args.paths.iter().map(|a| super::paths::resolve(store, a)).collect::<CliResult<Vec<_>>>()?;
    for r in &roots {
        if !store.is_valid(r)? {
            return Err(CliError::Failed(format!("path '{}' is not valid", sd.display(r))));
        }
    }
    let opts = PublishOptions {
        compression: cache.url().compression(),
        keys: signing_keys(spec, cache.url().params.get("secret-key").map(String::as_str))?,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let report = publish::copy_to(store, &cache, &roots, &opts)?;
    if args.json {
        let doc = json!({
            "published": report.published.iter().map(|p| sd.display(p)).collect::<Vec<_>>(),
            "present": report.present.iter().map(|p| sd.display(p)).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        tracing::info!("published {} path(s) to '{}'; {} already there", report.published.len(), cache.url().base, report.present.len());
    }
    Ok(())
}

/// `sign`: adds signatures to the database rows (an overlay copies lower paths up first,
/// since the lower database is read-only).
pub fn sign(opened: &mut Opened, spec: &StoreSpec, key_files: &[PathBuf], args: &[String]) -> CliResult {
    let keys = if key_files.is_empty() {
        signing_keys(spec, None)?
    } else {
        key_files.iter().map(|f| cache::read_secret_key(f)).collect::<Result<Vec<_>, _>>()?
    };
    if keys.is_empty() {
        return Err(CliError::Usage("sign needs --key-file FILE or `secret-key-files` in the spec's [binary-caches] table".into()));
    }
    let paths = args.iter().map(|a| super::paths::resolve(opened.store(), a)).collect::<CliResult<Vec<_>>>()?;
    let sd = opened.store().store_dir().clone();
    let mut added = 0;
    for p in &paths {
        let info = opened.store().path_info(p)?.ok_or_else(|| CliError::Failed(format!("path '{}' is not valid", sd.display(p))))?;
        let new = publish::new_signatures(&sd, &info, &keys);
        if new.is_empty() {
            continue;
        }
        if let Opened::Overlay(o) = opened {
            if !o.upper().db().is_valid(p)? {
                o.copy_up(std::slice::from_ref(p))?;
            }
        }
        let new: Vec<String> = new.into_iter().collect();
        opened.registry().db().add_signatures(p, &new)?;
        added += new.len();
    }
    tracing::info!("added {added} signature(s) to {} path(s)", paths.len());
    Ok(())
}

/// `generate-key`: a new key pair in Nix's format; never overwrites a file.
pub fn generate_key(name: &str, secret: &Path, public: &Path) -> CliResult {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err(CliError::Usage(format!("'{name}' is not a key name: it may not be empty or hold ':' or spaces")));
    }
    if secret == public {
        return Err(CliError::Usage(format!("the secret and the public key need two files, not '{}' twice", secret.display())));
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| CliError::Failed(format!("reading /dev/urandom: {e}")))?;
    let key = SecretKey::from_seed(name, seed);
    write_new(secret, &key.render(), 0o600)?;
    if let Err(e) = write_new(public, &key.public().render(), 0o644) {
        let _ = std::fs::remove_file(secret);
        return Err(e);
    }
    tracing::info!("wrote secret key '{}' and public key '{}'", secret.display(), public.display());
    Ok(())
}

fn write_new(path: &Path, text: &str, mode: u32) -> CliResult {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        CliError::Failed(if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!("'{}' exists; remove it or choose another file (keys are never overwritten)", path.display())
        } else {
            format!("'{}': {e}", path.display())
        })
    })?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| CliError::Failed(format!("'{}': {e}", path.display())))
}

/// `serve --http ADDR`.
pub fn serve_http(spec: StoreSpec, addr: &str, compression: &str) -> CliResult {
    let compression = Compression::parse(compression)
        .ok_or_else(|| CliError::Usage(format!("--compression {compression}: expected none, xz, zstd or bzip2")))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| CliError::Failed(format!("installing signal handlers: {e}")))?;
    }
    let opts = HttpOptions {
        compression,
        keys: signing_keys(&spec, None)?,
        priority: 40,
        workers: (spec.serve.max_connections as usize).clamp(1, 32),
    };
    // Open once up front, so a bad store fails before we say we are serving.
    drop(super::open_store(&spec)?);
    let server = HttpServer::bind(addr)?;
    eprintln!("serving '{}' on 'http://{}'", spec.to_uri(), server.addr());
    let open = || super::open_store(&spec).map_err(|e| overlay_store::store::StoreError::Other(e.to_string()));
    server.run(&open, &opts, &stop)?;
    Ok(())
}
