//! Running and timing whole processes: wall time from spawn to exit, CPU time (user +
//! system) from `getrusage(RUSAGE_CHILDREN)`, stdout to /dev/null, stderr to a log file
//! (read back only when the process fails), stdin from /dev/null or a file.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A command line with its environment additions and where its stdin comes from.
#[derive(Clone, Debug)]
pub struct Cmd {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub stdin: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: impl Into<PathBuf>) -> Cmd {
        Cmd { program: program.into(), args: Vec::new(), env: Vec::new(), stdin: None }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, it: I) -> Cmd {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    pub fn envs(mut self, env: &[(OsString, OsString)]) -> Cmd {
        self.env.extend(env.iter().cloned());
        self
    }

    pub fn stdin_from(mut self, file: &Path) -> Cmd {
        self.stdin = Some(file.to_path_buf());
        self
    }

    /// As a shell would show it: the program's file name, long argument lists shortened.
    pub fn display(&self) -> String {
        let mut s = self.program.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        for (i, a) in self.args.iter().enumerate() {
            if i == 3 && self.args.len() > 10 {
                s.push_str(&format!(" … ({} more arguments)", self.args.len() - 3));
                break;
            }
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        if let Some(f) = &self.stdin {
            s.push_str(&format!(" < {}", f.display()));
        }
        s
    }

    fn command(&self) -> Result<Command, String> {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        match &self.stdin {
            Some(f) => {
                c.stdin(fs::File::open(f).map_err(|e| format!("{}: {e}", f.display()))?);
            }
            None => {
                c.stdin(Stdio::null());
            }
        }
        Ok(c)
    }

    /// Runs once, untimed, capturing stdout and stderr; an error unless it exits 0.
    pub fn output(&self) -> Result<(String, String), String> {
        let out = self.command()?.output().map_err(|e| format!("{}: {e}", self.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            Ok((stdout, stderr))
        } else {
            Err(format!("`{}` failed ({}): {}", self.display(), out.status, tail(&stderr)))
        }
    }

    /// Runs once with stdout to /dev/null and stderr to `log`: wall and CPU time.
    pub fn time(&self, log: &Path) -> Result<Sample, String> {
        let mut c = self.command()?;
        let err = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        c.stdout(Stdio::null()).stderr(err);
        let (status, sample, _) = crate::measure::run_timed(&mut c).map_err(|e| format!("{}: {e}", self.display()))?;
        if status.success() {
            Ok(sample)
        } else {
            let stderr = fs::read_to_string(log).unwrap_or_default();
            Err(format!("`{}` failed ({status}): {}", self.display(), tail(&stderr)))
        }
    }
}

/// The last few lines of a program's stderr, on one line.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

pub use crate::measure::{median, CpuMeter, Sample, Samples as Series};
