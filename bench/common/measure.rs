//! Measuring whole processes, shared by both benches: one timed run (wall and CPU
//! time), the runs of one command with their median, and how busy the rest of the
//! machine was meanwhile.

// Each bench uses a different part of this.
#![allow(dead_code)]

use std::time::{Duration, Instant};

fn timeval(t: libc::timeval) -> Duration {
    Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
}

/// User plus system CPU time of all waited-for children so far.
pub fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    timeval(ru.ru_utime) + timeval(ru.ru_stime)
}

/// This process's CPU time and its waited-for children's.
fn own_cpu() -> Duration {
    // SAFETY: as above.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    timeval(ru.ru_utime) + timeval(ru.ru_stime) + children_cpu()
}

/// One timed run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub wall: Duration,
    pub cpu: Duration,
}

/// Spawns `c`, waits for it with wait4(2) and returns its exit status, wall time from
/// spawn to exit, its own CPU time, and what it wrote to a piped stderr. (Not its peak
/// RSS: std spawns with vfork, so the kernel counts the bench's own RSS at exec as the
/// child's high-water mark; see `peak_rss_kib` for a measurement that is not skewed.)
pub fn run_timed(c: &mut std::process::Command) -> std::io::Result<(std::process::ExitStatus, Sample, Vec<u8>)> {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let t = Instant::now();
    let mut child = c.spawn()?;
    let reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf);
            buf
        })
    });
    let mut status = 0;
    // SAFETY: the child is ours and not yet reaped (std never waits for it: `child` is
    // only dropped afterwards, and dropping a Child does not wait).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let wall = t.elapsed();
    drop(child);
    let stderr = reader.map(|r| r.join().unwrap_or_default()).unwrap_or_default();
    let cpu = timeval(ru.ru_utime) + timeval(ru.ru_stime);
    Ok((std::process::ExitStatus::from_raw(status), Sample { wall, cpu }, stderr))
}

/// The timed runs of one command.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<Sample>);

pub fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

impl Samples {
    /// Median wall time.
    pub fn median(&self) -> Duration {
        median(self.0.iter().map(|s| s.wall).collect())
    }
    /// Median CPU time.
    pub fn cpu(&self) -> Duration {
        median(self.0.iter().map(|s| s.cpu).collect())
    }
    pub fn min(&self) -> Duration {
        self.0.iter().map(|s| s.wall).min().unwrap_or_default()
    }
    pub fn max(&self) -> Duration {
        self.0.iter().map(|s| s.wall).max().unwrap_or_default()
    }
    pub fn runs(&self) -> usize {
        self.0.len()
    }
}

/// CPU the rest of the machine used over an interval: all busy time in `/proc/stat`
/// minus this process's and its children's. Kernel threads working for us (write-back,
/// RCU callbacks of mass deletions) count as "rest", so a little is always there.
pub struct CpuMeter {
    at: Instant,
    busy: f64,
    own: Duration,
}

fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    busy as f64 / hz
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter { busy: machine_busy_secs(), own: own_cpu(), at: Instant::now() }
    }

    /// Average number of cores kept busy by others since `start`.
    pub fn other_cores(&self) -> f64 {
        let wall = self.at.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        let busy = machine_busy_secs() - self.busy;
        let own = own_cpu().saturating_sub(self.own).as_secs_f64();
        ((busy - own) / wall).max(0.0)
    }
}

/// The peak resident set (KiB) of one run of `c`, measured by GNU time (`time` package):
/// a small process of its own forks the command, so the high-water mark is the
/// command's alone. `None` without /usr/bin/time or when the run fails.
pub fn peak_rss_kib(
    program: &std::path::Path,
    args: &[std::ffi::OsString],
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    stdin: Option<&std::path::Path>,
) -> Option<u64> {
    let time = std::path::Path::new("/usr/bin/time");
    if !time.is_file() {
        return None;
    }
    let out = tempfile::NamedTempFile::new().ok()?;
    let mut c = std::process::Command::new(time);
    c.arg("-f").arg("%M").arg("-o").arg(out.path()).arg(program).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    match stdin.map(std::fs::File::open) {
        Some(Ok(f)) => c.stdin(f),
        _ => c.stdin(std::process::Stdio::null()),
    };
    let status = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().ok()?;
    if !status.success() {
        return None;
    }
    std::fs::read_to_string(out.path()).ok()?.trim().lines().last()?.trim().parse().ok()
}
