//! The report: `BENCHMARKS.md`, Markdown, rewritten on every full run. A hand-written
//! section after the `NOTES_MARKER` line of an existing report is carried over.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::gen::Generated;
use crate::machine::sh;
use crate::run::Samples;

/// Everything after this line of an existing report is kept on rewrite.
pub const NOTES_MARKER: &str = "<!-- storebench: everything below this line is hand-written and kept when the report is regenerated -->";

/// How much the largest store's time may exceed the smallest's for a query to count as flat.
pub const FLAT_LIMIT: f64 = 1.25;

/// What a benchmark must achieve.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// Nix's median over ours at least this.
    Ratio(f64),
    /// Our median under this, whatever Nix does.
    Under(Duration),
    /// No target: for information.
    Info,
}

/// One benchmark's results.
pub struct Bench {
    pub id: String,
    pub title: String,
    pub store: String,
    pub ours_cmd: String,
    pub nix_cmd: Option<String>,
    pub ours: Result<Samples, String>,
    /// `None` when Nix is not installed.
    pub nix: Option<Result<Samples, String>>,
    pub target: Target,
    pub notes: Vec<String>,
    /// Cores the rest of the machine kept busy during the timed runs.
    pub other_load: f64,
    /// How many paths the answer has, when that is known.
    pub answer: Option<usize>,
    /// Peak RSS (KiB) of one untimed run of each program.
    pub ours_rss: Option<u64>,
    pub nix_rss: Option<u64>,
}

impl Bench {
    fn ratio(&self) -> Option<f64> {
        match (&self.ours, &self.nix) {
            (Ok(o), Some(Ok(n))) => Some(n.median().as_secs_f64() / o.median().as_secs_f64()),
            _ => None,
        }
    }

    /// `Some(pass)`, or `None` when it cannot be judged.
    fn verdict(&self) -> Option<bool> {
        if self.notes.iter().any(|n| n.starts_with("MISMATCH")) {
            return Some(false);
        }
        match self.target {
            Target::Ratio(x) => self.ratio().map(|r| r >= x),
            Target::Under(d) => self.ours.as_ref().ok().map(|o| o.median() < d),
            Target::Info => None,
        }
    }
}

/// Our time for one query on the small and the big store.
pub struct Flat {
    title: String,
    /// Our median and peak RSS (KiB) on each store, smallest store first.
    times: Vec<Option<(Duration, u64)>>,
    /// Answer size on the largest store over that on the smallest (1: the same answer,
    /// so the times should match).
    growth: f64,
}

impl Flat {
    /// `benches`: one benchmark on each store, smallest first.
    pub fn new(benches: &[&Bench]) -> Flat {
        let (small, big) = (benches[0], benches[benches.len() - 1]);
        let same = benches.iter().all(|b| b.title == small.title);
        Flat {
            title: if same { small.title.clone() } else { small.title.split(" (").next().unwrap_or_default().to_string() },
            times: benches.iter().map(|b| b.ours.as_ref().ok().map(|s| (s.median(), b.ours_rss.unwrap_or(0)))).collect(),
            growth: match (big.answer, small.answer) {
                (Some(b), Some(s)) if s > 0 => b as f64 / s as f64,
                _ => 1.0,
            },
        }
    }
}

pub struct Report {
    quick: bool,
    nix_version: Option<String>,
    scratch: PathBuf,
    manifest: PathBuf,
    pub generated: Vec<(String, Generated)>,
    pub benches: Vec<Bench>,
    pub flat: Vec<Flat>,
    pub sources_time: Duration,
    pub total_time: Duration,
    /// Cores other processes kept busy in the 2 s before the run, and during it.
    pub load_before: f64,
    pub load_during: f64,
    /// Time spent waiting for a quiet machine.
    pub waited: Duration,
}

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

fn machine(scratch: &Path, manifest: &Path) -> Vec<(String, String)> {
    let fs = sh("stat", &["-f", "-c", "%T", &scratch.to_string_lossy()]).unwrap_or_else(|| "?".into());
    crate::machine::facts(format!("{fs} ({})", scratch.parent().unwrap_or(scratch).display()), manifest)
}

impl Report {
    pub fn new(quick: bool, nix_version: Option<String>, scratch: &Path, manifest: &Path) -> Report {
        Report {
            quick,
            nix_version,
            scratch: scratch.to_path_buf(),
            manifest: manifest.to_path_buf(),
            generated: Vec::new(),
            benches: Vec::new(),
            flat: Vec::new(),
            sources_time: Duration::ZERO,
            total_time: Duration::ZERO,
            load_before: 0.0,
            load_during: 0.0,
            waited: Duration::ZERO,
        }
    }

