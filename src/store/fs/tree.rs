//! The walks over store trees, all on [`Dir`] descriptors: NAR dumps (alone, or copying
//! the tree as a store object in the same pass), NAR restores, removal and measuring.
//!
//! What they create is a canonical store object, as Nix leaves one: files 0444 (0555
//! when executable), directories 0555, every mtime 1, so a NAR of it is reproducible and
//! accidental writes fail.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::dir::{changed, set_file_mode_mtime, Dir, Kind};
use crate::format::nar::{NarError, NarVisitor, NarWriter};

/// Files at least this big are copied and hashed on two threads.
const PIPELINE_THRESHOLD: u64 = 8 << 20;
/// The mtime of every object in a store path.
const CANONICAL_MTIME: i64 = 1;

fn file_mode(executable: bool) -> u32 {
    if executable {
        0o555
    } else {
        0o444
    }
}

fn parent_of(path: &Path) -> io::Result<(Dir, OsString)> {
    match path.file_name() {
        Some(_) => Dir::parent_of(path),
        // `.` or `..`: name the directory by its real path instead.
        None => Dir::parent_of(&std::fs::canonicalize(path)?),
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("'{}' does not exist", path.display()))
}

fn unsupported(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("file '{}' has an unsupported type", path.display()))
}

/// Writes the NAR of `path` (not following it if it is a symlink) to `out`.
pub fn dump<W: Write>(path: &Path, out: W) -> io::Result<W> {
    let mut w = NarWriter::new(out);
    w.magic()?;
    let (parent, name) = parent_of(path)?;
    dump_entry(&mut w, &parent, &name, None, copy_plain::<W>)?;
    Ok(w.into_inner())
}

/// Writes the NAR of `src` to `out` and, in the same pass, copies `src` to `dst` (which
/// must not exist) as a canonical store object: one read of every file serves both.
pub fn dump_copying<W: Write + Send>(src: &Path, dst: &Path, out: W) -> io::Result<W> {
    let mut w = NarWriter::new(out);
    w.magic()?;
    let (parent, name) = parent_of(src)?;
    let (dst_parent, dst_name) = parent_of(dst)?;
    dump_entry(&mut w, &parent, &name, Some((&dst_parent, &dst_name)), copy_pipelined::<W>)?;
    Ok(w.into_inner())
}

/// How a big file's bytes reach both the copy and the NAR.
type CopyFile<W> = fn(&mut NarWriter<W>, bool, u64, &mut File, &mut File) -> io::Result<()>;

fn copy_plain<W: Write>(w: &mut NarWriter<W>, executable: bool, size: u64, src: &mut File, dst: &mut File) -> io::Result<()> {
    w.regular(executable, size, src, &mut |chunk| dst.write_all(chunk))
}

fn copy_pipelined<W: Write + Send>(w: &mut NarWriter<W>, executable: bool, size: u64, src: &mut File, dst: &mut File) -> io::Result<()> {
    w.regular_pipelined(executable, size, src, dst)
}

