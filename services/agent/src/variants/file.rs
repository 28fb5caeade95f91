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

pub(super) use crate::located::Locator;
