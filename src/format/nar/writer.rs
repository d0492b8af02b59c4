//! Writing NAR tokens, streamed: file contents pass through a fixed buffer, never a whole
//! file in memory. The walks that feed it from the file system are `store::fs::tree`.

use std::io::{self, Read, Write};

use super::padding;

const ZEROS: [u8; 8] = [0; 8];
const CHUNK: usize = 1 << 16;

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
