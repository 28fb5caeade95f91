//! `set`: JSON and YAML documents, JSON pointers into them, and values
//! taken from TOML.
//!
//! Documents are held as [`Doc`], which keeps the order of object keys as
//! in the file, so that a rendered configuration file differs from the base
//! only where a value was set.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// The formats `set` edits, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Json,
    Yaml,
}

impl Format {
    /// By the extension of a file name: `.json`, `.yaml`, `.yml`, in any case.
    pub(super) fn of(file_name: &str) -> Option<Self> {
        let (_, ext) = file_name.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "json" => Some(Self::Json),
            "yaml" | "yml" => Some(Self::Yaml),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "JSON",
            Self::Yaml => "YAML",
        })
    }
}

/// A JSON or YAML value; objects keep their keys in file order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Doc {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

/// A document parsed from a file, with what is needed to write it back in
/// the same style.
#[derive(Debug)]
pub(super) struct Document {
    pub(super) root: Doc,
    format: Format,
    /// JSON: whether the original spread over several lines.
    pretty: bool,
    trailing_newline: bool,
}

impl Document {
    /// Parses `bytes` as `format`; the error says why and where in the file.
    pub(super) fn parse(bytes: &[u8], format: Format) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("is not UTF-8 (at byte {})", e.valid_up_to()))?;
        let root = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string())?,
            Format::Yaml => serde_saphyr::from_str(text).map_err(|e| e.without_snippet().to_string())?,
        };
        Ok(Self { root, format, pretty: text.trim_end().contains('\n'), trailing_newline: text.ends_with('\n') })
    }

    /// The document in its format: JSON pretty-printed with two spaces when
    /// the original spread over several lines, else compact; YAML in block
    /// style (comments and anchors of the original are not kept).
    pub(super) fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut text = match (self.format, self.pretty) {
            (Format::Json, true) => serde_json::to_string_pretty(&self.root).map_err(|e| e.to_string())?,
            (Format::Json, false) => serde_json::to_string(&self.root).map_err(|e| e.to_string())?,
            (Format::Yaml, _) => serde_saphyr::to_string(&self.root).map_err(|e| e.to_string())?,
        };
        match (self.trailing_newline, text.ends_with('\n')) {
            (true, false) => text.push('\n'),
            (false, true) if self.format == Format::Json => {
                text.pop();
            }
            _ => {}
        }
        Ok(text.into_bytes())
    }
}

impl Doc {
    /// The value an RFC 6901 JSON pointer names, if it names an existing
    /// one; the error says where the path stops matching.
    pub(super) fn pointer_mut(&mut self, pointer: &str) -> Result<&mut Doc, String> {
        if pointer.is_empty() {
            return Ok(self);
        }
        let Some(rest) = pointer.strip_prefix('/') else {
            return Err("is not a JSON pointer: it must be empty or start with '/'".into());
        };
        let mut here = self;
        let mut walked = String::new();
        for raw in rest.split('/') {
            let token = raw.replace("~1", "/").replace("~0", "~");
            let at = if walked.is_empty() { "the document root".to_owned() } else { format!("{walked:?}") };
            here = match here {
                Doc::Object(entries) => match entries.iter_mut().find(|(key, _)| *key == token) {
                    Some((_, value)) => value,
                    None => return Err(format!("matches nothing: no key {token:?} in the object at {at}")),
                },
                Doc::Array(items) => {
                    let len = items.len();
                    let index = parse_index(&token)
                        .ok_or_else(|| format!("matches nothing: {token:?} is not an array index (at {at})"))?;
                    items.get_mut(index).ok_or_else(|| {
                        format!("matches nothing: index {index} is out of range, the array at {at} has {len} items")
                    })?
                }
                other => {
                    let kind = other.kind();
                    return Err(format!("matches nothing: the value at {at} is {kind}, not an object or an array"));
                }
            };
            walked.push('/');
            walked.push_str(raw);
        }
        Ok(here)
    }

