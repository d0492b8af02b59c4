//! Timing whole processes: wall time from spawn to exit, stdout to /dev/null (or
//! captured for the untimed checking run), median of several runs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A command line to run, with its environment additions.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// A file on stdin (else /dev/null).
    pub stdin: Option<PathBuf>,
}

impl Invocation {
    pub fn new(program: impl Into<PathBuf>) -> Invocation {
        Invocation { program: program.into(), args: Vec::new(), env: Vec::new(), stdin: None }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Invocation {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, it: I) -> Invocation {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    /// Peak RSS (KiB) of one untimed run.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        crate::measure::peak_rss_kib(&self.program, &self.args, &self.env, self.stdin.as_deref())
    }

    pub fn stdin_from(mut self, file: &std::path::Path) -> Invocation {
        self.stdin = Some(file.to_path_buf());
        self
    }

    /// The command as a shell would show it, with the program's file name only.
    pub fn display(&self) -> String {
        let prog = self.program.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        let mut s = prog;
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        match self.stdin.as_ref().map(std::fs::File::open) {
            Some(Ok(f)) => c.stdin(f),
            _ => c.stdin(Stdio::null()),
        };
        c
    }

    /// Runs once, capturing stdout and stderr; an error unless it exits 0.
    pub fn output(&self) -> Result<Output, String> {
        let out = self.command().output().map_err(|e| format!("{}: {e}", self.display()))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(failure(self, &out))
        }
    }

    /// Runs once with stdout to /dev/null: the wall time from spawn to exit, and the
    /// CPU time (user + system) the process used.
    pub fn time(&self) -> Result<Sample, String> {
        let mut c = self.command();
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let (status, sample, stderr) = run_timed(&mut c).map_err(|e| format!("{}: {e}", self.display()))?;
        if status.success() {
            Ok(sample)
        } else {
            Err(failure(self, &Output { status, stdout: Vec::new(), stderr }))
        }
    }
}

fn failure(inv: &Invocation, out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(5).collect();
    format!("`{}` failed ({}): {}", inv.display(), out.status, tail.into_iter().rev().collect::<Vec<_>>().join(" / "))
}

pub use crate::measure::{run_timed, Sample, Samples};

/// Which program a run is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Ours,
    Nix,
}

/// Times `ours` and `nix` `runs` times each, interleaved (ours first on even runs, Nix
/// first on odd ones) so drift in the machine hits both alike. `before` runs untimed
/// before every timed run (to reset state); its error ends that side's series.
pub fn interleaved(
    ours: &Invocation,
    nix: Option<&Invocation>,
    runs: usize,
    before: &mut dyn FnMut(Side) -> Result<(), String>,
) -> (Result<Samples, String>, Option<Result<Samples, String>>) {
    let mut o: Result<Samples, String> = Ok(Samples::default());
    let mut n: Option<Result<Samples, String>> = nix.map(|_| Ok(Samples::default()));
    for run in 0..runs {
        let order = if run % 2 == 0 { [Side::Ours, Side::Nix] } else { [Side::Nix, Side::Ours] };
        for side in order {
            let (inv, acc) = match side {
                Side::Ours => (ours, &mut o),
                Side::Nix => match (nix, n.as_mut()) {
                    (Some(inv), Some(acc)) => (inv, acc),
                    _ => continue,
                },
            };
            let Ok(samples) = acc else { continue };
            let t = before(side).and_then(|()| inv.time());
            match t {
                Ok(d) => samples.0.push(d),
                Err(e) => *acc = Err(e),
            }
        }
    }
    (o, n)
}

pub use crate::measure::CpuMeter;
