//! Named points where a test can have the process killed with SIGKILL, so that recovery
//! from a kill -9 at exactly the worst moment is tested every run, not hit by timing.
//! `OVERLAY_STORE_KILL_AT=<name>` arms one; unset (always, outside tests) it costs an
//! environment lookup.

/// The environment variable naming the armed point.
pub const ENV: &str = "OVERLAY_STORE_KILL_AT";

/// Kills this process with SIGKILL if `name` is the armed point.
pub fn reached(name: &str) {
    if std::env::var_os(ENV).is_some_and(|armed| armed == name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
