//! Errors of the store spec: every one says where the problem is and what was
//! expected, because a config error is the first thing a new user meets.

use std::path::PathBuf;

use thiserror::Error;

/// A store spec that could not be read or did not validate.
///
/// Boxed so that `Result<StoreSpec, SpecError>` stays small on the happy path.
/// The `Display` text is the whole message for the user; print it as is.
#[derive(Debug, Error)]
#[error(transparent)]
pub struct SpecError(Box<SpecErrorKind>);

impl SpecError {
    /// What went wrong, for callers that react to the kind (tests, `watch`).
    pub fn kind(&self) -> &SpecErrorKind {
        &self.0
    }
}

impl From<SpecErrorKind> for SpecError {
    fn from(kind: SpecErrorKind) -> Self {
        SpecError(Box::new(kind))
    }
}

/// The kinds of [`SpecError`]; each `Display` is a complete one-line message.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpecErrorKind {
    /// A key or value in a TOML spec that does not fit the schema. `key` is the
    /// dotted path from the top of `file` (`lower-store.upper-layer`).
    #[error("{}:{line}:{column}: {key}: {expected}", file.display())]
    Toml { file: PathBuf, line: usize, column: usize, key: String, expected: String },
    /// The file is not TOML at all; `message` is the parser's.
    #[error("{}:{line}:{column}: invalid TOML: {message}", file.display())]
    Syntax { file: PathBuf, line: usize, column: usize, message: String },
    /// A parameter of a Nix store URI that does not fit. `uri` is the URI as the
    /// user wrote it (the outermost one for nested `lower-store=` URIs) and
    /// `param` the dotted path to the parameter (`lower-store.upper-layer`).
    #[error("store URI '{uri}': {param}: {expected}")]
    Uri { uri: String, param: String, expected: String },
    /// A spec file that cannot be read. `included_from` is the `lower-store` key
    /// that named it, when it was not the file given on the command line.
    #[error("{}", io_message(file, error, included_from))]
    Io { file: PathBuf, error: std::io::Error, included_from: Option<Place> },
    /// `lower-store` includes lead back to a file that is being read.
    /// `chain` starts at the first file of the cycle and ends with it again.
    #[error(
        "{}:{}:{}: {}: include cycle: {}; a lower store cannot include a spec that includes it",
        at.file.display(), at.line, at.column, at.key, chain_text(chain)
    )]
    IncludeCycle { at: Place, chain: Vec<PathBuf> },
}

/// A position in a spec file, with the key found there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
}

fn io_message(file: &std::path::Path, error: &std::io::Error, from: &Option<Place>) -> String {
    match from {
        None => format!("cannot read store spec '{}': {error}; give the path of a readable TOML store spec", file.display()),
        Some(at) => format!(
            "{}:{}:{}: {}: cannot read included store spec '{}': {error}; \
             a relative path is relative to the directory of {}",
            at.file.display(),
            at.line,
            at.column,
            at.key,
            file.display(),
            at.file.display()
        ),
    }
}

fn chain_text(chain: &[PathBuf]) -> String {
    chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> ")
}
