//! Unix sockets at any path length.
//!
//! `sun_path` holds 108 bytes, and state directories under `/var/lib/<service>/…` or a CI
//! workspace pass that easily. Like Nix, a long path is reached through its directory:
//! the directory is opened (`O_PATH`) and the socket named relative to it as
//! `/proc/self/fd/<fd>/<name>`, which the kernel resolves through the descriptor.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path `sun_path` takes, less its terminating NUL.
const SUN_PATH_MAX: usize = 107;

/// Binds a listening socket at `path`, however long.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    via_short_path(path, |p| UnixListener::bind(p))
}

/// Connects to the socket at `path`, however long.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    via_short_path(path, |p| UnixStream::connect(p))
}

fn via_short_path<T>(path: &Path, op: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return op(path);
    }
    let (dir, name) = split(path)?;
    let dir = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).open(&dir)?;
    let short = short_path(&dir, name);
    if short.as_os_str().len() > SUN_PATH_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket file name '{}' is longer than a Unix socket address can hold", name.to_string_lossy()),
        ));
    }
    op(&short)
}

fn split(path: &Path) -> io::Result<(PathBuf, &OsStr)> {
    let name = path
        .file_name()
        .filter(|n| !n.as_bytes().is_empty())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("'{}' does not name a socket file", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

fn short_path(dir: &File, name: &OsStr) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn binds_and_connects_past_sun_path() {
        let base = tempfile::tempdir().unwrap();
        let deep = base.path().join("a directory with spaces ü").join("x".repeat(120));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("socket");
        assert!(path.as_os_str().len() > 108);
        let listener = bind(&path).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        let t = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            c.write_all(b"hi").unwrap();
        });
        let mut s = connect(&path).unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        t.join().unwrap();
    }

    #[test]
    fn a_missing_long_directory_is_not_found() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("y".repeat(120)).join("socket");
        assert_eq!(connect(&path).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
