//! Typed reading of the YAML tree with serde, collecting every error instead of stopping at the first.
//!
//! serde's derived code gives up at the first bad value. To report all of a file's errors at
//! once, every error is recorded with its key path and position, the offending key is then
//! treated as absent, and the value is read again; the raw config types make every key optional
//! so that skipping one never creates a second, misleading error.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use crate::checks::yaml::{Node, NodeKind, Pos};

/// One error found while reading typed values.
#[derive(Debug, Clone)]
pub struct Found {
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

#[derive(Default)]
pub struct Recorder {
    found: RefCell<Vec<Found>>,
    /// (path, message) of everything in `found`: a set, so that recording stays linear in a
    /// file of thousands of errors.
    seen: RefCell<HashSet<(String, String)>>,
    skip: RefCell<HashSet<String>>,
}

impl Recorder {
    fn record(&self, pos: Pos, path: &str, message: String) {
        let mut found = self.found.borrow_mut();
        if self
            .seen
            .borrow_mut()
            .insert((path.to_string(), message.clone()))
        {
            found.push(Found {
                pos,
                path: path.to_string(),
                message,
            });
        }
        self.skip.borrow_mut().insert(path.to_string());
    }

    fn skipped(&self, path: &str) -> bool {
        self.skip.borrow().contains(path)
    }

    pub fn into_found(self) -> Vec<Found> {
        self.found.into_inner()
    }
}

/// Reads `node` (standing at `path`) as a `T`. Returns `None` when anything was wrong; every
/// problem is then in the recorder.
pub fn read<T: DeserializeOwned>(node: &Node, path: &str, recorder: &Recorder) -> Option<T> {
    let start = recorder.found.borrow().len();
    // Each failed pass records at least one new error and skips its key, so the passes end.
    // A pass stops at the first bad item of a list or mapping, so each bad item costs one
    // pass over the value: the cap keeps a list of 20,000 bad items to 64 passes (and 64 of
    // its errors, more than are shown), and guards against a value that fails without saying
    // where.
    for _ in 0..64 {
        let before = recorder.found.borrow().len();
        let de = De {
            node,
            path: path.to_string(),
            rec: recorder,
        };
        match T::deserialize(de) {
            Ok(value) => {
                return (recorder.found.borrow().len() == start).then_some(value);
            }
            Err(Error::Recorded) if recorder.found.borrow().len() > before => continue,
            Err(Error::Recorded) => return None,
            Err(Error::Custom(message)) => {
                recorder.record(node.pos, path, message);
                return None;
            }
        }
    }
    None
}

#[derive(Debug)]
pub enum Error {
    /// Already in the recorder with its position.
    Recorded,
    /// Raised by a `Deserialize` impl; the caller attaches the position of the value.
    Custom(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Recorded => f.write_str("error recorded"),
            Error::Custom(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Custom(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        Error::Custom(format!(
            "expected {exp}, found {}",
            describe_unexpected(&unexp)
        ))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Error::Custom(format!(
            "unknown value `{variant}`; accepted: {}",
            expected.join(", ")
        ))
    }
}

fn describe_unexpected(u: &de::Unexpected<'_>) -> String {
    match u {
        de::Unexpected::Str(s) => format!("\"{s}\""),
        de::Unexpected::Unsigned(n) => n.to_string(),
        de::Unexpected::Signed(n) => n.to_string(),
        de::Unexpected::Float(n) => n.to_string(),
        de::Unexpected::Bool(b) => b.to_string(),
        de::Unexpected::Map => "a mapping".into(),
        de::Unexpected::Seq => "a list".into(),
        de::Unexpected::Unit => "null".into(),
        other => other.to_string(),
    }
}

struct De<'a> {
    node: &'a Node,
    path: String,
    rec: &'a Recorder,
}

impl<'a> De<'a> {
    fn fail<T>(&self, message: String) -> Result<T, Error> {
        self.rec.record(self.node.pos, &self.path, message);
        Err(Error::Recorded)
    }

    fn scalar(&self) -> Option<(&'a str, bool)> {
        match &self.node.kind {
            NodeKind::Scalar { value, plain } => Some((value.as_str(), *plain)),
            _ => None,
        }
    }

    fn expect(&self, what: &str) -> Result<&'a str, Error> {
        match self.scalar() {
            Some((v, _)) if !self.node.is_null() => Ok(v),
            _ => self.fail(format!("expected {what}, found {}", self.node.describe())),
        }
    }

