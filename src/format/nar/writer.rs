//! Writing NARs from the file system, streamed: file contents pass through a fixed
//! buffer, never a whole file in memory.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::padding;

const ZEROS: [u8; 8] = [0; 8];
const CHUNK: usize = 1 << 16;
/// Files at least this big are copied and hashed on two threads.
const PIPELINE_THRESHOLD: u64 = 8 << 20;

/// Emits NAR tokens to any writer.
pub struct NarWriter<W: Write> {
    out: W,
}

impl<W: Write> NarWriter<W> {
    pub fn new(out: W) -> Self {
        NarWriter { out }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn str(&mut self, s: &[u8]) -> io::Result<()> {
        self.out.write_all(&(s.len() as u64).to_le_bytes())?;
        self.out.write_all(s)?;
        self.out.write_all(&ZEROS[..padding(s.len() as u64)])
    }

    pub fn strs(&mut self, tokens: &[&str]) -> io::Result<()> {
        tokens.iter().try_for_each(|t| self.str(t.as_bytes()))
    }

    pub fn magic(&mut self) -> io::Result<()> {
        self.str(super::MAGIC.as_bytes())
    }

    /// Writes a regular file node whose contents come from `data` (exactly `size` bytes).
    /// Each chunk is also handed to `also`, so a caller can copy while hashing.
    pub fn regular(
        &mut self,
        executable: bool,
        size: u64,
        data: &mut dyn Read,
        also: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.strs(&["(", "type", "regular"])?;
        if executable {
            self.strs(&["executable", ""])?;
        }
        self.str(b"contents")?;
        self.out.write_all(&size.to_le_bytes())?;
        let mut buf = vec![0u8; CHUNK.min(size.max(1) as usize)];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = data.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was being read"));
            }
            self.out.write_all(&buf[..n])?;
            also(&buf[..n])?;
            left -= n as u64;
        }
        self.out.write_all(&ZEROS[..padding(size)])?;
        self.str(b")")
    }

    /// Like `regular`, copying the contents to `copy` on this thread while another
    /// thread feeds the same bytes to the NAR writer (the hash): each byte is read once,
    /// and hashing overlaps the copy.
    pub fn regular_pipelined(&mut self, executable: bool, size: u64, data: &mut dyn Read, copy: &mut dyn Write) -> io::Result<()>
    where
        W: Send,
    {
        use std::sync::mpsc::sync_channel;
        self.strs(&["(", "type", "regular"])?;
        if executable {
            self.strs(&["executable", ""])?;
        }
        self.str(b"contents")?;
        self.out.write_all(&size.to_le_bytes())?;
        let out = &mut self.out;
        let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(4);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(4);
        for _ in 0..4 {
            empty_tx.send(vec![0u8; CHUNK]).expect("room for four buffers");
        }
        let hashed = std::thread::scope(|scope| {
            let hasher = scope.spawn(move || -> io::Result<()> {
                for (buf, n) in full_rx {
                    out.write_all(&buf[..n])?;
                    let _ = empty_tx.send(buf);
                }
                Ok(())
            });
            let mut left = size;
            let result = (|| -> io::Result<()> {
                while left > 0 {
                    let mut buf = empty_rx.recv().map_err(|_| io::Error::other("the hashing thread stopped"))?;
                    let want = buf.len().min(left as usize);
                    let n = data.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while it was being read"));
                    }
                    copy.write_all(&buf[..n])?;
                    left -= n as u64;
                    full_tx.send((buf, n)).map_err(|_| io::Error::other("the hashing thread stopped"))?;
                }
                Ok(())
            })();
            drop(full_tx);
            let h = hasher.join().map_err(|_| io::Error::other("the hashing thread panicked"))?;
            result.and(h)
        });
        hashed?;
        self.out.write_all(&ZEROS[..padding(size)])?;
        self.str(b")")
    }

    pub fn symlink(&mut self, target: &[u8]) -> io::Result<()> {
        self.strs(&["(", "type", "symlink", "target"])?;
        self.str(target)?;
        self.str(b")")
    }
}

/// Writes the NAR of `path` (not following a top-level symlink) to `out`.
pub fn dump_path<W: Write>(path: &Path, out: W) -> io::Result<W> {
    let mut w = NarWriter::new(out);
    w.magic()?;
    dump_node(&mut w, path, None, copy_plain::<W>)?;
    Ok(w.into_inner())
}

/// Writes the NAR of `src` to `out` and, in the same pass, copies `src` to `dst`
/// canonicalised as a store object (modes 0444/0555, mtime 1). One read of every file
/// serves both the hash and the copy.
pub fn dump_path_copying<W: Write + Send>(src: &Path, dst: &Path, out: W) -> io::Result<W> {
    let mut w = NarWriter::new(out);
    w.magic()?;
    dump_node(&mut w, src, Some(dst), copy_pipelined::<W>)?;
    Ok(w.into_inner())
}

fn unsupported(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("file '{}' has an unsupported type", path.display()))
}

/// How a big file's bytes reach both the copy and the NAR.
type CopyFile<W> = fn(&mut NarWriter<W>, bool, u64, &mut fs::File, &mut fs::File) -> io::Result<()>;

