//! Directory descriptors: every walk of a store tree goes through a [`Dir`], so each
//! step names one entry of a directory already open, is opened with `O_NOFOLLOW`, and is
//! judged by `fstat` of what was actually opened. A path component swapped for a symlink
//! between a look and an open makes the open fail; it never redirects a read, a mode
//! change or a delete outside the tree.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};

/// What an entry is, from `lstat` or from `fstat` of an opened descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFOs, sockets, devices: nothing a store object may contain.
    Other,
}

/// The parts of a `stat` the walks use.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
    pub nlink: u64,
    dev: u64,
    ino: u64,
}

impl Meta {
    fn of(st: &Stat) -> Meta {
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Meta { kind, mode: st.st_mode & 0o7777, size: st.st_size as u64, nlink: st.st_nlink as u64, dev: st.st_dev, ino: st.st_ino }
    }

    pub fn executable(&self) -> bool {
        self.mode & 0o100 != 0
    }

    /// The same inode as `other` (the entry was not swapped between two looks).
    pub fn same_object(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// A directory opened for walking. It remembers its path only to name it in errors.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// The error for an entry that is not what an operation needs (a symlink or FIFO where
/// a file or directory should be, or an entry swapped while it was being opened).
pub fn changed(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("'{}' is not {what} (it is another kind of file, or changed while being read)", path.display()),
    )
}

fn name_ok(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("'{}' is not a single file name", name.to_string_lossy())));
    }
    Ok(name)
}

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl Dir {
    /// Opens the directory at `path`, following symlinks in it: the caller trusts the
    /// path itself (a store directory, a state directory), not what is below it.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    /// Opens the directory that holds `path` and returns it with `path`'s last
    /// component, so the object itself is reached without following it.
    pub fn parent_of(path: &Path) -> io::Result<(Dir, OsString)> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("'{}' does not end in a file name", path.display())))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Ok((Dir::open(parent)?, name.to_os_string()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn child_path(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// This directory's own metadata.
    pub fn meta(&self) -> io::Result<Meta> {
        Ok(Meta::of(&rustix::fs::fstat(&self.fd)?))
    }

    /// `lstat` of an entry: `None` when there is no such entry.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Meta>> {
        match rustix::fs::statat(&self.fd, name_ok(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::of(&st))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a subdirectory; a symlink (or anything else) there is an error.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = rustix::fs::openat(&self.fd, name_ok(name)?, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => changed(&self.child_path(name), "a directory"),
            e => e.into(),
        })?;
        Ok(Dir { fd, path: self.child_path(name) })
    }

    /// Opens a regular file for reading. `O_NONBLOCK` keeps a FIFO planted there from
    /// blocking the open; `fstat` of the opened descriptor then refuses it.
    pub fn open_file(&self, name: &OsStr) -> io::Result<(File, Meta)> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name_ok(name)?, flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::LOOP => changed(&self.child_path(name), "a regular file"),
            e => e.into(),
        })?;
        let meta = Meta::of(&rustix::fs::fstat(&fd)?);
        if meta.kind != Kind::File {
            return Err(changed(&self.child_path(name), "a regular file"));
        }
        // Reads block normally from here on.
        rustix::fs::fcntl_setfl(&fd, rustix::fs::fcntl_getfl(&fd)? - OFlags::NONBLOCK)?;
        Ok((File::from(fd), meta))
    }

    pub fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        let target = rustix::fs::readlinkat(&self.fd, name_ok(name)?, Vec::new())?;
        Ok(OsString::from_vec(target.into_bytes()))
    }

    /// The entry names, sorted bytewise (the order NARs list them in).
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd)?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }

    /// Creates a subdirectory (it must not exist) and opens it.
    pub fn create_dir(&self, name: &OsStr, mode: u32) -> io::Result<Dir> {
        rustix::fs::mkdirat(&self.fd, name_ok(name)?, Mode::from_raw_mode(mode))?;
        self.open_dir(name)
    }

    /// Creates a new regular file for writing; an existing entry of any kind is an error.
    pub fn create_file(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(&self.fd, name_ok(name)?, flags, Mode::from_raw_mode(mode))?))
    }

    pub fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::symlinkat(target, &self.fd, name_ok(name)?)?)
    }

    /// Removes a non-directory entry (a symlink itself, never its target).
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name_ok(name)?, AtFlags::empty())?)
    }

    /// Removes an empty subdirectory.
    pub fn remove_dir(&self, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name_ok(name)?, AtFlags::REMOVEDIR)?)
    }

    pub fn rename(&self, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, name_ok(from)?, &to_dir.fd, name_ok(to)?)?)
    }

    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode))?)
    }

    /// Sets an entry's mtime (and atime) to `secs` without following a symlink.
    pub fn set_entry_mtime(&self, name: &OsStr, secs: i64) -> io::Result<()> {
        Ok(rustix::fs::utimensat(&self.fd, name_ok(name)?, &times(secs), AtFlags::SYMLINK_NOFOLLOW)?)
    }

    pub fn set_mtime(&self, secs: i64) -> io::Result<()> {
        Ok(rustix::fs::futimens(&self.fd, &times(secs))?)
    }

    /// Flushes the file system this directory is on (before a rename makes its
    /// contents visible).
    pub fn sync_fs(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&self.fd)?)
    }
}

fn times(secs: i64) -> Timestamps {
    let t = Timespec { tv_sec: secs, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

/// Sets an open file's mode and mtime.
pub fn set_file_mode_mtime(file: &File, mode: u32, secs: i64) -> io::Result<()> {
    rustix::fs::fchmod(file, Mode::from_raw_mode(mode))?;
    Ok(rustix::fs::futimens(file, &times(secs))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn opens_refuse_symlinks_where_files_and_directories_should_be() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::fs::write(t.path().join("secret"), "secret").unwrap();
        symlink(t.path().join("real"), t.path().join("dirlink")).unwrap();
        symlink(t.path().join("secret"), t.path().join("filelink")).unwrap();
        let d = Dir::open(t.path()).unwrap();
        assert!(d.open_dir(OsStr::new("dirlink")).is_err());
        assert!(d.open_file(OsStr::new("filelink")).is_err());
        assert!(d.open_dir(OsStr::new("real")).is_ok());
        assert_eq!(d.stat(OsStr::new("filelink")).unwrap().unwrap().kind, Kind::Symlink);
        assert!(d.stat(OsStr::new("missing")).unwrap().is_none());
        assert!(d.stat(OsStr::new("../x")).is_err());
        assert!(d.stat(OsStr::new("..")).is_err());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&t.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let d = Dir::open(t.path()).unwrap();
        let err = d.open_file(OsStr::new("fifo")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn entries_are_sorted_bytewise() {
        let t = tempfile::tempdir().unwrap();
        for n in ["b", "B", "a", "ä"] {
            std::fs::write(t.path().join(n), "").unwrap();
        }
        let names = Dir::open(t.path()).unwrap().entries().unwrap();
        assert_eq!(names, ["B", "a", "b", "ä"].map(OsString::from));
    }
}