fn dump_entry<W: Write>(
    w: &mut NarWriter<W>,
    dir: &Dir,
    name: &OsStr,
    copy_to: Option<(&Dir, &OsStr)>,
    copy_big: CopyFile<W>,
) -> io::Result<()> {
    let path = || dir.child_path(name);
    let meta = dir.stat(name)?.ok_or_else(|| not_found(&path()))?;
    match meta.kind {
        Kind::File => {
            let (mut file, opened) = dir.open_file(name)?;
            if !opened.same_object(&meta) {
                return Err(changed(&path(), "the file it was a moment ago"));
            }
            let (executable, size) = (opened.executable(), opened.size);
            match copy_to {
                None => w.regular(executable, size, &mut file, &mut |_| Ok(())),
                Some((dst_dir, dst_name)) => {
                    let mut out = dst_dir.create_file(dst_name, 0o644)?;
                    if size >= PIPELINE_THRESHOLD {
                        copy_big(w, executable, size, &mut file, &mut out)?;
                    } else {
                        w.regular(executable, size, &mut file, &mut |chunk| out.write_all(chunk))?;
                    }
                    set_file_mode_mtime(&out, file_mode(executable), CANONICAL_MTIME)
                }
            }
        }
        Kind::Symlink => {
            let target = dir.read_link(name)?;
            w.symlink(target.as_bytes())?;
            if let Some((dst_dir, dst_name)) = copy_to {
                dst_dir.symlink(&target, dst_name)?;
                dst_dir.set_entry_mtime(dst_name, CANONICAL_MTIME)?;
            }
            Ok(())
        }
        Kind::Dir => {
            let sub = dir.open_dir(name)?;
            if !sub.meta()?.same_object(&meta) {
                return Err(changed(&path(), "the directory it was a moment ago"));
            }
            let dst_sub = match copy_to {
                Some((dst_dir, dst_name)) => {
                    let d = dst_dir.create_dir(dst_name, 0o755)?;
                    d.set_mode(0o755)?;
                    Some(d)
                }
                None => None,
            };
            w.strs(&["(", "type", "directory"])?;
            for entry in sub.entries()? {
                w.strs(&["entry", "(", "name"])?;
                w.str(entry.as_bytes())?;
                w.str(b"node")?;
                dump_entry(w, &sub, &entry, dst_sub.as_ref().map(|d| (d, entry.as_os_str())), copy_big)?;
                w.str(b")")?;
            }
            w.str(b")")?;
            if let Some(d) = dst_sub {
                d.set_mode(0o555)?;
                d.set_mtime(CANONICAL_MTIME)?;
            }
            Ok(())
        }
        Kind::Other => Err(unsupported(&path())),
    }
}

/// Restores a NAR into `dst` (which must not exist) as a canonical store object. On
/// error, whatever was created stays for the caller to remove: callers restore into a
/// temporary name and rename only after success.
pub fn restore<R: Read>(r: &mut R, dst: &Path) -> Result<(), NarError> {
    crate::format::nar::parse(r, &mut Restorer::new(dst.to_path_buf()))
}

/// A NAR visitor that creates the archive's objects at `root`, each entry inside the
/// descriptor of the directory just created for it.
pub struct Restorer {
    root: PathBuf,
    /// The root's parent directory and the root's name, opened at the first event.
    parent: Option<(Dir, OsString)>,
    /// The directories being filled, innermost last.
    open: Vec<Dir>,
}

fn restore_err(path: PathBuf) -> impl FnOnce(io::Error) -> NarError {
    move |source| NarError::Restore { path, source }
}

impl Restorer {
    pub fn new(root: PathBuf) -> Restorer {
        Restorer { root, parent: None, open: Vec::new() }
    }

    /// The directory to create `rel` in, and the name to give it there.
    fn place(&mut self, rel: &Path) -> Result<(&Dir, OsString), NarError> {
        if rel.as_os_str().is_empty() {
            if self.parent.is_none() {
                self.parent = Some(parent_of(&self.root).map_err(restore_err(self.root.clone()))?);
            }
            let (dir, name) = self.parent.as_ref().expect("opened above");
            return Ok((dir, name.clone()));
        }
        // The reader hands out entry names that are single components, in nesting order.
        let name = rel.file_name().expect("NAR entry names are single components").to_os_string();
        let dir = self.open.last().expect("an entry is inside a directory");
        Ok((dir, name))
    }

    fn target(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
}

impl NarVisitor for Restorer {
    fn directory(&mut self, rel: &Path) -> Result<(), NarError> {
        let target = self.target(rel);
        let (dir, name) = self.place(rel)?;
        let created = dir.create_dir(&name, 0o755).and_then(|d| d.set_mode(0o755).map(|_| d)).map_err(restore_err(target))?;
        self.open.push(created);
        Ok(())
    }

