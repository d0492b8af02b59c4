//! Realisations (`ca-derivations`): which store path an output of a content-addressed
//! derivation was built to, keyed by the derivation's hash modulo and the output name.
//!
//! The JSON is the shape `nix realisation info --json` prints and the daemon sends, so
//! output of stock Nix can be fed to `overlay-store realisation add` and back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::format::{Hash, StorePath};

/// `<algo>:<base16 hash modulo>!<output name>`, e.g. `sha256:6803…8caa!out`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DrvOutput {
    pub drv_hash: Hash,
    pub output: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RealisationError {
    #[error("invalid derivation output id '{0}': expected '<algo>:<hash>!<output name>', e.g. 'sha256:6803…8caa!out'")]
    BadId(String),
    #[error("invalid realisation JSON: {0}")]
    BadJson(String),
}

impl DrvOutput {
    pub fn parse(s: &str) -> Result<DrvOutput, RealisationError> {
        let bad = || RealisationError::BadId(s.to_string());
        let (hash, output) = s.rsplit_once('!').ok_or_else(bad)?;
        if output.is_empty() || !output.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)) {
            return Err(bad());
        }
        // Nix always writes the prefixed form; any encoding of the digest is read.
        if !hash.contains(':') {
            return Err(bad());
        }
        let drv_hash = Hash::parse_prefixed(hash).map_err(|_| bad())?;
        Ok(DrvOutput { drv_hash, output: output.to_string() })
    }

    /// The `Realisations.drvPath` column: the prefixed base16 hash (not a store path).
    pub fn hash_key(&self) -> String {
        self.drv_hash.to_db_string()
    }
}

impl fmt::Display for DrvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}!{}", self.hash_key(), self.output)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realisation {
    pub id: DrvOutput,
    pub out_path: StorePath,
    pub signatures: BTreeSet<String>,
    /// The realisations of the inputs this one was built from, with their output paths.
    pub dependent: BTreeMap<DrvOutput, StorePath>,
}

impl Realisation {
    /// Nix's object, keys in Nix's (sorted) order; store paths as base names, as Nix
    /// writes them.
    pub fn to_json(&self) -> Value {
        let mut deps: Vec<(String, String)> = self.dependent.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        deps.sort();
        let deps: Map<String, Value> = deps.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        let mut o = Map::new();
        o.insert("dependentRealisations".into(), Value::Object(deps));
        o.insert("id".into(), Value::String(self.id.to_string()));
        o.insert("outPath".into(), Value::String(self.out_path.to_string()));
        o.insert("signatures".into(), Value::Array(self.signatures.iter().cloned().map(Value::String).collect()));
        Value::Object(o)
    }

    /// Reads Nix's object. `outPath` may be a base name (as Nix writes it) or a full
    /// path in `/nix/store`-like form; `signatures` and `dependentRealisations` may be
    /// missing.
    pub fn from_json(v: &Value) -> Result<Realisation, RealisationError> {
        let bad = |what: String| RealisationError::BadJson(what);
        let o = v.as_object().ok_or_else(|| bad("expected an object".into()))?;
        let id = o.get("id").and_then(Value::as_str).ok_or_else(|| bad("missing string field 'id'".into()))?;
        let id = DrvOutput::parse(id)?;
        let out = o.get("outPath").and_then(Value::as_str).ok_or_else(|| bad(format!("{id}: missing string field 'outPath'")))?;
        let out_path = base_name_path(out).map_err(|e| bad(format!("{id}: outPath: {e}")))?;
        let signatures = match o.get("signatures") {
            None | Some(Value::Null) => BTreeSet::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string).ok_or_else(|| bad(format!("{id}: signatures must be strings"))))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad(format!("{id}: 'signatures' must be a list"))),
        };
        let dependent = match o.get("dependentRealisations") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, p)| {
                    let dep = DrvOutput::parse(k)?;
                    let p = p.as_str().ok_or_else(|| bad(format!("{id}: dependentRealisations.{k} must be a string")))?;
                    Ok((dep, base_name_path(p).map_err(|e| bad(format!("{id}: dependentRealisations.{k}: {e}")))?))
                })
                .collect::<Result<_, RealisationError>>()?,
            Some(_) => return Err(bad(format!("{id}: 'dependentRealisations' must be an object"))),
        };
        Ok(Realisation { id, out_path, signatures, dependent })
    }

    /// One realisation or a list of them (`nix realisation info --json` prints a list;
    /// entries without an `id`, Nix's `opaquePath` ones, are skipped).
    pub fn list_from_json(text: &str) -> Result<Vec<Realisation>, RealisationError> {
        let v: Value = serde_json::from_str(text).map_err(|e| RealisationError::BadJson(e.to_string()))?;
        match v {
            Value::Array(items) => items.iter().filter(|i| i.get("opaquePath").is_none()).map(Realisation::from_json).collect(),
            other => Ok(vec![Realisation::from_json(&other)?]),
        }
    }
}

fn base_name_path(s: &str) -> Result<StorePath, String> {
    let base = s.rsplit('/').next().unwrap_or(s);
    StorePath::from_basename(base).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // As `nix realisation info --json` (2.8) printed it for a CA derivation depending on
    // another one.
    const NIX_JSON: &str = r#"[{"dependentRealisations":{"sha256:efbd515ae14e0ac6bccb683ed08993c508192271f74ab414c1c7141535d1a1b7!out":"qmzrxdxyrapwz600rmapw135md5l7h1q-cadep"},"id":"sha256:afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab!out","outPath":"wis99madnqwdw3105vd42d5s0313dbc5-catop","signatures":[]}]"#;

    #[test]
    fn nix_json_round_trips_byte_for_byte() {
        let list = Realisation::list_from_json(NIX_JSON).unwrap();
        assert_eq!(list.len(), 1);
        let r = &list[0];
        assert_eq!(r.id.output, "out");
        assert_eq!(r.id.hash_key(), "sha256:afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab");
        assert_eq!(r.out_path.to_string(), "wis99madnqwdw3105vd42d5s0313dbc5-catop");
        assert_eq!(r.dependent.len(), 1);
        let back = serde_json::to_string(&Value::Array(vec![r.to_json()])).unwrap();
        assert_eq!(back, NIX_JSON);
    }

    #[test]
    fn ids_parse_strictly() {
        for bad in [
            "",
            "sha256:afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab",
            "sha256:afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab!",
            "afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab!out",
            "sha256:xyz!out",
            "sha256:afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab!o/ut",
        ] {
            assert!(DrvOutput::parse(bad).is_err(), "{bad}");
        }
        // The nix32 form reads as the same id, written back in base16.
        let hex = "sha256:afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab!out";
        let id = DrvOutput::parse(hex).unwrap();
        let nix32 = format!("sha256:{}!out", id.drv_hash.to_nix32());
        assert_eq!(DrvOutput::parse(&nix32).unwrap().to_string(), hex);
    }

    #[test]
    fn bad_json_names_the_field() {
        let e = Realisation::list_from_json(r#"{"id":"sha256:afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab!out"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("outPath"), "{e}");
        let e = Realisation::list_from_json(r#"{"id":"x!out","outPath":"wis99madnqwdw3105vd42d5s0313dbc5-catop"}"#).unwrap_err();
        assert!(matches!(e, RealisationError::BadId(_)), "{e}");
        assert!(Realisation::list_from_json("[{").is_err());
        let e = Realisation::list_from_json(
            r#"{"id":"sha256:afe986a2cc546ccb805c91bd06dc06f806e1e95f311116dc34eb6240b3a6c5ab!out","outPath":"../etc"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("outPath"), "{e}");
    }
}
