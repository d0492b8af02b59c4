//! A TOML document as a tree of entries that remember where they were written (byte
//! spans, then lines and columns), so every error can name its file, line and key.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use toml::{Spanned, Value};

use super::error::{SpecError, SpecErrorKind};
use super::util::describe;
use serde::Deserialize as _;

/// A spec file's text, for turning byte offsets into lines and columns.
pub(super) struct Doc<'a> {
    pub(super) file: &'a Path,
    pub(super) dir: PathBuf,
    pub(super) text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Doc<'a> {
    pub(super) fn new(file: &'a Path, text: &'a str) -> Doc<'a> {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Doc { file, dir: file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/")), text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line, column + 1)
    }

    pub(super) fn syntax(&self, message: &str, span: Option<Range<usize>>) -> SpecError {
        let (line, column) = span.map_or((1, 1), |s| self.line_col(s.start));
        SpecErrorKind::Syntax {
            file: self.file.to_path_buf(),
            line,
            column,
            // The parser's message may span lines; ours are one line each.
            message: message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; "),
        }
        .into()
    }
}

/// A TOML value with the positions of its keys.
#[derive(Debug)]
pub(super) enum Node {
    Scalar(Value),
    Array(Vec<Node>),
    Table(Vec<Entry>),
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) span: Option<Range<usize>>,
    pub(super) value: Node,
}

pub(super) fn describe_node(n: &Node) -> String {
    match n {
        Node::Scalar(v) => describe(v),
        Node::Array(_) => "an array".to_string(),
        Node::Table(_) => "a table".to_string(),
    }
}

/// Second pass: the same document, with key spans. Should the parser ever
/// hand out a key without a span, the walk is redone without any, and errors
/// point at the enclosing table instead of failing.
pub(super) fn walk(text: &str, table: toml::Table) -> Result<Vec<Entry>, toml::de::Error> {
    let guide = Value::Table(table);
    let walked = Walk { guide: &guide, spanned: true }
        .deserialize(toml::Deserializer::new(text))
        .or_else(|_| Walk { guide: &guide, spanned: false }.deserialize(toml::Deserializer::new(text)))?;
    match walked {
        Node::Table(entries) => Ok(entries),
        _ => Ok(Vec::new()),
    }
}

struct Walk<'g> {
    guide: &'g Value,
    spanned: bool,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Node;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        match self.guide {
            Value::Table(t) => d.deserialize_map(TableVisitor { guide: t, spanned: self.spanned }),
            Value::Array(a) => d.deserialize_seq(ArrayVisitor { guide: a, spanned: self.spanned }),
            other => {
                IgnoredAny::deserialize(d)?;
                Ok(Node::Scalar(other.clone()))
            }
        }
    }
}

struct TableVisitor<'g> {
    guide: &'g toml::Table,
    spanned: bool,
}

impl<'de> Visitor<'de> for TableVisitor<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        loop {
            let (key, span) = if self.spanned {
                match map.next_key::<Spanned<String>>()? {
                    Some(k) => {
                        let span = k.span();
                        (k.into_inner(), Some(span))
                    }
                    None => break,
                }
            } else {
                match map.next_key::<String>()? {
                    Some(k) => (k, None),
                    None => break,
                }
            };
            let guide = self.guide.get(&key).ok_or_else(|| de::Error::custom(format!("key `{key}` missing from first parse")))?;
            let value = map.next_value_seed(Walk { guide, spanned: self.spanned })?;
            entries.push(Entry { key, span, value });
        }
        Ok(Node::Table(entries))
    }
}

struct ArrayVisitor<'g> {
    guide: &'g [Value],
    spanned: bool,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        for guide in self.guide {
            match seq.next_element_seed(Walk { guide, spanned: self.spanned })? {
                Some(n) => items.push(n),
                None => break,
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Node::Array(items))
    }
}
