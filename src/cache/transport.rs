//! Getting and putting a cache's files: a local directory or HTTP(S).
//!
//! Every read is bounded (a server that sends gigabytes where a narinfo belongs is an
//! error, not a full disk or memory) and every HTTP read times out when the server
//! stalls. Files are put under a temporary name and renamed, so a reader never sees a
//! half-written narinfo or NAR.

use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::{CacheError, CacheUrl, Location, Result};

#[derive(Debug, Clone, Copy)]
pub struct TransportOptions {
    /// Seconds without progress before a request fails.
    pub stall_timeout_secs: u64,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions { stall_timeout_secs: 300 }
    }
}

const MORE_THAN_ANNOUNCED: &str = "more data than the cache announced";

pub struct Transport {
    url: CacheUrl,
    agent: Option<ureq::Agent>,
}

/// Why a get failed: whether trying again may help (a dropped connection, a 5xx).
#[derive(Debug)]
pub struct FetchFailure {
    pub transient: bool,
    pub what: String,
}

impl Transport {
    pub fn new(url: CacheUrl, opts: TransportOptions) -> Transport {
        let agent = matches!(url.location, Location::Http(_)).then(|| {
            let stall = Some(Duration::from_secs(opts.stall_timeout_secs));
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(Duration::from_secs(opts.stall_timeout_secs.min(30))))
                .timeout_recv_response(stall)
                .timeout_per_read(stall)
                .timeout_per_write(stall)
                .user_agent(concat!("overlay-store/", env!("CARGO_PKG_VERSION")))
                .build();
            ureq::Agent::new_with_config(config)
        });
        Transport { url, agent }
    }

    pub fn url(&self) -> &CacheUrl {
        &self.url
    }

    /// The file at `key` (relative to the cache's root), at most `max` bytes of it (more
    /// is an error when read); `None` when the cache does not have it.
    pub fn get(&self, key: &str, max: u64) -> std::result::Result<Option<Box<dyn Read + Send>>, FetchFailure> {
        let permanent = |what: String| FetchFailure { transient: false, what };
        match &self.url.location {
            Location::Dir(dir) => {
                let path = dir.join(key);
                // O_NONBLOCK: a FIFO put in the cache must not block the open.
                use std::os::unix::fs::OpenOptionsExt;
                let file = match fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(permanent(format!("'{}': {e}", path.display()))),
                };
                let meta = file.metadata().map_err(|e| permanent(format!("'{}': {e}", path.display())))?;
                if !meta.is_file() {
                    return Err(permanent(format!("'{}' is not a regular file", path.display())));
                }
                Ok(Some(Box::new(Bounded { inner: file, left: max, what: MORE_THAN_ANNOUNCED })))
            }
            Location::Http(base) => {
                let url = format!("{base}/{key}");
                let agent = self.agent.as_ref().expect("an HTTP cache has an agent");
                let resp = agent.get(&url).call().map_err(|e| FetchFailure { transient: true, what: e.to_string() })?;
                let status = resp.status().as_u16();
                match status {
                    200..=299 => {}
                    404 | 403 | 410 => return Ok(None),
                    _ => return Err(FetchFailure { transient: status >= 500 || status == 429, what: format!("HTTP status {status}") }),
                }
                if let Some(len) = resp.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
                    if len > max {
                        return Err(permanent(format!("the server announces {len} bytes, more than the {max} expected")));
                    }
                }
                let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
                Ok(Some(Box::new(Bounded { inner: reader, left: max, what: MORE_THAN_ANNOUNCED })))
            }
        }
    }

    /// The whole file at `key` as text (narinfos, `nix-cache-info`).
    pub fn get_text(&self, key: &str, max: u64) -> std::result::Result<Option<String>, FetchFailure> {
        let Some(mut r) = self.get(key, max)? else { return Ok(None) };
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).map_err(|e| FetchFailure { transient: e.kind() != io::ErrorKind::InvalidData, what: e.to_string() })?;
        String::from_utf8(buf).map(Some).map_err(|_| FetchFailure { transient: false, what: "not UTF-8 text".into() })
    }

    pub fn exists(&self, key: &str) -> Result<bool> {
        match &self.url.location {
            Location::Dir(dir) => Ok(fs::symlink_metadata(dir.join(key)).is_ok()),
            Location::Http(_) => self.get(key, 1 << 20).map(|r| r.is_some()).map_err(|f| self.fetch_error(key, f)),
        }
    }

    /// Writes `data` as the file `key`, atomically (temporary name, then rename). Over
    /// HTTP it is a PUT, as Nix's HTTP binary cache store does.
    pub fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let err = |what: String| CacheError::Write { cache: self.url.base.clone(), key: key.to_string(), what };
        match &self.url.location {
            Location::Dir(dir) => {
                let dest = dir.join(key);
                let parent = dest.parent().map(PathBuf::from).unwrap_or_else(|| dir.clone());
                fs::create_dir_all(&parent).map_err(|e| err(format!("'{}': {e}", parent.display())))?;
                let mut tmp = tempfile_in(&parent).map_err(|e| err(format!("'{}': {e}", parent.display())))?;
                if let Err(e) = tmp.1.write_all(data).and_then(|_| tmp.1.sync_data()) {
                    let _ = fs::remove_file(&tmp.0);
                    return Err(err(format!("'{}': {e}", tmp.0.display())));
                }
                set_readable(&tmp.1);
                fs::rename(&tmp.0, &dest).map_err(|e| {
                    let _ = fs::remove_file(&tmp.0);
                    err(format!("'{}': {e}", dest.display()))
                })
            }
            Location::Http(base) => {
                let agent = self.agent.as_ref().expect("an HTTP cache has an agent");
                let resp = agent.put(&format!("{base}/{key}")).send(data).map_err(|e| err(e.to_string()))?;
                match resp.status().as_u16() {
                    200..=299 => Ok(()),
                    s => Err(err(format!("HTTP status {s}"))),
                }
            }
        }
    }

    /// Moves a finished local file into the cache as `key` (for NARs written to disk as
    /// they are compressed); over HTTP the file is uploaded.
    pub fn put_file(&self, key: &str, file: &std::path::Path) -> Result<()> {
        let err = |what: String| CacheError::Write { cache: self.url.base.clone(), key: key.to_string(), what };
        match &self.url.location {
            Location::Dir(dir) => {
                let dest = dir.join(key);
                fs::rename(file, &dest).map_err(|e| err(format!("'{}': {e}", dest.display())))
            }
            Location::Http(base) => {
                // Streamed from the file, so a big NAR is never held in memory.
                let agent = self.agent.as_ref().expect("an HTTP cache has an agent");
                let r = fs::File::open(file)
                    .map_err(|e| err(format!("'{}': {e}", file.display())))
                    .and_then(|f| agent.put(&format!("{base}/{key}")).send(f).map_err(|e| err(e.to_string())))
                    .and_then(|resp| match resp.status().as_u16() {
                        200..=299 => Ok(()),
                        s => Err(err(format!("HTTP status {s}"))),
                    });
                let _ = fs::remove_file(file);
                r
            }
        }
    }

    /// A scratch file for `put_file`: in the cache's `nar/` directory when local (so the
    /// rename stays on one file system), else in the system's temporary directory.
    pub fn scratch_file(&self) -> Result<(PathBuf, fs::File)> {
        let dir = match &self.url.location {
            Location::Dir(dir) => dir.join("nar"),
            Location::Http(_) => std::env::temp_dir(),
        };
        let err = |e: io::Error| CacheError::Write {
            cache: self.url.base.clone(),
            key: "nar/".into(),
            what: format!("'{}': {e}", dir.display()),
        };
        fs::create_dir_all(&dir).map_err(err)?;
        tempfile_in(&dir).map_err(err)
    }

    pub fn fetch_error(&self, key: &str, f: FetchFailure) -> CacheError {
        CacheError::Fetch { cache: self.url.base.clone(), key: key.to_string(), what: f.what }
    }
}