    fn directory_end(&mut self, rel: &Path) -> Result<(), NarError> {
        let dir = self.open.pop().expect("directory_end follows directory");
        dir.set_mode(0o555).and_then(|_| dir.set_mtime(CANONICAL_MTIME)).map_err(restore_err(self.target(rel)))
    }

    fn file(&mut self, rel: &Path, executable: bool, size: u64, contents: &mut dyn Read) -> Result<(), NarError> {
        let target = self.target(rel);
        let (dir, name) = self.place(rel)?;
        let mut f = dir.create_file(&name, 0o644).map_err(restore_err(target.clone()))?;
        let copied = io::copy(contents, &mut f).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                NarError::Truncated
            } else {
                NarError::Io(e)
            }
        })?;
        if copied != size {
            return Err(NarError::Truncated);
        }
        set_file_mode_mtime(&f, file_mode(executable), CANONICAL_MTIME).map_err(restore_err(target))
    }

    fn symlink(&mut self, rel: &Path, target_bytes: &[u8]) -> Result<(), NarError> {
        let target = self.target(rel);
        let (dir, name) = self.place(rel)?;
        dir.symlink(OsStr::from_bytes(target_bytes), &name)
            .and_then(|_| dir.set_entry_mtime(&name, CANONICAL_MTIME))
            .map_err(restore_err(target))
    }
}

/// Reads a regular file of at most `max` bytes, refusing a symlink, FIFO or device
/// there (a `.drv` in the store is only ever a small regular file).
pub fn read_small_file(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let (parent, name) = parent_of(path)?;
    let (file, meta) = parent.open_file(&name)?;
    if meta.size > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("'{}' is {} bytes, more than {max} expected", path.display(), meta.size),
        ));
    }
    let mut out = Vec::with_capacity(meta.size as usize);
    file.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("'{}' grew past {max} bytes while being read", path.display())));
    }
    Ok(out)
}

/// The content-address hash of a restored object: its NAR's hash (recursive) or its
/// single file's contents' hash (flat, text), with `algo`.
pub fn content_hash(path: &Path, recursive: bool, algo: crate::format::hash::HashAlgo) -> io::Result<crate::format::hash::Hash> {
    use crate::format::hash::HashSink;
    if recursive {
        return Ok(dump(path, HashSink::new(algo))?.finish().0);
    }
    let (parent, name) = parent_of(path)?;
    let (mut file, _) = parent.open_file(&name)?;
    let mut sink = HashSink::new(algo);
    io::copy(&mut file, &mut sink)?;
    Ok(sink.finish().0)
}

/// Removes `path` whatever its modes, never following a symlink, and returns what Nix
/// counts as freed: the sizes of non-directories with at most two links. A missing
/// `path` frees nothing.
pub fn remove(path: &Path) -> io::Result<u64> {
    let (parent, name) = parent_of(path)?;
    remove_entry(&parent, &name)
}

