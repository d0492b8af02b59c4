//! The Markdown report: machine facts, the results table against the issues' targets,
//! flatness, GC against Nix, the generated stores, per-benchmark details, how to
//! reproduce, and a hand-written section carried over from the previous report.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::run::Series;

/// Everything after this line in an existing report is kept when it is rewritten.
pub const MARKER: &str = "<!-- Hand-written observations below this line are kept when the bench rewrites this file. -->";

pub fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 {
        format!("{s:.1} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.1 {
        format!("{:.0} ms", s * 1e3)
    } else if s >= 0.01 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

/// What a result is held to.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// Median wall time below this.
    Below(Duration),
    /// Nix's median over ours at least this.
    RatioAtLeast(f64),
    /// The second contender's median at most this much above the first's (0.2 = 20 %).
    OverheadBelow(f64),
}

/// One timed command of a benchmark.
pub struct Contender {
    pub label: String,
    pub cmd: String,
    pub series: Result<Series, String>,
}

/// One benchmark: its contenders (ours first), target, and what was noticed.
pub struct Bench {
    pub id: String,
    pub number: &'static str,
    pub title: String,
    pub store: String,
    pub contenders: Vec<Contender>,
    pub target: Target,
    pub other_load: f64,
    pub notes: Vec<String>,
}

impl Bench {
    pub fn median(&self, i: usize) -> Option<Duration> {
        self.contenders.get(i).and_then(|c| c.series.as_ref().ok()).filter(|s| s.runs() > 0).map(Series::median)
    }

