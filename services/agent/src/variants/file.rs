//! Reading `ferry.variants.toml`: the file's shape as serde types, every
//! value with its byte span, and byte offsets turned into line and column.
//!
//! Everything here is syntax: a syntax error, an unknown key or a value of
//! the wrong type stops parsing with toml's own located error. What the
//! values mean is checked in `check`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) app: Option<Spanned<String>>,
    pub(super) base: Option<Spanned<RawBase>>,
    pub(super) variants: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawVariant>>>>,
}

/// `[base]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBase {
    pub(super) artifacts: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawArtifact>>>>,
}

/// `[base.artifacts.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawArtifact {
    pub(super) path: Spanned<String>,
    pub(super) platforms: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[variants.NAME]`: `tenants` and one table of overrides per artifact,
/// keyed by the artifact's name (so the keys are not known in advance and
/// this type cannot derive `deny_unknown_fields`; the override tables do).
#[derive(Debug)]
pub(super) struct RawVariant {
    pub(super) tenants: Option<Spanned<Vec<Spanned<String>>>>,
    /// In file order.
    pub(super) artifacts: Vec<(Spanned<String>, Spanned<RawOverrides>)>,
}

/// A map from a path or pointer to a value, each with its span.
pub(super) type SpannedMap<V> = Spanned<BTreeMap<Spanned<String>, Spanned<V>>>;

/// `[variants.NAME.ARTIFACT]`.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table of overrides of the artifact (`source`, `replace`, `add`, `remove`, `set`); \
                 the only other key of a variant is `tenants`"
)]
pub(super) struct RawOverrides {
    pub(super) source: Option<Spanned<String>>,
    pub(super) replace: Option<SpannedMap<String>>,
    pub(super) add: Option<SpannedMap<String>>,
    pub(super) remove: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) set: Option<SpannedMap<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
}

impl<'de> Deserialize<'de> for RawVariant {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(VariantVisitor)
    }
}

struct VariantVisitor;

impl<'de> Visitor<'de> for VariantVisitor {
    type Value = RawVariant;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a variant: a table with `tenants` and a table of overrides per artifact")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawVariant, A::Error> {
        let mut tenants = None;
        let mut artifacts = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            if key.get_ref() == "tenants" {
                tenants = Some(map.next_value()?);
            } else {
                artifacts.push((key, map.next_value()?));
            }
        }
        artifacts.sort_by_key(|(key, _)| key.span().start);
        Ok(RawVariant { tenants, artifacts })
    }
}

/// Why the file could not be parsed at all: where and what.
#[derive(Debug)]
pub(super) struct SyntaxError {
    pub(super) offset: usize,
    pub(super) message: String,
}

/// Parses the file's text into its raw shape.
pub(super) fn parse(text: &str) -> Result<RawFile, SyntaxError> {
    toml::from_str(text)
        .map_err(|e| SyntaxError { offset: e.span().map_or(0, |span| span.start), message: one_line(e.message()) })
}

/// toml's messages may span lines (a list of expected tokens); a problem is
/// one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sorts the entries of a spanned map into file order.
pub(super) fn in_file_order<V>(map: &BTreeMap<Spanned<String>, V>) -> Vec<(&Spanned<String>, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// Turns byte offsets of a text into 1-based lines and columns (columns in
/// characters, so that they match what an editor shows).
#[derive(Debug)]
pub(super) struct Locator<'a> {
    text: &'a str,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { text, line_starts }
    }

    /// `(line, column)` of a byte offset; offsets past the end or inside a
    /// character are clamped.
    pub(super) fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[line];
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }

    /// The line of a byte offset.
    pub(super) fn line(&self, offset: usize) -> usize {
        self.locate(offset).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_offsets_by_line_and_character() {
        let text = "ab\nçd\n\nx";
        let loc = Locator::new(text);
        assert_eq!(loc.locate(0), (1, 1));
        assert_eq!(loc.locate(2), (1, 3));
        assert_eq!(loc.locate(3), (2, 1));
        // 'ç' is two bytes, one column.
        assert_eq!(loc.locate(5), (2, 2));
        assert_eq!(loc.locate(7), (3, 1));
        assert_eq!(loc.locate(8), (4, 1));
        assert_eq!(loc.locate(100), (4, 2));
    }
}