    pub fn render(&self, plan: &str) -> String {
        let mut s = String::new();
        let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into());
        let nix = self.nix_version.clone().unwrap_or_else(|| "not installed (Nix columns are n/a)".into());
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Written by `cargo bench --bench storebench` (bench/storebench.rs) on {date}; the whole run took {}. \
             Do not edit the tables by hand: rerun the bench.{}\n",
            dur(self.total_time),
            if self.quick { " **Quick mode: small sizes, the targets do not apply.**" } else { "" }
        );
        let _ = writeln!(s, "| machine | |\n|---|---|");
        for (k, v) in machine(&self.scratch, &self.manifest) {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        let _ = writeln!(s, "| Nix | {nix} |");
        let _ = writeln!(s, "| date | {date} |");
        let _ = writeln!(
            s,
            "| other load | {:.2} cores busy before the run, {:.2} on average during it (other processes and kernel threads, from /proc/stat); {} spent waiting for quiet |\n",
            self.load_before,
            self.load_during,
            dur(self.waited)
        );
        let _ = writeln!(s, "Sizes: {plan}.\n");
        let _ = writeln!(
            s,
            "Every time is the median wall time of whole processes (spawn to exit, output to /dev/null), \
             the two programs' runs interleaved. Ratio = Nix median / ours median (above 1: ours is faster). \
             Before timing, one untimed run of each checks that both give the same answer (and warms the page cache). \
             Other load = cores kept busy by everything else on the machine during the timed runs; above about 0.2 \
             the row is noisy (this machine has {} cores).\n",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );

        let _ = writeln!(s, "## Results\n");
        let _ =
            writeln!(s, "| benchmark | store | ours | Nix | ratio | target | result | peak RSS ours / Nix | other load |\n|---|---|---:|---:|---:|---|---|---:|---:|");
        for b in &self.benches {
            let med = |r: &Result<Samples, String>| r.as_ref().map(|x| dur(x.median())).unwrap_or_else(|_| "error".into());
            let nix = match &b.nix {
                None => "n/a".to_string(),
                Some(r) => med(r),
            };
            let ratio = b.ratio().map(|r| format!("{r:.2}x")).unwrap_or_else(|| "n/a".into());
            let target = match b.target {
                Target::Ratio(x) => format!("≥ {x}x"),
                Target::Under(d) => format!("< {}", dur(d)),
                Target::Info => "—".into(),
            };
            let result = match b.verdict() {
                Some(true) => "pass",
                Some(false) => "**FAIL**",
                None => "—",
            };
            let rss = |r: Option<u64>| r.map_or("n/a".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.2} |",
                b.title,
                b.store,
                med(&b.ours),
                nix,
                ratio,
                target,
                result,
                rss(b.ours_rss),
                rss(b.nix_rss),
                b.other_load
            );
        }
        let _ = writeln!(s);

        let _ = writeln!(s, "## Flatness: our times as the store grows\n");
        let _ = writeln!(
            s,
            "The same queries on both graph stores. Base and system are generated from the same seed, so the system \
             closure, `libmid` and the probe path are the same paths with the same answers in both; only `core` \
             has more referrers in the big store (a quarter of all paths refer to it). Flat means the big store's median is at most {FLAT_LIMIT}x \
             the small one's (for `core`, whose answer grows, time per printed path is compared instead).\n"
        );
        let labels: Vec<&str> = self.generated.iter().filter(|(_, g)| g.anchors.is_some()).map(|(l, _)| l.as_str()).collect();
        let _ = writeln!(
            s,
            "Each cell: our median, and in brackets our peak resident memory over the runs. Growth compares the largest store with the smallest.\n"
        );
        let _ = writeln!(
            s,
            "| query | {} | growth | flat? |\n|---|{}---:|---|",
            labels.join(" | "),
            labels.iter().map(|_| "---:|").collect::<String>()
        );
        for f in &self.flat {
            let cells: Vec<String> = f
                .times
                .iter()
                .map(|t| t.map_or("error".to_string(), |(d, rss)| format!("{} ({:.1} MiB)", dur(d), rss as f64 / 1024.0)))
                .collect();
            let (Some(Some((a, _))), Some(Some((b, _)))) = (f.times.first(), f.times.last()) else {
                let _ = writeln!(s, "| {} | {} | — | — |", f.title, cells.join(" | "));
                continue;
            };
            let (a, b) = (*a, *b);
            let growth = b.as_secs_f64() / a.as_secs_f64();
            let (growth_s, flat) = if f.growth == 1.0 {
                (format!("{growth:.2}x"), growth <= FLAT_LIMIT)
            } else {
                // core's referrers: a bigger answer; compare time per printed path.
                let per = growth / f.growth;
                (format!("{growth:.2}x ({per:.2}x per path)"), per <= FLAT_LIMIT)
            };
            let _ = writeln!(s, "| {} | {} | {} | {} |", f.title, cells.join(" | "), growth_s, if flat { "yes" } else { "**NO**" });
        }
        let _ = writeln!(s);

        let _ = writeln!(s, "## Generated stores\n");
        let _ = writeln!(
            s,
            "Written with the library (`nar::dump_path` into a `HashSink`, `make_fixed_output_path`, `canonicalise`, \
             `LocalStore::register` in batches of 25,000). Every object's files mention its references' store paths.\n"
        );
        let _ = writeln!(s, "| store | paths | references | NAR bytes | longest chain | write + hash | register | total |\n|---|---:|---:|---:|---:|---:|---:|---:|");
        for (label, g) in &self.generated {
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {:.1} MiB | {} | {} | {} | **{}** |",
                g.paths,
                g.references,
                g.nar_bytes as f64 / (1 << 20) as f64,
                g.depth,
                dur(g.write_time),
                dur(g.register_time),
                dur(g.total_time())
            );
        }
        let _ = writeln!(s, "\nSource tree and file for `add` written in {}.\n", dur(self.sources_time));
        for (label, g) in &self.generated {
            if let Some(a) = &g.anchors {
                let _ = writeln!(
                    s,
                    "- {label}: system closure {} paths; `core` has {} referrers; `libmid` has {}.",
                    a.system_closure, a.core_referrers, a.libmid_referrers
                );
            }
        }
        let _ = writeln!(s);

        let _ = writeln!(s, "## Details\n");
        for b in &self.benches {
            let _ =
                writeln!(s, "### {} ({}) <a id=\"{}-{}\"></a>\n", b.title, b.store, b.id, b.store.split_whitespace().next().unwrap_or(""));
            let _ = writeln!(s, "- ours: `{}`", b.ours_cmd);
            if let Some(c) = &b.nix_cmd {
                let _ = writeln!(s, "- Nix: `{c}`");
            }
            let line = |who: &str, r: &Result<Samples, String>| match r {
                Ok(x) => format!(
                    "- {who}: {} runs, min {} / median {} / max {}; CPU (user+sys) median {}",
                    x.0.len(),
                    dur(x.min()),
                    dur(x.median()),
                    dur(x.max()),
                    dur(x.cpu())
                ),
                Err(e) => format!("- {who}: error: {e}"),
            };
            let _ = writeln!(s, "{}", line("ours", &b.ours));
            if let Some(n) = &b.nix {
                let _ = writeln!(s, "{}", line("Nix", n));
            }
            let _ = writeln!(s, "- other load during the timed runs: {:.2} cores", b.other_load);
            for n in &b.notes {
                let _ = writeln!(s, "- {n}");
            }
            let _ = writeln!(s);
        }

        let _ = writeln!(s, "## Reproducing\n");
        let _ = writeln!(
            s,
            "```sh\ncargo bench --bench storebench                      # full run, about 10 minutes; rewrites BENCHMARKS.md\n\
             STOREBENCH_QUICK=1 cargo bench --bench storebench   # smoke test, under 2 minutes; writes target/<host triple>/release/storebench-quick.md\n```\n\n\
             `cargo bench` builds `overlay-store` in the bench profile (which is the release profile) and the harness \
             times that binary. Nix is found on `PATH` (`nix-store`, `nix`); without it the Nix columns are n/a. \
             Scratch stores go under `$STOREBENCH_DIR` (default: the system temp dir) and are deleted at the end \
             (`STOREBENCH_KEEP=1` keeps them). About 6 GB of scratch space is needed for a full run.\n"
        );
        let _ = writeln!(s, "{NOTES_MARKER}");
        let kept = std::fs::read_to_string(self.manifest.join("BENCHMARKS.md"))
            .ok()
            .and_then(|old| old.split_once(NOTES_MARKER).map(|(_, tail)| tail.trim_start_matches('\n').to_string()));
        match kept {
            Some(tail) if !self.quick && !tail.trim().is_empty() => {
                s.push('\n');
                s.push_str(&tail);
            }
            _ => {}
        }
        s
    }
}
