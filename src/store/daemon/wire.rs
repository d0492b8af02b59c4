//! The framing of the Nix worker protocol, read strictly: every integer is a u64
//! little-endian, every string a length, its bytes and zero padding to 8; lengths and
//! counts are bounded, so a broken or hostile peer (a daemon we query, a client we
//! serve) gives an error, never a huge allocation or a hang (reads time out).

use std::io::{self, Read, Write};

/// Longest string accepted from the peer (log lines and error messages included).
pub const MAX_STRING: u64 = 1 << 20;
/// Most items accepted in one set, list or map.
pub const MAX_ITEMS: u64 = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the other side closed the connection")]
    Closed,
    #[error("the other side did not answer within the read timeout")]
    Timeout,
    #[error("malformed worker protocol data: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

pub fn map_io(e: io::Error) -> WireError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => WireError::Closed,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => WireError::Timeout,
        _ => WireError::Io(e),
    }
}

pub fn read_u64(r: &mut impl Read) -> Result<u64, WireError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(map_io)?;
    Ok(u64::from_le_bytes(b))
}

pub fn read_bool(r: &mut impl Read) -> Result<bool, WireError> {
    match read_u64(r)? {
        0 => Ok(false),
        1 => Ok(true),
        n => Err(WireError::Malformed(format!("expected a boolean, got {n}"))),
    }
}

pub fn read_bytes(r: &mut impl Read, max: u64) -> Result<Vec<u8>, WireError> {
    let len = read_u64(r)?;
    if len > max {
        return Err(WireError::Malformed(format!("a string of {len} bytes (at most {max} expected)")));
    }
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v).map_err(map_io)?;
    let pad = ((8 - len % 8) % 8) as usize;
    let mut p = [0u8; 8];
    r.read_exact(&mut p[..pad]).map_err(map_io)?;
    if p[..pad].iter().any(|&b| b != 0) {
        return Err(WireError::Malformed("non-zero padding".into()));
    }
    Ok(v)
}

pub fn read_string(r: &mut impl Read) -> Result<String, WireError> {
    String::from_utf8(read_bytes(r, MAX_STRING)?).map_err(|_| WireError::Malformed("a string that is not UTF-8".into()))
}

pub fn read_count(r: &mut impl Read) -> Result<u64, WireError> {
    let n = read_u64(r)?;
    if n > MAX_ITEMS {
        return Err(WireError::Malformed(format!("a list of {n} items")));
    }
    Ok(n)
}

pub fn read_strings(r: &mut impl Read) -> Result<Vec<String>, WireError> {
    let n = read_count(r)?;
    (0..n).map(|_| read_string(r)).collect()
}

pub fn write_u64(w: &mut impl Write, n: u64) -> io::Result<()> {
    w.write_all(&n.to_le_bytes())
}

pub fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    write_u64(w, s.len() as u64)?;
    w.write_all(s.as_bytes())?;
    w.write_all(&[0u8; 8][..(8 - s.len() % 8) % 8])
}

pub fn write_strings<'a>(w: &mut impl Write, items: impl ExactSizeIterator<Item = &'a str>) -> io::Result<()> {
    write_u64(w, items.len() as u64)?;
    for s in items {
        write_string(w, s)?;
    }
    Ok(())
}

/// Removes ANSI escape sequences (Nix colours interpolated values in error messages).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_bounds() {
        let mut v = Vec::new();
        write_string(&mut v, "abc").unwrap();
        assert_eq!(v.len(), 16);
        assert_eq!(read_string(&mut &v[..]).unwrap(), "abc");
        let mut huge = Vec::new();
        write_u64(&mut huge, u64::MAX).unwrap();
        assert!(matches!(read_bytes(&mut &huge[..], MAX_STRING), Err(WireError::Malformed(_))));
        let mut bad = v.clone();
        bad[12] = 1;
        assert!(matches!(read_string(&mut &bad[..]), Err(WireError::Malformed(_))));
        assert!(matches!(read_string(&mut &v[..10]), Err(WireError::Closed)));
        assert_eq!(strip_ansi("path '\x1b[35;1m/nix/store/x\x1b[0m' is not valid"), "path '/nix/store/x' is not valid");
    }
}
