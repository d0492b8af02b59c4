//! The compressions of NAR files in binary caches, by the names narinfos and cache URLs
//! use, as streaming decoders and encoders.

use std::io::{self, Read, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
}

impl Compression {
    /// The `Compression:` value or `compression=` parameter; `None` for one we lack.
    pub fn parse(name: &str) -> Option<Compression> {
        match name {
            "none" | "" => Some(Compression::None),
            "xz" => Some(Compression::Xz),
            "zstd" => Some(Compression::Zstd),
            "bzip2" => Some(Compression::Bzip2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        }
    }

    /// What Nix appends to `nar/<filehash>.nar`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
            Compression::Bzip2 => ".bz2",
        }
    }

    pub fn decoder<'r>(self, input: Box<dyn Read + Send + 'r>) -> io::Result<Box<dyn Read + Send + 'r>> {
        Ok(match self {
            Compression::None => input,
            Compression::Xz => Box::new(liblzma::read::XzDecoder::new(input)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
            Compression::Bzip2 => Box::new(bzip2::read::BzDecoder::new(input)),
        })
    }

    /// An encoder into `out`; `finish` must be called to flush its last block.
    pub fn encoder<'w, W: Write + Send + 'w>(self, out: W) -> io::Result<Encoder<'w, W>> {
        Ok(match self {
            Compression::None => Encoder::Plain(out),
            // Nix's default xz preset is 6; zstd's and bzip2's defaults are Nix's too.
            Compression::Xz => Encoder::Xz(liblzma::write::XzEncoder::new(out, 6)),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(out, 3)?),
            Compression::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(out, bzip2::Compression::best())),
        })
    }
}

pub enum Encoder<'w, W: Write> {
    Plain(W),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'w, W>),
    Bzip2(bzip2::write::BzEncoder<W>),
}

impl<W: Write> Encoder<'_, W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Bzip2(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Bzip2(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Bzip2(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compression_round_trips_and_names_itself() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for c in [Compression::None, Compression::Xz, Compression::Zstd, Compression::Bzip2] {
            assert_eq!(Compression::parse(c.name()), Some(c));
            let mut enc = c.encoder(Vec::new()).unwrap();
            enc.write_all(&data).unwrap();
            let packed = enc.finish().unwrap();
            let mut out = Vec::new();
            c.decoder(Box::new(&packed[..])).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{}", c.name());
        }
        assert_eq!(Compression::parse("br"), None);
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        for c in [Compression::Xz, Compression::Zstd, Compression::Bzip2] {
            let mut out = Vec::new();
            let r = c.decoder(Box::new(&b"definitely not compressed data"[..])).and_then(|mut d| d.read_to_end(&mut out));
            assert!(r.is_err(), "{}", c.name());
        }
    }
}
