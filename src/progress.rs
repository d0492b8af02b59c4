//! Progress of long operations (import, GC, verify, optimise, copy-up, pivot, copy),
//! reported as `tracing` events under the target [`TARGET`].
//!
//! Events rather than callbacks, so no library signature grows a progress parameter and
//! the subscriber the binary installs decides what the user sees: a bar when stderr is a
//! terminal, one JSON object per event under `--log-format json`, nothing on a pipe or
//! with `--quiet` (which filters info events out, these included).
//!
//! Each [`Task`] emits `phase = "start"`, then `"progress"` at most every
//! [`INTERVAL`], then `"done"` when dropped, with the fields `id`, `activity`,
//! `done`, `total` (items; 0 when not known), `bytes` and `total_bytes` (0 when not known),
//! and the message naming what is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `tracing` target of progress events.
pub const TARGET: &str = "overlay_store::progress";

/// The least time between two progress events of one task.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// One long operation's counters. Shared by reference across worker threads.
pub struct Task {
    id: u64,
    activity: &'static str,
    what: &'static str,
    enabled: bool,
    started: Instant,
    /// Milliseconds after `started` of the last event.
    last: AtomicU64,
    done: AtomicU64,
    total: AtomicU64,
    bytes: AtomicU64,
    total_bytes: AtomicU64,
}

impl Task {
    /// `activity` names the operation (`gc`, `import`, …) and `what` the counted items
    /// (`paths deleted`); totals may follow with [`Task::set_total`].
    pub fn new(activity: &'static str, what: &'static str) -> Task {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let task = Task {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            activity,
            what,
            enabled: tracing::enabled!(target: TARGET, tracing::Level::INFO),
            started: Instant::now(),
            last: AtomicU64::new(0),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
        };
        task.emit("start");
        task
    }

    pub fn with_total(self, items: u64, bytes: u64) -> Task {
        self.set_total(items, bytes);
        self
    }

    /// Totals known after the start (a plan made); 0 leaves one unknown.
    pub fn set_total(&self, items: u64, bytes: u64) {
        self.total.store(items, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
        if self.enabled {
            self.emit("progress");
        }
    }

    /// `items` more done, `bytes` more processed.
    pub fn advance(&self, items: u64, bytes: u64) {
        if !self.enabled {
            return;
        }
        self.done.fetch_add(items, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= INTERVAL.as_millis() as u64
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.emit("progress");
        }
    }

    /// Counts bytes as they are read through `inner`.
    pub fn reader<R: std::io::Read>(&self, inner: R) -> Reader<'_, R> {
        Reader { task: self, inner }
    }

    /// Counts bytes as they are written through `inner`.
    pub fn writer<W: std::io::Write>(&self, inner: W) -> Writer<'_, W> {
        Writer { task: self, inner }
    }

    fn emit(&self, phase: &'static str) {
        if !self.enabled {
            return;
        }
        tracing::info!(
            target: TARGET,
            id = self.id,
            activity = self.activity,
            phase,
            done = self.done.load(Ordering::Relaxed),
            total = self.total.load(Ordering::Relaxed),
            bytes = self.bytes.load(Ordering::Relaxed),
            total_bytes = self.total_bytes.load(Ordering::Relaxed),
            "{}",
            self.what
        );
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.emit("done");
    }
}

/// See [`Task::reader`].
pub struct Reader<'t, R> {
    task: &'t Task,
    inner: R,
}

impl<R: std::io::Read> std::io::Read for Reader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.task.advance(0, n as u64);
        Ok(n)
    }
}

/// See [`Task::writer`].
pub struct Writer<'t, W> {
    task: &'t Task,
    inner: W,
}

impl<W> Writer<'_, W> {
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for Writer<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.task.advance(0, n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};

    #[derive(Default, Debug, Clone, PartialEq)]
    struct Seen {
        phase: String,
        done: u64,
        total: u64,
        bytes: u64,
    }

    impl Visit for Seen {
        fn record_u64(&mut self, f: &Field, v: u64) {
            match f.name() {
                "done" => self.done = v,
                "total" => self.total = v,
                "bytes" => self.bytes = v,
                _ => {}
            }
        }
        fn record_str(&mut self, f: &Field, v: &str) {
            if f.name() == "phase" {
                self.phase = v.to_string();
            }
        }
        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }

    struct Capture(Arc<Mutex<Vec<Seen>>>);

    impl tracing::Subscriber for Capture {
        fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
            m.target() == TARGET
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, e: &tracing::Event<'_>) {
            let mut s = Seen::default();
            e.record(&mut s);
            self.0.lock().unwrap().push(s);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[test]
    fn a_task_reports_start_throttled_progress_and_done() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Capture(seen.clone()), || {
            let t = Task::new("test", "things").with_total(1000, 0);
            for _ in 0..1000 {
                t.advance(1, 10);
            }
            let mut r = t.reader(&b"abcdef"[..]);
            std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        });
        let seen = seen.lock().unwrap();
        assert_eq!(seen.first().unwrap().phase, "start");
        // Start, the total, and done; a thousand quick advances emit no more than that.
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen.last().unwrap(), &Seen { phase: "done".into(), done: 1000, total: 1000, bytes: 10_006 });
    }

    #[test]
    fn without_a_listener_nothing_is_counted_or_emitted() {
        let t = Task::new("test", "things");
        t.advance(5, 5);
        assert_eq!(t.done.load(Ordering::Relaxed), 0);
    }
}
