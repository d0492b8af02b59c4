//! `watch`: runs the service until SIGTERM or SIGINT.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use overlay_store::service::{Service, ServiceError};
use overlay_store::spec::StoreSpec;

use super::{CliError, CliResult};

pub fn run(config: &Path, _spec: StoreSpec) -> CliResult {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| CliError::Failed(format!("installing signal handlers: {e}")))?;
    }
    let service = Service::start(config, stop).map_err(|e| match e {
        ServiceError::Config(m) => CliError::Usage(m),
        e => CliError::Failed(e.to_string()),
    })?;
    service.run().map_err(|e| CliError::Failed(e.to_string()))
}
