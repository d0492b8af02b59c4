//! Nix's Ed25519 signatures of store paths: key files (`<name>:<base64>`, the secret key
//! being the 64-byte seed-and-public-key pair), the fingerprint a signature covers, and
//! `<name>:<base64 signature>` strings as narinfos and the `sigs` column hold them.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::hash::Hash;
use super::store_path::{StoreDir, StorePath};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key must look like '<name>:<base64>', but this one has no ':'")]
    NoName,
    #[error("key '{0}': the part after ':' is not valid base64")]
    Base64(String),
    #[error("key '{name}': expected {expected} bytes, found {found}")]
    Length { name: String, expected: usize, found: usize },
    #[error("key '{0}': not a valid Ed25519 key")]
    Invalid(String),
}

/// A signing key: `nix-store --generate-binary-cache-key`'s secret key file.
#[derive(Clone)]
pub struct SecretKey {
    pub name: String,
    key: SigningKey,
}

/// A public key, as `trusted-public-keys` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub name: String,
    key: VerifyingKey,
}

fn split(text: &str) -> Result<(&str, Vec<u8>), KeyError> {
    let (name, data) = text.trim().split_once(':').ok_or(KeyError::NoName)?;
    if name.is_empty() {
        return Err(KeyError::NoName);
    }
    let bytes = B64.decode(data).map_err(|_| KeyError::Base64(name.to_string()))?;
    Ok((name, bytes))
}

impl SecretKey {
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let (name, bytes) = split(text)?;
        let pair: [u8; 64] =
            bytes.as_slice().try_into().map_err(|_| KeyError::Length { name: name.into(), expected: 64, found: bytes.len() })?;
        let key = SigningKey::from_keypair_bytes(&pair).map_err(|_| KeyError::Invalid(name.into()))?;
        Ok(SecretKey { name: name.to_string(), key })
    }

    /// A new key from 32 random bytes (the seed).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> SecretKey {
        SecretKey { name: name.to_string(), key: SigningKey::from_bytes(&seed) }
    }

    pub fn render(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// `<name>:<base64 signature>` over `message`.
    pub fn sign(&self, message: &str) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.sign(message.as_bytes()).to_bytes()))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.name)
    }
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let (name, bytes) = split(text)?;
        let raw: [u8; 32] =
            bytes.as_slice().try_into().map_err(|_| KeyError::Length { name: name.into(), expected: 32, found: bytes.len() })?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::Invalid(name.into()))?;
        Ok(PublicKey { name: name.to_string(), key })
    }

    pub fn render(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }

    /// Whether `sig` (`<name>:<base64>`) is this key's signature of `message`.
    pub fn verifies(&self, message: &str, sig: &str) -> bool {
        let Some((name, data)) = sig.split_once(':') else { return false };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = B64.decode(data) else { return false };
        let Ok(raw) = <[u8; 64]>::try_from(bytes.as_slice()) else { return false };
        self.key.verify(message.as_bytes(), &Signature::from_bytes(&raw)).is_ok()
    }
}

/// What a path's signature covers:
/// `1;<path>;<narHash as sha256:nix32>;<narSize>;<references, sorted, comma-separated>`.
pub fn fingerprint(sd: &StoreDir, path: &StorePath, nar_hash: &Hash, nar_size: u64, refs: &BTreeSet<StorePath>) -> String {
    let refs: Vec<String> = refs.iter().map(|r| sd.display(r)).collect();
    format!("1;{};{};{nar_size};{}", sd.display(path), nar_hash.to_nix32_string(), refs.join(","))
}

/// How many of `sigs` one of `keys` made over `fingerprint`.
pub fn valid_signatures(keys: &[PublicKey], fingerprint: &str, sigs: &BTreeSet<String>) -> usize {
    sigs.iter().filter(|s| keys.iter().any(|k| k.verifies(fingerprint, s))).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::hash::HashAlgo;

    /// A key pair `nix-store --generate-binary-cache-key test-1 sk pk` wrote (Nix 2.8).
    const SK: &str = "test-1:LJ3Oab1QLj3kZtKQ0E3lD8olBoi3oZKpZme0Plo0vCkGxvb43c4q62wNDqt/scO6IAs1QJSawCBfVkSvRtsVeQ==";
    const PK: &str = "test-1:Bsb2+N3OKutsDQ6rf7HDuiALNUCUmsAgX1ZEr0bbFXk=";

    fn top() -> (StoreDir, StorePath, Hash, u64, BTreeSet<StorePath>) {
        let sd = StoreDir::default();
        let path = sd.parse_path("/nix/store/45gp4l5hcnjyiyw1c76q9f70fq3yijn1-top").unwrap();
        let hash = Hash::parse_digest(HashAlgo::Sha256, "00zwb7rk3kxvk6yijb8cib340224n0ckqdc35qqqpl6a7gpq2019").unwrap();
        (sd, path.clone(), hash, 568, [path].into())
    }

    #[test]
    fn nix_keys_and_signatures_are_reproduced() {
        let sk = SecretKey::parse(SK).unwrap();
        assert_eq!(sk.render(), SK);
        assert_eq!(sk.public().render(), PK);
        let (sd, path, hash, size, refs) = top();
        let fp = fingerprint(&sd, &path, &hash, size, &refs);
        assert_eq!(
            fp,
            "1;/nix/store/45gp4l5hcnjyiyw1c76q9f70fq3yijn1-top;sha256:00zwb7rk3kxvk6yijb8cib340224n0ckqdc35qqqpl6a7gpq2019;568;/nix/store/45gp4l5hcnjyiyw1c76q9f70fq3yijn1-top"
        );
        // What Nix wrote into the narinfo for this path (Ed25519 is deterministic).
        let nix_sig = "test-1:yuD6n+1cmr6e6qPxf40CprTmirgV/P1jqedzWKfa1N5PzmLvtlpy52RxISYDdIvUo0lAksxwot8yxBT53Pe3AA==";
        assert_eq!(sk.sign(&fp), nix_sig);
        let pk = PublicKey::parse(PK).unwrap();
        assert!(pk.verifies(&fp, nix_sig));
        assert!(!pk.verifies(&fp.replace(";568;", ";569;"), nix_sig));
        assert!(!pk.verifies(&fp, &nix_sig.replace("test-1:", "test-2:")));
        let other = SecretKey::from_seed("test-1", [7; 32]);
        assert!(!pk.verifies(&fp, &other.sign(&fp)));
        assert_eq!(valid_signatures(std::slice::from_ref(&pk), &fp, &[nix_sig.to_string(), other.sign(&fp)].into()), 1);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(PublicKey::parse("nocolon").unwrap_err(), KeyError::NoName);
        assert!(matches!(PublicKey::parse("k:!!!"), Err(KeyError::Base64(_))));
        assert!(matches!(PublicKey::parse("k:AAAA"), Err(KeyError::Length { .. })));
        assert!(matches!(SecretKey::parse(PK), Err(KeyError::Length { .. })));
        // A secret key whose second half is not the first half's public key.
        let mut pair = B64.decode(SK.split_once(':').unwrap().1).unwrap();
        pair[40] ^= 1;
        assert!(matches!(SecretKey::parse(&format!("k:{}", B64.encode(pair))), Err(KeyError::Invalid(_))));
    }
}
