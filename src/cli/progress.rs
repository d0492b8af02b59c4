//! Progress bars on a terminal, drawn from the library's progress events
//! ([`overlay_store::progress`]). Text mode only: on a pipe the events are dropped, and
//! `--log-format json` prints them as they are.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::field::{Field, Visit};

struct Bars {
    multi: MultiProgress,
    live: Mutex<HashMap<u64, ProgressBar>>,
}

/// `None` when stderr is not a terminal.
fn bars() -> Option<&'static Bars> {
    static BARS: OnceLock<Option<Bars>> = OnceLock::new();
    BARS.get_or_init(|| {
        std::io::stderr()
            .is_terminal()
            .then(|| Bars { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), live: Mutex::new(HashMap::new()) })
    })
    .as_ref()
}

/// The fields of one progress event.
#[derive(Default)]
struct Update {
    id: u64,
    activity: String,
    phase: String,
    what: String,
    done: u64,
    total: u64,
    bytes: u64,
    total_bytes: u64,
}

impl Visit for Update {
    fn record_u64(&mut self, f: &Field, v: u64) {
        match f.name() {
            "id" => self.id = v,
            "done" => self.done = v,
            "total" => self.total = v,
            "bytes" => self.bytes = v,
            "total_bytes" => self.total_bytes = v,
            _ => {}
        }
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        match f.name() {
            "activity" => self.activity = v.to_string(),
            "phase" => self.phase = v.to_string(),
            _ => {}
        }
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            self.what = format!("{v:?}");
        }
    }
}

/// Draws (or clears) the bar of the event's task.
pub fn show(event: &tracing::Event<'_>) {
    let Some(bars) = bars() else { return };
    let mut u = Update::default();
    event.record(&mut u);
    let mut live = bars.live.lock().expect("progress bars");
    if u.phase == "done" {
        if let Some(bar) = live.remove(&u.id) {
            bar.finish_and_clear();
            bars.multi.remove(&bar);
        }
        return;
    }
    // Bytes fill the bar when their total is known, else items; with neither, a counter.
    let (template, len, pos) = if u.total_bytes > 0 {
        ("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}", u.total_bytes, u.bytes)
    } else if u.total > 0 {
        ("{prefix} [{bar:30}] {msg}", u.total, u.done)
    } else {
        ("{spinner} {prefix} {msg}", 0, u.done)
    };
    let style = ProgressStyle::with_template(template).expect("a valid template").progress_chars("=> ");
    let bar = live.entry(u.id).or_insert_with(|| {
        let bar = ProgressBar::no_length().with_style(style.clone()).with_prefix(u.activity.clone());
        bars.multi.add(bar)
    });
    bar.set_style(style);
    if len > 0 {
        bar.set_length(len);
    }
    bar.set_position(pos);
    let mut msg = match u.total {
        0 => format!("{} {}", u.done, u.what),
        t => format!("{}/{t} {}", u.done, u.what),
    };
    if u.total_bytes == 0 && u.bytes > 0 {
        msg.push_str(&format!(", {}", HumanBytes(u.bytes)));
    }
    bar.set_message(msg);
    bar.tick();
}

/// Writes a log line above the bars, so neither garbles the other.
pub fn print_line(line: &[u8]) {
    use std::io::Write as _;
    match bars() {
        Some(b) if !b.live.lock().expect("progress bars").is_empty() => b.multi.suspend(|| {
            let _ = std::io::stderr().lock().write_all(line);
        }),
        _ => {
            let _ = std::io::stderr().lock().write_all(line);
        }
    }
}
