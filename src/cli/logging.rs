//! Logging to stderr through `tracing`. Text mode prints notices (info) bare, as Nix
//! prints its progress lines, and prefixes warnings and errors; `--log-format json` emits
//! one JSON object per event for log shippers. `RUST_LOG` overrides the level.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `verbosity`: -1 quiet, 0 default, 1 `-v`, 2+ `-vv`.
pub fn init(format: LogFormat, verbosity: i8) {
    let default = match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // An error means a subscriber is installed already (tests): keep it.
    let _ = match format {
        LogFormat::Text => NixStyle.with(filter).try_init().map_err(drop),
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(false)
            .try_init()
            .map_err(drop),
    };
}

/// Text mode: each event on one line of stderr, as Nix words its messages. A subscriber
/// of its own rather than tracing-subscriber's `fmt`, whose span registry (a slab of
/// 4,096 shards, set up at start) was 5% of a one-path query's instructions; this
/// program opens no spans, so events are all there is to print. Levels are filtered by
/// the `EnvFilter` layered on top.
struct NixStyle;

impl Subscriber for NixStyle {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Unused, but live spans must have distinct ids (the filter keys its state by id).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Id::from_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() == overlay_store::progress::TARGET {
            super::progress::show(event);
            return;
        }
        super::progress::print_line(format_event(event).as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// `error: …`, `warning: …`, a notice bare, `debug: <target>: …`; the message, then any
/// other fields as ` name=value`.
fn format_event(event: &Event<'_>) -> String {
    let meta = event.metadata();
    let mut line = match *meta.level() {
        Level::ERROR => "error: ".to_string(),
        Level::WARN => "warning: ".to_string(),
        Level::INFO => String::new(),
        level => format!("{}: {}: ", level.as_str().to_lowercase(), meta.target()),
    };
    let start = line.len();
    event.record(&mut Fields { line: &mut line, start });
    line.push('\n');
    line
}

struct Fields<'a> {
    line: &'a mut String,
    start: usize,
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Records of the `log` crate (from notify, say) carry their metadata as fields.
        if field.name().starts_with("log.") {
            return;
        }
        if self.line.len() > self.start {
            self.line.push(' ');
        }
        let _ = match field.name() {
            "message" => write!(self.line, "{value:?}"),
            name => write!(self.line, "{name}={value:?}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captures what `format_event` makes of each event.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            self.0.lock().unwrap().push(format_event(event));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn events_are_worded_as_nix_words_them() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Capture(lines.clone()), || {
            tracing::info!("copying 3 paths");
            tracing::warn!("path '{}' is not valid", "/nix/store/x");
            tracing::error!(code = 2, "bad spec");
            tracing::debug!(target: "overlay_store::spec", file = %"a b.toml", "reading store spec");
            // What the `log` bridge makes of a record of the `log` crate.
            tracing::info!(log.target = "notify::inotify", log.line = 7, "watching /etc");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "copying 3 paths\n",
                "warning: path '/nix/store/x' is not valid\n",
                "error: bad spec code=2\n",
                "debug: overlay_store::spec: reading store spec file=a b.toml\n",
                "watching /etc\n",
            ]
        );
    }
}