fn copy_plain<W: Write>(w: &mut NarWriter<W>, executable: bool, size: u64, src: &mut fs::File, dst: &mut fs::File) -> io::Result<()> {
    w.regular(executable, size, src, &mut |chunk| dst.write_all(chunk))
}

fn copy_pipelined<W: Write + Send>(
    w: &mut NarWriter<W>,
    executable: bool,
    size: u64,
    src: &mut fs::File,
    dst: &mut fs::File,
) -> io::Result<()> {
    w.regular_pipelined(executable, size, src, dst)
}

fn dump_node<W: Write>(w: &mut NarWriter<W>, path: &Path, copy_to: Option<&Path>, copy_big: CopyFile<W>) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    if ft.is_file() {
        let executable = meta.mode() & 0o100 != 0;
        let mut file = fs::File::open(path)?;
        match copy_to {
            None => w.regular(executable, meta.len(), &mut file, &mut |_| Ok(())),
            Some(dst) => {
                let mut out = fs::OpenOptions::new().write(true).create_new(true).open(dst)?;
                if meta.len() >= PIPELINE_THRESHOLD {
                    copy_big(w, executable, meta.len(), &mut file, &mut out)?;
                } else {
                    w.regular(executable, meta.len(), &mut file, &mut |chunk| out.write_all(chunk))?;
                }
                drop(out);
                crate::store::local::canonicalise::canonicalise_file(dst, executable)
            }
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(path)?;
        w.symlink(target.as_os_str().as_bytes())?;
        if let Some(dst) = copy_to {
            std::os::unix::fs::symlink(&target, dst)?;
            crate::store::local::canonicalise::canonicalise_symlink(dst)?;
        }
        Ok(())
    } else if ft.is_dir() {
        if let Some(dst) = copy_to {
            fs::create_dir(dst)?;
            fs::set_permissions(dst, fs::Permissions::from_mode(0o755))?;
        }
        w.strs(&["(", "type", "directory"])?;
        let mut entries: Vec<_> = fs::read_dir(path)?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
        entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in entries {
            w.strs(&["entry", "(", "name"])?;
            w.str(name.as_bytes())?;
            w.str(b"node")?;
            let child_dst = copy_to.map(|d| d.join(&name));
            dump_node(w, &path.join(&name), child_dst.as_deref(), copy_big)?;
            w.str(b")")?;
        }
        w.str(b")")?;
        if let Some(dst) = copy_to {
            crate::store::local::canonicalise::canonicalise_dir(dst)?;
        }
        Ok(())
    } else {
        Err(unsupported(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hash::{HashAlgo, HashSink};

    fn nar_of(path: &Path) -> Vec<u8> {
        dump_path(path, Vec::new()).unwrap()
    }

    fn sink_of(path: &Path) -> (String, u64) {
        let (h, n) = dump_path(path, HashSink::new(HashAlgo::Sha256)).unwrap().finish();
        (h.to_base16(), n)
    }

    #[test]
    fn hello_txt_bytes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("hello.txt");
        fs::write(&p, "hello\n").unwrap();
        let nar = nar_of(&p);
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
        std::os::unix::fs::symlink("/nix/store/foo", &link).unwrap();
        assert_eq!(sink_of(&link), ("3a2f661cd7f68c99dfbcf9ff2dba34001f2ea2d56cf17159d1522e24ca9838a3".into(), 128));
        let exe = t.path().join("exe.sh");
        fs::write(&exe, "hi\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(sink_of(&exe), ("b55bce1ab38788765364491154df0c575a4959c247abcd0d2d24a6dba4b10da7".into(), 152));
        let d = fixture_dir(t.path());
        assert_eq!(sink_of(&d), ("ab9e600c5a3d4f86783075f9ca16467e51d69a2780c8b8db76a21de48960d4fc".into(), 888));
    }

    pub fn fixture_dir(base: &Path) -> std::path::PathBuf {
        let d = base.join("dir");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("a.txt"), "hello\n").unwrap();
        std::os::unix::fs::symlink("a.txt", d.join("link")).unwrap();
        fs::write(d.join("sub/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(d.join("sub/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn copying_gives_same_nar_and_canonical_copy() {
        let t = tempfile::tempdir().unwrap();
        let d = fixture_dir(t.path());
        let dst = t.path().join("copy");
        let nar = dump_path_copying(&d, &dst, Vec::new()).unwrap();
        assert_eq!(nar, nar_of(&d));
        assert_eq!(nar_of(&dst), nar);
        let m = fs::metadata(dst.join("sub/run.sh")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o555);
        assert_eq!(m.mtime(), 1);
        assert_eq!(fs::metadata(dst.join("a.txt")).unwrap().mode() & 0o777, 0o444);
        assert_eq!(fs::metadata(&dst).unwrap().mode() & 0o777, 0o555);
    }
}

#[cfg(test)]
pub(crate) fn tests_fixture(base: &Path) -> std::path::PathBuf {
    tests::fixture_dir(base)
}
