//! Just enough of the derivation ATerm (`Derive([outputs],…)`) to read a `.drv`'s
//! outputs, which a local store records in `DerivationOutputs` when it registers the
//! `.drv`. Building is not our business, so the rest of the term is not interpreted.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("derivation is malformed at byte {pos}: {what}")]
pub struct DerivationError {
    pub pos: usize,
    pub what: &'static str,
}

/// One entry of the outputs list: `(name, path, hashAlgo, hash)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivationOutput {
    pub name: String,
    /// Empty for floating content-addressed outputs, whose path is not known yet.
    pub path: String,
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn err(&self, what: &'static str) -> DerivationError {
        DerivationError { pos: self.pos, what }
    }

    fn expect(&mut self, lit: &[u8], what: &'static str) -> Result<(), DerivationError> {
        if self.s[self.pos..].starts_with(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            Err(self.err(what))
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn string(&mut self) -> Result<String, DerivationError> {
        self.expect(b"\"", "expected a string")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let c = *self.s.get(self.pos + 1).ok_or_else(|| self.err("unterminated escape"))?;
                    out.push(match c {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        c => c,
                    });
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }
}

/// Reads the outputs of a derivation from its ATerm text.
pub fn parse_outputs(text: &[u8]) -> Result<Vec<DerivationOutput>, DerivationError> {
    let mut c = Cursor { s: text, pos: 0 };
    c.expect(b"Derive([", "expected 'Derive(['")?;
    let mut outputs = Vec::new();
    if c.peek() == Some(b']') {
        return Ok(outputs);
    }
    loop {
        c.expect(b"(", "expected '(' before an output")?;
        let name = c.string()?;
        c.expect(b",", "expected ','")?;
        let path = c.string()?;
        c.expect(b",", "expected ','")?;
        c.string()?;
        c.expect(b",", "expected ','")?;
        c.string()?;
        c.expect(b")", "expected ')' after an output")?;
        outputs.push(DerivationOutput { name, path });
        match c.peek() {
            Some(b',') => c.pos += 1,
            Some(b']') => break,
            _ => return Err(c.err("expected ',' or ']' in the outputs")),
        }
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_drv_outputs() {
        let drv = br#"Derive([("doc","/nix/store/432xdz9i96nli4ml7jiqbf2nv3vc6zf7-top-doc","",""),("out","/nix/store/rzh878k6q5njsvs1q65z3dry78f5m6gb-top","","")],[("/nix/store/6v4wrmrdn9p8211r8h3wrjgccbaxpdhq-dep.drv",["out"])],[],"x86_64-linux","/busybox",["sh","-c","echo \"hi\""],[])"#;
        let outs = parse_outputs(drv).unwrap();
        assert_eq!(outs.len(), 2);
        assert_eq!(outs[0].name, "doc");
        assert_eq!(outs[1].path, "/nix/store/rzh878k6q5njsvs1q65z3dry78f5m6gb-top");
    }

    #[test]
    fn malformed() {
        assert!(parse_outputs(b"Derive([(\"out\"").is_err());
        assert!(parse_outputs(b"garbage").is_err());
    }
}