/// A new file `.tmp-<random>` in `dir`, created exclusively.
fn tempfile_in(dir: &std::path::Path) -> io::Result<(PathBuf, fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!(".tmp-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let path = dir.join(name);
        match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Cache files are world-readable, as a web server serving them needs.
pub(super) fn set_readable(f: &fs::File) {
    use std::os::unix::fs::PermissionsExt;
    let _ = f.set_permissions(fs::Permissions::from_mode(0o644));
}

/// A reader that fails (`InvalidData`, saying `what`) instead of reading past `left` bytes.
pub(super) struct Bounded<R> {
    pub(super) inner: R,
    pub(super) left: u64,
    pub(super) what: &'static str,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(self.left.saturating_add(1).min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::new(io::ErrorKind::InvalidData, self.what));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_reads_fail_past_their_limit() {
        let mut ok = Bounded { inner: &b"12345"[..], left: 5, what: MORE_THAN_ANNOUNCED };
        let mut s = Vec::new();
        ok.read_to_end(&mut s).unwrap();
        assert_eq!(s, b"12345");
        let mut over = Bounded { inner: &b"123456"[..], left: 5, what: MORE_THAN_ANNOUNCED };
        let e = over.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_directory_cache_puts_atomically_and_gets_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let t = Transport::new(CacheUrl::parse(dir.path().to_str().unwrap()).unwrap(), TransportOptions::default());
        t.put("nar/x.nar", b"hello").unwrap();
        assert!(t.exists("nar/x.nar").unwrap());
        assert_eq!(t.get_text("nar/x.nar", 5).unwrap().unwrap(), "hello");
        assert!(t.get_text("nar/x.nar", 4).is_err());
        assert!(t.get("nope", 10).unwrap().is_none());
        assert_eq!(fs::read_dir(dir.path().join("nar")).unwrap().count(), 1, "no temporary file is left");
    }
}
