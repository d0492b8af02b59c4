//! Nix's base-32 encoding ("nix32").
//!
//! The byte string is read as a little-endian integer and written most significant
//! digit first over the alphabet `0-9a-z` minus `e o t u`, so the first character holds
//! the top bits of the *last* byte. `n` bytes take `(8n - 1) / 5 + 1` characters.

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Digit value of each ASCII byte, 0xff when it is not in the alphabet.
const DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nix32Error {
    #[error("invalid base-32 hash '{0}'")]
    Invalid(String),
}

/// Length in characters of the encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (8 * n - 1) / 5 + 1
    }
}

/// Number of bytes a string of `chars` characters decodes to, if it is a valid length.
pub fn decoded_len(chars: usize) -> Option<usize> {
    // Inverse of `encoded_len`; the mapping is injective, so search the one candidate.
    let n = chars * 5 / 8;
    [n, n + 1].into_iter().find(|&n| encoded_len(n) == chars)
}

pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = Vec::with_capacity(len);
    for k in 0..len {
        let bit = (len - 1 - k) * 5;
        let (i, j) = (bit / 8, bit % 8);
        let mut v = (bytes[i] as u16) >> j;
        if i + 1 < bytes.len() {
            v |= (bytes[i + 1] as u16) << (8 - j);
        }
        out.push(ALPHABET[(v & 31) as usize]);
    }
    String::from_utf8(out).expect("alphabet is ASCII")
}

/// Decodes into exactly `out.len()` bytes; bits above `8 * out.len()` must be zero.
pub fn decode_into(s: &str, out: &mut [u8]) -> Result<(), Nix32Error> {
    let bad = || Nix32Error::Invalid(s.to_string());
    if s.len() != encoded_len(out.len()) {
        return Err(bad());
    }
    out.fill(0);
    for (k, c) in s.bytes().rev().enumerate() {
        let digit = DECODE[c as usize];
        if digit == 0xff {
            return Err(bad());
        }
        let bit = k * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= digit << j;
        let carry = (digit as u16) >> (8 - j);
        if carry != 0 {
            if i + 1 < out.len() {
                out[i + 1] |= carry as u8;
            } else {
                return Err(bad());
            }
        }
    }
    Ok(())
}

pub fn decode(s: &str) -> Result<Vec<u8>, Nix32Error> {
    let n = decoded_len(s.len()).ok_or_else(|| Nix32Error::Invalid(s.to_string()))?;
    let mut out = vec![0; n];
    decode_into(s, &mut out)?;
    Ok(out)
}

pub fn is_nix32_char(c: u8) -> bool {
    DECODE[c as usize] != 0xff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn worked_examples_from_nix() {
        let cases = [
            ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"),
            ("da39a3ee5e6b4b0d3255bfef95601890afd80709", "143xibwh31h9bvxzalr0sjvbbvpa6ffs"),
            ("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13", "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"),
            ("7daba60473c6b92b848d53c87815d4b7fe5c6f8a", "i9pmrzmpshapij2kin22pff6fc2adavx"),
            ("01", "01"),
            ("ff", "7z"),
            ("0102", "00h1"),
            ("0102030405", "0l2060h1"),
        ];
        for (h, s) in cases {
            assert_eq!(encode(&hex(h)), s);
            assert_eq!(decode(s).unwrap(), hex(h), "{s}");
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        for n in 1..70 {
            assert_eq!(decoded_len(encoded_len(n)), Some(n));
        }
    }

    #[test]
    fn top_bits() {
        // A leading '1' sets bit 255, the top bit of the last byte.
        let d = decode("14zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw").unwrap();
        assert_eq!(d, hex("1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc93"));
        // A leading '2' would need bit 256: rejected.
        assert!(decode("24zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw").is_err());
    }

    #[test]
    fn rejects_bad_characters() {
        for s in [
            "04ZWF782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqe",
            "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqo",
        ] {
            assert_eq!(decode(s), Err(Nix32Error::Invalid(s.to_string())));
        }
    }
}