    fn kind(&self) -> &'static str {
        match self {
            Doc::Null => "null",
            Doc::Bool(_) => "a boolean",
            Doc::Int(_) | Doc::UInt(_) | Doc::Float(_) => "a number",
            Doc::String(_) => "a string",
            Doc::Array(_) => "an array",
            Doc::Object(_) => "an object",
        }
    }

    /// A TOML value as a document value: tables become objects (keys in
    /// TOML's order), date-times become strings. Refuses what JSON cannot
    /// hold (NaN, infinities).
    pub(super) fn from_toml(value: &toml::Value) -> Result<Doc, String> {
        Ok(match value {
            toml::Value::String(s) => Doc::String(s.clone()),
            toml::Value::Integer(i) => Doc::Int(*i),
            toml::Value::Float(f) if f.is_finite() => Doc::Float(*f),
            toml::Value::Float(f) => return Err(format!("{f} cannot be written to JSON")),
            toml::Value::Boolean(b) => Doc::Bool(*b),
            toml::Value::Datetime(d) => Doc::String(d.to_string()),
            toml::Value::Array(items) => Doc::Array(items.iter().map(Doc::from_toml).collect::<Result<_, _>>()?),
            toml::Value::Table(table) => Doc::Object(
                table.iter().map(|(k, v)| Ok((k.clone(), Doc::from_toml(v)?))).collect::<Result<_, String>>()?,
            ),
        })
    }
}

/// An array index as RFC 6901 spells it: `0` or digits without a leading
/// zero (`-`, the element after the last, names no existing value).
fn parse_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Null => serializer.serialize_unit(),
            Doc::Bool(b) => serializer.serialize_bool(*b),
            Doc::Int(i) => serializer.serialize_i64(*i),
            Doc::UInt(u) => serializer.serialize_u64(*u),
            Doc::Float(f) => serializer.serialize_f64(*f),
            Doc::String(s) => serializer.serialize_str(s),
            Doc::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON or YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Doc, E> {
        Ok(Doc::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Doc, E> {
        Ok(Doc::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Doc, E> {
        Ok(i64::try_from(v).map_or(Doc::UInt(v), Doc::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Doc, E> {
        Ok(Doc::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Doc, E> {
        Ok(Doc::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Doc, E> {
        Ok(Doc::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Doc, D::Error> {
        Doc::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(entry) = map.next_entry::<String, Doc>()? {
            entries.push(entry);
        }
        Ok(Doc::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str, format: Format, pointer: &str, value: Doc) -> String {
        let mut doc = Document::parse(text.as_bytes(), format).unwrap();
        *doc.root.pointer_mut(pointer).unwrap() = value;
        String::from_utf8(doc.to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn json_keeps_key_order_and_layout() {
        let pretty = "{\n    \"b\": 1,\n    \"a\": {\"x\": [1, 2]}\n}\n";
        assert_eq!(
            set(pretty, Format::Json, "/a/x/1", Doc::String("two".into())),
            "{\n  \"b\": 1,\n  \"a\": {\n    \"x\": [\n      1,\n      \"two\"\n    ]\n  }\n}\n"
        );
        assert_eq!(set(r#"{"b":1,"a":2}"#, Format::Json, "/a", Doc::Bool(true)), r#"{"b":1,"a":true}"#);
    }

    #[test]
    fn yaml_round_trips_strings_that_look_like_other_types() {
        let out = set("z: 1\na: old\nn: '123'\n", Format::Yaml, "/a", Doc::String("true".into()));
        let back = Document::parse(out.as_bytes(), Format::Yaml).unwrap().root;
        assert_eq!(
            back,
            Doc::Object(vec![
                ("z".into(), Doc::Int(1)),
                ("a".into(), Doc::String("true".into())),
                ("n".into(), Doc::String("123".into())),
            ])
        );
    }

    #[test]
    fn pointers_unescape_and_report_where_they_stop_matching() {
        let mut doc = Document::parse(br#"{"a/b": {"m~n": [10, 20]}, "s": "x"}"#, Format::Json).unwrap().root;
        assert_eq!(*doc.pointer_mut("/a~1b/m~0n/1").unwrap(), Doc::Int(20));
        let err = |doc: &mut Doc, p: &str| doc.pointer_mut(p).unwrap_err();
        assert!(err(&mut doc, "/nope").contains("no key \"nope\""), "{}", err(&mut doc, "/nope"));
        assert!(err(&mut doc, "/a~1b/m~0n/2").contains("index 2 is out of range"));
        assert!(err(&mut doc, "/a~1b/m~0n/01").contains("not an array index"));
        assert!(err(&mut doc, "/a~1b/m~0n/-").contains("not an array index"));
        assert!(err(&mut doc, "/s/x").contains("is a string"));
        assert!(err(&mut doc, "a").contains("start with '/'"));
    }
}
