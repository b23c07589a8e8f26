//! The key paths the jobs file accepts, read from the raw serde structs rather than listed by hand.
//!
//! serde's derived `Deserialize` passes each struct's field names to `deserialize_struct`. A
//! probe deserializer records those names and, one field at a time, walks into each field's
//! type, so the list below always says exactly what the parser accepts: the reference in
//! `docs/configuration.md` and `jobs.example.yaml` are tested against it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::de::join;

/// How a job's name stands in a key path: `jobs.<name>.backup.to`.
pub const JOB_PATH: &str = "jobs.<name>";
/// How a list's items stand in a key path: `jobs.<name>.budget.limits[].usd`.
pub const ITEM: &str = "[]";

/// Every key path of the jobs file, sorted: `gateway.database`, `jobs.<name>.backup.keep.daily`,
/// `jobs.<name>.budget.limits[].warn_at`, ... Mappings of free names (`pricing.aliases`) and the
/// job names under `jobs` are not keys.
pub fn accepted_keys() -> Vec<String> {
    let mut keys = explore::<super::raw::Top>("");
    // The loader reads `jobs` entry by entry as `RawJob`s, and so does this.
    keys.extend(explore::<crate::jobs::RawJob>(JOB_PATH));
    // `remotes` maps names to remotes, as `jobs` does.
    keys.extend(explore::<crate::remote::RawRemote>(
        crate::remote::REMOTE_PATH,
    ));
    keys.into_iter().collect()
}

/// Deeper than any real nesting: stops a recursive type from walking forever.
const MAX_DEPTH: usize = 16;

/// The key paths under `prefix` that `T` accepts.
fn explore<T: DeserializeOwned>(prefix: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    // Each target is a chain of field names leading to a value whose fields are still unknown.
    let mut pending: Vec<Vec<&'static str>> = vec![Vec::new()];
    while let Some(target) = pending.pop() {
        let found = RefCell::new(None);
        // The probe never produces a whole value: it errs out of every leaf and of every field
        // it did not walk into. What it learned is in `found`.
        let _ = T::deserialize(Probe {
            target: &target,
            path: prefix.to_string(),
            found: &found,
        });
        let Some((path, fields)) = found.into_inner() else {
            continue;
        };
        for field in fields {
            keys.insert(join(&path, field));
            if target.len() < MAX_DEPTH {
                let mut next = target.clone();
                next.push(field);
                pending.push(next);
            }
        }
    }
    keys
}

/// What the probe found at the end of its target: the struct's path and its field names.
type Found = RefCell<Option<(String, &'static [&'static str])>>;

struct Probe<'a> {
    /// The fields still to walk into before recording.
    target: &'a [&'static str],
    path: String,
    found: &'a Found,
}

#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

impl Probe<'_> {
    fn leaf<T>(self) -> Result<T, Stop> {
        Err(Stop(format!("{} holds a value, not keys", self.path)))
    }
}

macro_rules! leaves {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
            self.leaf()
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    leaves! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_bytes deserialize_byte_buf deserialize_unit deserialize_identifier
        deserialize_ignored_any
        // A mapping of free names (`aliases`) holds values, not keys.
        deserialize_map
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.leaf()
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        // One item stands for all: the keys of a list's items are the same for each.
        let path = format!("{}{ITEM}", self.path);
        visitor.visit_seq(OneItem {
            item: Some(Probe { path, ..self }),
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let Some((&next, rest)) = self.target.split_first() else {
            *self.found.borrow_mut() = Some((self.path, fields));
            return visitor.visit_map(OneField { field: None });
        };
        let path = join(&self.path, next);
        visitor.visit_map(OneField {
            field: Some((
                next,
                Probe {
                    target: rest,
                    path,
                    found: self.found,
                },
            )),
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        // The variants of a value (`schema: apantli`), not keys.
        self.leaf()
    }
}

/// A struct seen as a mapping holding only the field being walked into.
struct OneField<'a> {
    field: Option<(&'static str, Probe<'a>)>,
}

impl<'de> de::MapAccess<'de> for OneField<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match &self.field {
            Some((name, _)) => seed.deserialize((*name).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Stop> {
        let (_, probe) = self
            .field
            .take()
            .ok_or_else(|| Stop("serde asked for a value before its key".into()))?;
        seed.deserialize(probe)
    }
}

/// A list seen as holding exactly one item.
struct OneItem<'a> {
    item: Option<Probe<'a>>,
}

impl<'de> de::SeqAccess<'de> for OneItem<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        match self.item.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Top {
        name: Option<String>,
        inner: Option<Inner>,
        items: Option<Vec<Item>>,
        tags: Option<Vec<String>>,
        aliases: Option<BTreeMap<String, String>>,
        required: Inner,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
        deeper: Option<Deeper>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Deeper {
        flag: bool,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Item {
        #[serde(rename = "usd")]
        amount: f64,
    }

    #[test]
    fn walks_structs_options_lists_and_required_fields() {
        let keys: Vec<String> = explore::<Top>("top").into_iter().collect();
        assert_eq!(
            keys,
            [
                "top.aliases",
                "top.inner",
                "top.inner.count",
                "top.inner.deeper",
                "top.inner.deeper.flag",
                "top.items",
                "top.items[].usd",
                "top.name",
                "top.required",
                "top.required.count",
                "top.required.deeper",
                "top.required.deeper.flag",
                "top.tags",
            ]
        );
    }

    #[test]
    fn the_jobs_file_keys_include_every_level_and_kind() {
        let keys = accepted_keys();
        for key in [
            "gateway.database",
            "gateway.columns.payload",
            "alerts.email.smtp.password_env",
            "jobs",
            "jobs.<name>.schedule",
            "jobs.<name>.backup.keep.within_daily",
            "jobs.<name>.budget.limits[].warn_at",
            "jobs.<name>.logrotate.notify.pid_file",
            "jobs.<name>.health.backup_max_age.job",
            "jobs.<name>.pricing.aliases",
        ] {
            assert!(
                keys.iter().any(|k| k == key),
                "{key} missing from {keys:#?}"
            );
        }
        assert!(
            !keys
                .iter()
                .any(|k| k.starts_with("jobs.<name>.pricing.aliases."))
        );
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, keys, "sorted and without duplicates");
    }
}