/// Removes the entry `name` of `dir`, as [`remove`].
pub fn remove_entry(dir: &Dir, name: &OsStr) -> io::Result<u64> {
    let Some(meta) = dir.stat(name)? else { return Ok(0) };
    if meta.kind == Kind::Dir {
        match dir.open_dir(name) {
            Ok(sub) => {
                if meta.mode & 0o700 != 0o700 {
                    sub.set_mode(0o755)?;
                }
                let mut bytes = 0;
                for entry in sub.entries()? {
                    bytes += remove_entry(&sub, &entry)?;
                }
                return match dir.remove_dir(name) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(bytes),
                    r => r.map(|_| bytes),
                };
            }
            // Swapped for something else since the stat: remove that thing itself.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            Err(e) => return Err(e),
        }
    }
    match dir.remove_file(name) {
        Ok(()) => Ok(if meta.nlink <= 2 && meta.kind != Kind::Dir { meta.size } else { 0 }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The bytes [`remove`] would free; unreadable parts count as nothing.
pub fn measure(path: &Path) -> u64 {
    parent_of(path).map(|(parent, name)| measure_entry(&parent, &name)).unwrap_or(0)
}

fn measure_entry(dir: &Dir, name: &OsStr) -> u64 {
    match dir.stat(name) {
        Ok(Some(meta)) if meta.kind == Kind::Dir => match dir.open_dir(name).and_then(|sub| Ok((sub.entries()?, sub))) {
            Ok((entries, sub)) => entries.iter().map(|e| measure_entry(&sub, e)).sum(),
            Err(_) => 0,
        },
        Ok(Some(meta)) if meta.nlink <= 2 => meta.size,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hash::{HashAlgo, HashSink};
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::sync::atomic::{AtomicBool, Ordering};

    pub fn fixture_dir(base: &Path) -> PathBuf {
        let d = base.join("dir");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("a.txt"), "hello\n").unwrap();
        symlink("a.txt", d.join("link")).unwrap();
        fs::write(d.join("sub/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(d.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn sink_of(path: &Path) -> (String, u64) {
        let (h, n) = dump(path, HashSink::new(HashAlgo::Sha256)).unwrap().finish();
        (h.to_base16(), n)
    }

    #[test]
    fn hello_txt_bytes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("hello.txt");
        fs::write(&p, "hello\n").unwrap();
        let nar = dump(&p, Vec::new()).unwrap();
        assert_eq!(nar.len(), 120);
        assert_eq!(&nar[8..21], b"nix-archive-1");
        assert_eq!(sink_of(&p), ("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13".into(), 120));
    }

    #[test]
    fn vectors_from_nix() {
        let t = tempfile::tempdir().unwrap();
        let empty = t.path().join("empty");
        fs::write(&empty, "").unwrap();
        assert_eq!(sink_of(&empty), ("77ac62e2629d8e45f624589c0c8bf99e24b3a722349bf1e79bc186008534e246".into(), 112));
        let dir = t.path().join("emptydir");
        fs::create_dir(&dir).unwrap();
        assert_eq!(sink_of(&dir), ("a50a5ab6d992f5598edd92105059fae9acfc192981e08bd88534c2167e92526a".into(), 96));
        let link = t.path().join("link");
        symlink("/nix/store/foo", &link).unwrap();
        assert_eq!(sink_of(&link), ("3a2f661cd7f68c99dfbcf9ff2dba34001f2ea2d56cf17159d1522e24ca9838a3".into(), 128));
        let exe = t.path().join("exe.sh");
        fs::write(&exe, "hi\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(sink_of(&exe), ("b55bce1ab38788765364491154df0c575a4959c247abcd0d2d24a6dba4b10da7".into(), 152));
        let d = fixture_dir(t.path());
        assert_eq!(sink_of(&d), ("ab9e600c5a3d4f86783075f9ca16467e51d69a2780c8b8db76a21de48960d4fc".into(), 888));
    }

    #[test]
    fn copying_gives_same_nar_and_canonical_copy() {
        let t = tempfile::tempdir().unwrap();
        let d = fixture_dir(t.path());
        let dst = t.path().join("copy");
        let nar = dump_copying(&d, &dst, Vec::new()).unwrap();
        assert_eq!(nar, dump(&d, Vec::new()).unwrap());
        assert_eq!(dump(&dst, Vec::new()).unwrap(), nar);
        let m = fs::metadata(dst.join("sub/run.sh")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o555);
        assert_eq!(m.mtime(), 1);
        assert_eq!(fs::metadata(dst.join("a.txt")).unwrap().mode() & 0o777, 0o444);
        assert_eq!(fs::metadata(&dst).unwrap().mode() & 0o777, 0o555);
        assert_eq!(fs::symlink_metadata(dst.join("link")).unwrap().mtime(), 1);
    }

    #[test]
    fn restore_round_trips_and_canonicalises() {
        let t = tempfile::tempdir().unwrap();
        let d = fixture_dir(t.path());
        let nar = dump(&d, Vec::new()).unwrap();
        let out = t.path().join("out");
        restore(&mut &nar[..], &out).unwrap();
        assert_eq!(dump(&out, Vec::new()).unwrap(), nar);
        assert_eq!(fs::metadata(out.join("sub")).unwrap().mode() & 0o777, 0o555);
        assert_eq!(fs::metadata(out.join("sub")).unwrap().mtime(), 1);
        // The target exists now: a second restore must not write into it.
        assert!(restore(&mut &nar[..], &out).is_err());
    }

    #[test]
    fn a_fifo_in_a_tree_is_an_error_not_a_hang() {
        let t = tempfile::tempdir().unwrap();
        let d = fixture_dir(t.path());
        nix::unistd::mkfifo(&d.join("sub/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = dump(&d, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("unsupported type"), "{err}");
    }

    #[test]
    fn remove_counts_like_nix_and_never_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "keep").unwrap();
        let d = fixture_dir(t.path());
        symlink(&outside, d.join("sub/to-outside")).unwrap();
        // Read-only like a store path.
        let copy = t.path().join("copy");
        dump_copying(&d, &copy, io::sink()).unwrap();
        assert_eq!(measure(&copy), 6 + 18 + 5 + outside.as_os_str().len() as u64);
        assert_eq!(remove(&copy).unwrap(), 6 + 18 + 5 + outside.as_os_str().len() as u64);
        assert!(!copy.exists());
        assert!(outside.join("keep").exists());
        assert_eq!(remove(&copy).unwrap(), 0);
    }

    /// Swaps `a` and `b` atomically (`RENAME_EXCHANGE`) until told to stop or one is gone.
    fn keep_swapping(a: &Path, b: &Path, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            if rustix::fs::renameat_with(rustix::fs::CWD, a, rustix::fs::CWD, b, rustix::fs::RenameFlags::EXCHANGE).is_err() {
                return;
            }
        }
    }

    /// A directory inside a tree is swapped, over and over, with a symlink to a directory
    /// outside it while the tree is dumped: no dump ever contains the outside's bytes.
    /// (A path-based walk leaks here in about one dump in twenty: lstat says
    /// "directory", then opendir follows the link swapped in meanwhile.)
    #[test]
    fn a_directory_swapped_for_a_symlink_never_leaks_into_a_dump() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "TOP-SECRET-BYTES").unwrap();
        let obj = t.path().join("obj");
        fs::create_dir_all(obj.join("sub")).unwrap();
        fs::write(obj.join("sub/f"), "harmless").unwrap();
        symlink(&outside, obj.join("sub-link")).unwrap();
        let stop = AtomicBool::new(false);
        let mut dumped = 0;
        std::thread::scope(|s| {
            s.spawn(|| keep_swapping(&obj.join("sub"), &obj.join("sub-link"), &stop));
            for _ in 0..2000 {
                if let Ok(nar) = dump(&obj, Vec::new()) {
                    dumped += 1;
                    assert!(!nar.windows(16).any(|w| w == b"TOP-SECRET-BYTES"), "a dump read outside the tree");
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(dumped > 0, "some dumps must succeed for the test to mean anything");
    }

    /// The same attack on removal: the outside file survives every round.
    #[test]
    fn a_directory_swapped_for_a_symlink_never_leads_a_removal_outside() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        for round in 0..300 {
            fs::write(outside.join("keep"), "keep").unwrap();
            let obj = t.path().join(format!("obj{round}"));
            fs::create_dir_all(obj.join("sub")).unwrap();
            fs::write(obj.join("sub/f"), "harmless").unwrap();
            symlink(&outside, obj.join("sub-link")).unwrap();
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| keep_swapping(&obj.join("sub"), &obj.join("sub-link"), &stop));
                for _ in 0..20 {
                    let _ = remove(&obj.join("sub"));
                }
                stop.store(true, Ordering::Relaxed);
            });
            let _ = remove(&obj);
            assert!(outside.join("keep").exists(), "round {round}: a removal reached outside the tree");
        }
    }
}

#[cfg(test)]
pub(crate) fn tests_fixture(base: &Path) -> PathBuf {
    tests::fixture_dir(base)
}
