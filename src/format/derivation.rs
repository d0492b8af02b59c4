//! The derivation ATerm (`Derive([outputs],[inputDrvs],[inputSrcs],platform,builder,
//! [args],[env])`): a `.drv`'s outputs, which a local store records in
//! `DerivationOutputs` when it registers the `.drv`, and its hash modulo (Nix's
//! `hashDerivationModulo`), which names its outputs in a build's results
//! (`sha256:<hash>!out`). Building is not our business; the rest is not interpreted.

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

/// A whole derivation, as its ATerm lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// `(name, path, hashAlgo, hash)`.
    pub outputs: Vec<(String, String, String, String)>,
    /// `(drv path, output names)`.
    pub input_drvs: Vec<(String, Vec<String>)>,
    pub input_srcs: Vec<String>,
    pub platform: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Cursor<'_> {
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T, DerivationError>) -> Result<Vec<T>, DerivationError> {
        self.expect(b"[", "expected '['")?;
        let mut out = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn strings(&mut self) -> Result<Vec<String>, DerivationError> {
        self.list(|c| c.string())
    }
}

impl Derivation {
    pub fn parse(text: &[u8]) -> Result<Derivation, DerivationError> {
        let mut c = Cursor { s: text, pos: 0 };
        c.expect(b"Derive(", "expected 'Derive('")?;
        let outputs = c.list(|c| {
            c.expect(b"(", "expected '('")?;
            let mut f = [String::new(), String::new(), String::new(), String::new()];
            for (i, slot) in f.iter_mut().enumerate() {
                if i > 0 {
                    c.expect(b",", "expected ','")?;
                }
                *slot = c.string()?;
            }
            c.expect(b")", "expected ')'")?;
            let [a, b, h, d] = f;
            Ok((a, b, h, d))
        })?;
        c.expect(b",", "expected ','")?;
        let input_drvs = c.list(|c| {
            c.expect(b"(", "expected '('")?;
            let p = c.string()?;
            c.expect(b",", "expected ','")?;
            let outs = c.strings()?;
            c.expect(b")", "expected ')'")?;
            Ok((p, outs))
        })?;
        c.expect(b",", "expected ','")?;
        let input_srcs = c.strings()?;
        c.expect(b",", "expected ','")?;
        let platform = c.string()?;
        c.expect(b",", "expected ','")?;
        let builder = c.string()?;
        c.expect(b",", "expected ','")?;
        let args = c.strings()?;
        c.expect(b",", "expected ','")?;
        let env = c.list(|c| {
            c.expect(b"(", "expected '('")?;
            let k = c.string()?;
            c.expect(b",", "expected ','")?;
            let v = c.string()?;
            c.expect(b")", "expected ')'")?;
            Ok((k, v))
        })?;
        c.expect(b")", "expected ')' at the end")?;
        if c.pos != text.len() {
            return Err(c.err("trailing bytes after the derivation"));
        }
        Ok(Derivation { outputs, input_drvs, input_srcs, platform, builder, args, env })
    }

    /// The ATerm text, byte for byte as Nix writes it.
    pub fn unparse(&self) -> String {
        fn q(out: &mut String, s: &str) {
            out.push('"');
            for ch in s.chars() {
                match ch {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        fn list<T>(out: &mut String, items: &[T], mut each: impl FnMut(&mut String, &T)) {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                each(out, it);
            }
            out.push(']');
        }
        let mut o = String::from("Derive(");
        list(&mut o, &self.outputs, |o, (a, b, c, d)| {
            o.push('(');
            for (i, s) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                q(o, s);
            }
            o.push(')');
        });
        o.push(',');
        list(&mut o, &self.input_drvs, |o, (p, outs)| {
            o.push('(');
            q(o, p);
            o.push(',');
            list(o, outs, |o, s| q(o, s));
            o.push(')');
        });
        o.push(',');
        list(&mut o, &self.input_srcs, |o, s| q(o, s));
        o.push(',');
        q(&mut o, &self.platform);
        o.push(',');
        q(&mut o, &self.builder);
        o.push(',');
        list(&mut o, &self.args, |o, s| q(o, s));
        o.push(',');
        list(&mut o, &self.env, |o, (k, v)| {
            o.push('(');
            q(o, k);
            o.push(',');
            q(o, v);
            o.push(')');
        });
        o.push(')');
        o
    }

    /// Nix's `hashDerivationModulo`: for a fixed-output derivation the hash of its fixed
    /// output; otherwise the SHA-256 of the ATerm with each input derivation replaced by
    /// its own hash modulo (`input_hash`, base16), and with `mask_outputs` the output
    /// paths blanked (what output paths and build results are named after).
    pub fn hash_modulo(
        &self,
        mask_outputs: bool,
        input_hash: &mut dyn FnMut(&str) -> Result<crate::format::Hash, String>,
    ) -> Result<crate::format::Hash, String> {
        use crate::format::Hash;
        if let [(name, path, algo, hash)] = &self.outputs[..] {
            if name == "out" && !hash.is_empty() {
                return Ok(Hash::sha256(format!("fixed:out:{algo}:{hash}:{path}").as_bytes()));
            }
        }
        let mut d = self.clone();
        let mut inputs = Vec::with_capacity(d.input_drvs.len());
        for (p, outs) in &self.input_drvs {
            inputs.push((input_hash(p)?.to_base16(), outs.clone()));
        }
        inputs.sort();
        d.input_drvs = inputs;
        if mask_outputs {
            let names: Vec<String> = d.outputs.iter().map(|o| o.0.clone()).collect();
            for o in &mut d.outputs {
                o.1.clear();
            }
            for (k, v) in &mut d.env {
                if names.contains(k) {
                    v.clear();
                }
            }
        }
        Ok(Hash::sha256(d.unparse().as_bytes()))
    }
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
    fn parse_and_unparse_are_inverse() {
        let drv = r#"Derive([("out","/nix/store/rzh878k6q5njsvs1q65z3dry78f5m6gb-top","","")],[("/nix/store/6v4wrmrdn9p8211r8h3wrjgccbaxpdhq-dep.drv",["out"])],["/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"],"x86_64-linux","/busybox",["sh","-c","echo \"hi\"\n\ttab\\"],[("out","/nix/store/rzh878k6q5njsvs1q65z3dry78f5m6gb-top")])"#;
        let d = Derivation::parse(drv.as_bytes()).unwrap();
        assert_eq!(d.args[2], "echo \"hi\"\n\ttab\\");
        assert_eq!(d.unparse(), drv);
        assert!(Derivation::parse(b"Derive([],[],[],\"a\",\"b\",[],[])x").is_err());
    }

    #[test]
    fn malformed() {
        assert!(parse_outputs(b"Derive([(\"out\"").is_err());
        assert!(parse_outputs(b"garbage").is_err());
    }
}