    /// The measured value as shown in the results table.
    pub fn value(&self) -> String {
        let failed = self.contenders.iter().find_map(|c| c.series.as_ref().err().map(|e| format!("{}: {e}", c.label)));
        if let Some(e) = failed {
            return format!("**error** ({})", e.replace('|', "\\|"));
        }
        match self.target {
            Target::Below(_) if self.contenders.len() == 1 => self.median(0).map(dur).unwrap_or_default(),
            Target::RatioAtLeast(_) => {
                let (o, n) = (self.median(0).unwrap_or_default(), self.median(1).unwrap_or_default());
                let mut s = format!("ours {}, Nix {} → {:.2}x", dur(o), dur(n), ratio(n, o));
                if let Some(f) = self.median(2) {
                    s.push_str(&format!("; `rm -rf` floor {}", dur(f)));
                }
                s
            }
            Target::OverheadBelow(_) => {
                let (a, b) = (self.median(0).unwrap_or_default(), self.median(1).unwrap_or_default());
                format!(
                    "{} {}, {} {} → {:+.1} %",
                    self.contenders[0].label,
                    dur(a),
                    self.contenders[1].label,
                    dur(b),
                    overhead(a, b) * 100.0
                )
            }
            _ => self
                .contenders
                .iter()
                .map(|c| format!("{} {}", c.label, c.series.as_ref().map(|s| dur(s.median())).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    pub fn target_text(&self) -> String {
        match self.target {
            Target::Below(d) => format!("< {}", dur(d)),
            Target::RatioAtLeast(r) => format!("Nix / ours ≥ {r}x"),
            Target::OverheadBelow(o) => format!("< +{:.0} %", o * 100.0),
        }
    }

    /// `Some(pass)`, or `None` when there is no target or no measurement.
    pub fn pass(&self) -> Option<bool> {
        if self.contenders.iter().any(|c| c.series.is_err()) {
            return Some(false);
        }
        match self.target {
            Target::Below(d) => Some(self.median(0)? < d),
            Target::RatioAtLeast(r) => Some(ratio(self.median(1)?, self.median(0)?) >= r),
            Target::OverheadBelow(o) => Some(overhead(self.median(0)?, self.median(1)?) < o),
        }
    }
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

pub fn overhead(base: Duration, with: Duration) -> f64 {
    ratio(with, base) - 1.0
}

/// A generated store, for the stores table.
pub struct StoreRow {
    pub name: String,
    pub paths: usize,
    pub references: usize,
    pub nar_mib: f64,
    pub depth: usize,
    pub made_in: Duration,
    pub notes: String,
}

pub struct Report {
    pub quick: bool,
    pub facts: Vec<(String, String)>,
    pub sizes: String,
    pub benches: Vec<Bench>,
    pub stores: Vec<StoreRow>,
    pub extra: Vec<String>,
    pub elapsed: Duration,
    pub date: String,
    pub load_before: f64,
    pub disturbed: Vec<String>,
}

fn result_cell(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "pass",
        Some(false) => "**FAIL**",
        None => "—",
    }
}

impl Report {
    fn find(&self, id: &str) -> Option<&Bench> {
        self.benches.iter().find(|b| b.id == id)
    }

    pub fn render(&self, kept: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Overlay benchmarks\n");
        let _ = writeln!(
            s,
            "Written by `cargo bench --bench overlaybench` (bench/overlaybench.rs) on {}{}; the whole run took {:.1} s. \
             Do not edit the tables by hand: rerun the bench. Storebench's report is BENCHMARKS.md.\n",
            self.date,
            if self.quick { " in **quick mode** (small sizes: not the issues' conditions)" } else { "" },
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(s, "| machine | |\n|---|---|");
        for (k, v) in &self.facts {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(s, "\n{}\n", self.sizes);
        let _ = writeln!(
            s,
            "Every time is the median wall time of whole `overlay-store` (or `nix-store`, `rm`) processes, spawn to exit, \
             stdout to /dev/null, after an untimed run that checks the answer. Before every timed run the state is reset \
             (untimed): the overlay unmounted, its upper database and upper layer emptied, mounted again; for GC the dead \
             paths' files and rows written again. After every run the result is checked (rows in the upper database, entries \
             left in the store directory).\n"
        );
        if self.load_before > 0.25 || !self.disturbed.is_empty() {
            let _ = writeln!(
                s,
                "**Warning:** the machine was not quiet (other processes kept {:.2} cores busy just before the run{}); timings may be inflated.\n",
                self.load_before,
                if self.disturbed.is_empty() { String::new() } else { format!("; running: {}", self.disturbed.join(", ")) }
            );
        }
        let busy: Vec<String> = self
            .benches
            .iter()
            .filter(|b| b.other_load > 0.3 && b.id != "daemon")
            .map(|b| format!("{} {} ({:.2} cores)", b.number, b.store, b.other_load))
            .collect();
        if !busy.is_empty() {
            let _ = writeln!(
                s,
                "**Warning:** other processes kept more than 0.3 cores busy while these ran: {}; their timings may be inflated \
                 (see the details).\n",
                busy.join("; ")
            );
        }
        let _ = writeln!(s, "## Results\n");
        let _ = writeln!(s, "| # | benchmark | store | measured (median) | target | result |\n|---|---|---|---|---|---|");
        let mut ordered: Vec<&Bench> = self.benches.iter().collect();
        ordered.sort_by_key(|b| b.number);
        for b in &ordered {
            let _ = writeln!(
                s,
                "| {} | [{}](#{}) | {} | {} | {} | {} |",
                b.number,
                b.title,
                b.id,
                b.store,
                b.value(),
                b.target_text(),
                result_cell(b.pass())
            );
        }
        // Flatness: the same operation over both lower stores.
        let pairs = [
            ("copy-up-small", "copy-up-large", "copy-up (check-validity of the system)"),
            ("import-small", "import-large", "import of one path referring to the system"),
        ];
        let flat: Vec<String> = pairs
            .iter()
            .filter_map(|(a, b, what)| {
                let (x, y) = (self.find(a)?.median(0)?, self.find(b)?.median(0)?);
                let g = ratio(y, x);
                Some(format!("| {what} | {} | {} | {g:.2}x | {} |", dur(x), dur(y), if g <= 1.25 { "yes" } else { "**NO**" }))
            })
            .collect();
        if !flat.is_empty() {
            let _ = writeln!(s, "\n## Flatness: the same copy-up over a small and a large lower store\n");
            let _ = writeln!(
                s,
                "Both lower stores come from the same seed and shape, so the system's closure is the same paths in both; only \
                 the rest of the store grows. Flat means the large store's median is at most 1.25x the small one's.\n"
            );
            let _ = writeln!(s, "| operation | small lower store | large lower store | growth | flat? |\n|---|---:|---:|---:|---|");
            for l in flat {
                let _ = writeln!(s, "{l}");
            }
        }
        if let Some(gc) = self.find("gc-vs-nix") {
            if let (Some(o), Some(n)) = (gc.median(0), gc.median(1)) {
                let _ = writeln!(s, "\n## GC against Nix, with the file system floor\n");
                let _ = writeln!(s, "| program | median | CPU (user+sys) | vs Nix | vs `rm -rf` |\n|---|---:|---:|---:|---:|");
                let floor = gc.median(2);
                for c in &gc.contenders {
                    let Ok(ser) = &c.series else { continue };
                    let m = ser.median();
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {:.2} | {} |",
                        c.label,
                        dur(m),
                        dur(ser.cpu()),
                        ratio(m, n),
                        floor.map(|f| format!("{:.2}", ratio(m, f))).unwrap_or_default()
                    );
                }
                let _ = writeln!(s, "\n(ours / Nix = {:.2}; ratio Nix / ours = {:.2}x)", ratio(o, n), ratio(n, o));
            }
        }
        let _ = writeln!(s, "\n## Generated stores\n");
        let _ = writeln!(
            s,
            "Written with the library: graph stores by storebench's generator (`bench/storebench/gen.rs`, `graph_store`), the \
             GC store's roots, environments and dead part by `bench/overlaybench/stores.rs`.\n"
        );
        let _ = writeln!(s, "| store | paths | references | NAR | longest chain | made in | |\n|---|---:|---:|---:|---:|---:|---|");
        for st in &self.stores {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} MiB | {} | {} | {} |",
                st.name,
                st.paths,
                st.references,
                st.nar_mib,
                st.depth,
                dur(st.made_in),
                st.notes
            );
        }
        for e in &self.extra {
            let _ = writeln!(s, "\n{e}");
        }
        let _ = writeln!(s, "\n## Details\n");
        for b in &ordered {
            let _ = writeln!(s, "### {} {} ({}) <a id=\"{}\"></a>\n", b.number, b.title, b.store, b.id);
            for c in &b.contenders {
                let _ = writeln!(s, "- {}: `{}`", c.label, c.cmd);
                match &c.series {
                    Ok(ser) if ser.runs() > 0 => {
                        let _ = writeln!(
                            s,
                            "  - {} runs: min {} / median {} / max {}; CPU (user+sys) median {}",
                            ser.runs(),
                            dur(ser.min()),
                            dur(ser.median()),
                            dur(ser.max()),
                            dur(ser.cpu())
                        );
                    }
                    Ok(_) => {
                        let _ = writeln!(s, "  - no runs");
                    }
                    Err(e) => {
                        let _ = writeln!(s, "  - **failed**: {e}");
                    }
                }
            }
            let _ = writeln!(s, "- other processes kept {:.2} cores busy on average while it ran", b.other_load);
            for n in &b.notes {
                let _ = writeln!(s, "- {n}");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## How to reproduce\n");
        let _ = writeln!(
            s,
            "```sh\n\
             cargo bench --bench overlaybench                      # full run (as root; about 5 min plus the build); rewrites BENCHMARKS-overlay.md\n\
             OVERLAYBENCH_QUICK=1 cargo bench --bench overlaybench # smoke run, small sizes, < 2 min; report in target/<host triple>/release/overlaybench-quick.md\n\
             OVERLAYBENCH_ONLY=copyup,import cargo bench --bench overlaybench  # some parts only (copyup, import, daemon, lua, gc)\n\
             ```\n\n\
             The bench runs as root in a private mount namespace (`unshare(CLONE_NEWNS)`, `/` made private), builds \
             `target/<host triple>/release/overlay-store` with `cargo build --release --bin overlay-store`, and puts its stores on a tmpfs it \
             mounts itself (or under `$OVERLAYBENCH_DIR`); every mount disappears when it exits. Other knobs: \
             `OVERLAYBENCH_BIN` (the binary to time, skipping the build), `OVERLAYBENCH_OUT` (report file), \
             `OVERLAYBENCH_KEEP=1` (keep the scratch directory; only with `OVERLAYBENCH_DIR`), `OVERLAYBENCH_NO_NIX=1`, \
             `OVERLAYBENCH_PROFILE=DIR` (one extra untimed run of each command under `perf record` and one under `strace -c`). \
             Nix runs with `NIX_CONFIG=$'build-users-group = \\nexperimental-features = nix-command'` and `HOME` in the scratch \
             directory.\n"
        );
        let _ = writeln!(s, "{MARKER}\n");
        s.push_str(kept.trim_start_matches('\n'));
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// The hand-written part of an existing report (after the marker), or nothing.
pub fn kept_section(path: &Path) -> String {
    let Ok(old) = std::fs::read_to_string(path) else { return String::new() };
    match old.find(MARKER) {
        Some(i) => old[i + MARKER.len()..].to_string(),
        None => String::new(),
    }
}