    fn child(&self, node: &'a Node, path: String) -> De<'a> {
        De {
            node,
            path,
            rec: self.rec,
        }
    }

    /// Runs a child's deserialization and pins a positionless error onto the child's value.
    fn within<T>(child: De<'a>, f: impl FnOnce(De<'a>) -> Result<T, Error>) -> Result<T, Error> {
        let (pos, path, rec) = (child.node.pos, child.path.clone(), child.rec);
        match f(child) {
            Err(Error::Custom(message)) => {
                rec.record(pos, &path, message);
                Err(Error::Recorded)
            }
            other => other,
        }
    }

    fn integer<T: TryFrom<i128>>(&self, what: &str) -> Result<T, Error> {
        let text = self.expect(what)?;
        let parsed = text.replace('_', "").parse::<i128>().ok();
        match parsed.and_then(|n| T::try_from(n).ok()) {
            Some(n) if self.scalar().is_some_and(|(_, plain)| plain) => Ok(n),
            _ => self.fail(format!("expected {what}, found {}", self.node.describe())),
        }
    }
}

macro_rules! integer_methods {
    ($($method:ident $visit:ident $ty:ty, $what:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let n: $ty = self.integer($what)?;
            visitor.$visit(n)
        }
    )*};
}

impl<'de, 'a> de::Deserializer<'de> for De<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Seq(_) => self.deserialize_seq(visitor),
            NodeKind::Map(_) => self.deserialize_map(visitor),
            NodeKind::Scalar { .. } if self.node.is_null() => visitor.visit_unit(),
            NodeKind::Scalar { value, plain: true } => {
                if value == "true" || value == "false" {
                    visitor.visit_bool(value == "true")
                } else if let Ok(n) = value.parse::<i64>() {
                    visitor.visit_i64(n)
                } else if let Ok(n) = value.parse::<u64>() {
                    // Above i64: still a whole number, not a rounded float.
                    visitor.visit_u64(n)
                } else if let Some(f) = value.parse::<f64>().ok().filter(|f| f.is_finite()) {
                    // `1e999` and `inf` stay text: no number the file could mean.
                    visitor.visit_f64(f)
                } else {
                    visitor.visit_str(value)
                }
            }
            NodeKind::Scalar { value, .. } => visitor.visit_str(value),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.scalar() {
            Some(("true", true)) => visitor.visit_bool(true),
            Some(("false", true)) => visitor.visit_bool(false),
            _ => self.fail(format!(
                "expected true or false, found {}",
                self.node.describe()
            )),
        }
    }

    integer_methods! {
        deserialize_i8 visit_i8 i8, "an integer";
        deserialize_i16 visit_i16 i16, "an integer";
        deserialize_i32 visit_i32 i32, "an integer";
        deserialize_i64 visit_i64 i64, "an integer";
        deserialize_u8 visit_u8 u8, "a whole number from 0 to 255";
        deserialize_u16 visit_u16 u16, "a whole number from 0 to 65535";
        deserialize_u32 visit_u32 u32, "a whole number (0 or more)";
        deserialize_u64 visit_u64 u64, "a whole number (0 or more)";
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let text = self.expect("a number")?;
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => visitor.visit_f64(f),
            _ => self.fail(format!("expected a number, found {}", self.node.describe())),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let text = self.expect("a string")?;
        visitor.visit_str(text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.kind {
            NodeKind::Seq(items) => visitor.visit_seq(Seq {
                items: items.iter().enumerate(),
                de: &self,
            }),
            _ => self.fail(format!("expected a list, found {}", self.node.describe())),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.mapping(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.mapping(Some(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let text = self.expect(&format!("one of {}", variants.join(", ")))?;
        if !variants.contains(&text) {
            return self.fail(format!(
                "unknown value `{text}`; accepted: {}",
                variants.join(", ")
            ));
        }
        visitor
            .visit_enum(text.into_deserializer())
            .map_err(|e: de::value::Error| Error::Custom(e.to_string()))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

impl<'a> De<'a> {
    fn mapping<'de, V: Visitor<'de>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let NodeKind::Map(entries) = &self.node.kind else {
            if self.node.is_null() && fields.is_some() {
                // `backup:` with nothing after it reads as an empty block.
                return visitor.visit_map(Map {
                    entries: Vec::new().into_iter(),
                    value: None,
                    de: &self,
                });
            }
            return self.fail(format!(
                "expected a mapping of `key: value`, found {}",
                self.node.describe()
            ));
        };
        let mut kept = Vec::with_capacity(entries.len());
        for entry in entries {
            let path = join(&self.path, &entry.key);
            if self.rec.skipped(&path) {
                continue;
            }
            if let Some(fields) = fields
                && !fields.contains(&entry.key.as_str())
            {
                self.rec.record(
                    entry.key_pos,
                    &path,
                    format!(
                        "unknown key `{}`; accepted keys here: {}",
                        entry.key,
                        fields.join(", ")
                    ),
                );
                continue;
            }
            kept.push((entry, path));
        }
        visitor.visit_map(Map {
            entries: kept.into_iter(),
            value: None,
            de: &self,
        })
    }
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

struct Seq<'a, 'b, I> {
    items: I,
    de: &'b De<'a>,
}

impl<'de, 'a, 'b, I: Iterator<Item = (usize, &'a Node)>> de::SeqAccess<'de> for Seq<'a, 'b, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        for (i, node) in self.items.by_ref() {
            let path = format!("{}[{i}]", self.de.path);
            if self.de.rec.skipped(&path) {
                continue;
            }
            let child = self.de.child(node, path);
            return De::within(child, |c| seed.deserialize(c)).map(Some);
        }
        Ok(None)
    }
}

struct Map<'a, 'b, I> {
    entries: I,
    value: Option<(&'a Node, String)>,
    de: &'b De<'a>,
}

impl<'de, 'a, 'b, I> de::MapAccess<'de> for Map<'a, 'b, I>
where
    I: Iterator<Item = (&'a crate::checks::yaml::Entry, String)>,
{
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((entry, path)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((&entry.value, path));
        seed.deserialize(entry.key.as_str().into_deserializer())
            .map(Some)
            .map_err(|e: de::value::Error| Error::Custom(e.to_string()))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        let (node, path) = self
            .value
            .take()
            .expect("serde asks for a value only after its key");
        let child = self.de.child(node, path);
        De::within(child, |c| seed.deserialize(c))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::config::yaml::parse;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: Option<u32>,
        flag: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: Option<String>,
        inner: Option<Inner>,
        list: Option<Vec<u8>>,
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Quick,
        Full,
    }

    fn errors_of(text: &str) -> Vec<(String, usize, usize, String)> {
        let (root, _) = parse(text).unwrap();
        let rec = Recorder::default();
        let value: Option<Outer> = read(&root, "", &rec);
        let found = rec.into_found();
        assert_eq!(value.is_some(), found.is_empty());
        found
            .into_iter()
            .map(|f| (f.path, f.pos.line, f.pos.column, f.message))
            .collect()
    }

    #[test]
    fn a_good_document_reads_without_errors() {
        let (root, _) =
            parse("name: x\ninner: {count: 3, flag: true}\nlist: [1, 2]\nmode: full\n").unwrap();
        let rec = Recorder::default();
        let v: Outer = read(&root, "", &rec).unwrap();
        assert_eq!(v.inner.unwrap().count, Some(3));
        assert_eq!(v.mode, Some(Mode::Full));
    }

    #[test]
    fn every_error_is_reported_with_its_path_and_position() {
        let found = errors_of(
            "name: x\nbogus: 1\ninner:\n  count: seven\n  flag: yes\n  other: 2\nlist: [1, 300]\nmode: fast\n",
        );
        let paths: Vec<&str> = found.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(paths.len(), 6, "expected six errors, got {found:#?}");
        for p in [
            "bogus",
            "inner.count",
            "inner.flag",
            "inner.other",
            "list[1]",
            "mode",
        ] {
            assert!(paths.contains(&p), "missing {p} in {found:#?}");
        }
        let count = found.iter().find(|f| f.0 == "inner.count").unwrap();
        assert_eq!((count.1, count.2), (4, 10));
        assert!(count.3.contains("seven"), "{}", count.3);
        let bogus = found.iter().find(|f| f.0 == "bogus").unwrap();
        assert!(
            bogus
                .3
                .contains("accepted keys here: name, inner, list, mode")
        );
        let mode = found.iter().find(|f| f.0 == "mode").unwrap();
        assert!(mode.3.contains("accepted: quick, full"), "{}", mode.3);
        let flag = found.iter().find(|f| f.0 == "inner.flag").unwrap();
        assert!(flag.3.contains("true or false"), "{}", flag.3);
    }

    #[test]
    fn a_quoted_number_is_not_an_integer() {
        let found = errors_of("inner: {count: \"3\"}\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].3.contains("string \"3\""), "{}", found[0].3);
    }
}
