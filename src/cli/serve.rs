//! `serve`: listens until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use overlay_store::serve::{ServeError, Server};
use overlay_store::spec::StoreSpec;

use super::{CliError, CliResult};

pub fn run(spec: StoreSpec, socket: Option<PathBuf>) -> CliResult {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| CliError::Failed(format!("installing signal handlers: {e}")))?;
    }
    let uri = spec.to_uri();
    let server = Server::bind(spec, socket).map_err(|e| match e {
        ServeError::Config(m) => CliError::Usage(m),
        ServeError::Store(e) => CliError::Store(e),
        e => CliError::Failed(e.to_string()),
    })?;
    // The ready line scripts and tests wait for: plain text, first thing on its line.
    eprintln!("serving '{uri}' on '{}'", server.socket().display());
    server.run(&stop).map_err(|e| CliError::Failed(e.to_string()))
}
