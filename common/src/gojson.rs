//! JSON read the way Go's `encoding/json` reads it into a struct, since every config in the wild was written
//! for the Go plugins: a key matches a field exactly or else case-insensitively (`"MTU"`, `"IPAM"`), the last
//! of duplicate keys wins (document order), `null` leaves a field at its default, and keys no field takes are
//! ignored but remembered, so a typo can be logged with the nearest known key.

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::mem::ManuallyDrop;

/// A key that no field of its struct took: where it was, and the fields that struct has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// The keys from the top down to it (keys may hold dots, as `cni.dev/valid-attachments` does).
    pub path: Vec<String>,
    pub known: Vec<&'static str>,
}

impl UnknownKey {
    /// The key itself.
    pub fn name(&self) -> &str {
        self.path.last().map_or("", String::as_str)
    }
}

thread_local! {
    // Without a destructor: registering one sets up the C allocator in a plugin process (six system calls), and
    // `from_value` leaves the list empty anyway.
    static UNKNOWN: RefCell<ManuallyDrop<Vec<UnknownKey>>> = const { RefCell::new(ManuallyDrop::new(Vec::new())) };
}

/// Decode `raw` into `T` with Go's rules; also the keys no field took.
pub fn from_slice<T: DeserializeOwned>(raw: &[u8]) -> serde_json::Result<(T, Vec<UnknownKey>)> {
    let value: Value = serde_json::from_slice(raw)?;
    from_value(value)
}

/// As `from_slice`, from a parsed value.
pub fn from_value<T: DeserializeOwned>(value: Value) -> serde_json::Result<(T, Vec<UnknownKey>)> {
    UNKNOWN.with(|u| u.borrow_mut().clear());
    let decoded = T::deserialize(Go { value, path: Vec::new() });
    let unknown = UNKNOWN.with(|u| ManuallyDrop::into_inner(std::mem::take(&mut *u.borrow_mut())));
    decoded.map(|t| (t, unknown))
}

/// The known name closest to `key` (edit distance, ignoring case), if close enough to be a likely typo.
pub fn nearest<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (edit_distance(&key, &k.to_ascii_lowercase()), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A JSON value being decoded with Go's rules, and where it sits (for unknown keys).
struct Go {
    value: Value,
    path: Vec<String>,
}

/// The object's entries renamed to the struct's fields as Go matches them, in document order, the last of
/// several for one field winning; `null` entries dropped (Go leaves the field as it was).
fn match_fields(object: Map<String, Value>, fields: &'static [&'static str], path: &[String]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    for (key, value) in object {
        let field = fields
            .iter()
            .find(|f| **f == key)
            .or_else(|| fields.iter().find(|f| f.eq_ignore_ascii_case(&key)))
            .map(|f| f.to_string());
        let Some(field) = field else {
            let full = path.iter().cloned().chain([key]).collect();
            UNKNOWN.with(|u| u.borrow_mut().push(UnknownKey { path: full, known: fields.to_vec() }));
            continue;
        };
        out.retain(|(k, _)| *k != field);
        if !value.is_null() {
            out.push((field, value));
        }
    }
    out
}

struct Entries {
    parent: Vec<String>,
    entries: std::vec::IntoIter<(String, Value)>,
    pending: Option<(String, Value)>,
}

impl Entries {
    fn new(parent: &[String], entries: Vec<(String, Value)>) -> Entries {
        Entries { parent: parent.to_vec(), entries: entries.into_iter(), pending: None }
    }
}

impl<'de> MapAccess<'de> for Entries {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> serde_json::Result<Option<K::Value>> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        let k = seed.deserialize(key.clone().into_deserializer()).map(Some);
        self.pending = Some((key, value));
        k
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> serde_json::Result<V::Value> {
        let (key, value) = self.pending.take().ok_or_else(|| de::Error::custom("a value without its key"))?;
        let path = self.parent.iter().cloned().chain([key]).collect();
        seed.deserialize(Go { value, path })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct Items {
    path: Vec<String>,
    items: std::vec::IntoIter<Value>,
}

impl<'de> SeqAccess<'de> for Items {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> serde_json::Result<Option<T::Value>> {
        match self.items.next() {
            Some(value) => seed.deserialize(Go { value, path: self.path.clone() }).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

impl<'de> de::Deserializer<'de> for Go {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        match self.value {
            Value::Object(m) => visitor.visit_map(Entries::new(&self.path, m.into_iter().collect())),
            Value::Array(a) => visitor.visit_seq(Items { path: self.path, items: a.into_iter() }),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        match self.value {
            Value::Object(m) => visitor.visit_map(Entries::new(&self.path, match_fields(m, fields, &self.path))),
            // Go fills a struct from an object only (serde would also take an array, field by field).
            Value::Array(_) => Err(de::Error::invalid_type(de::Unexpected::Seq, &"a JSON object")),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> serde_json::Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        self.value.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        match self.value {
            Value::Array(a) => visitor.visit_seq(Items { path: self.path, items: a.into_iter() }),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        match self.value {
            Value::Object(m) => visitor.visit_map(Entries::new(&self.path, m.into_iter().collect())),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        visitor.visit_unit()
    }

    // Scalars are read as serde_json reads them.
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_bool(v)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_i8(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_i16(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_i32(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_i64(v)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_u8(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_u16(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_u32(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_u64(v)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_f32(v)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_f64(v)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_char(v)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_str(v)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_string(v)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_bytes(v)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_byte_buf(v)
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_unit(v)
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_unit_struct(name, v)
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> serde_json::Result<V::Value> {
        self.value.deserialize_identifier(v)
    }

    forward_to_deserialize_any! { i128 u128 tuple tuple_struct }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Ipam {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        subnet: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Conf {
        #[serde(default)]
        mtu: Option<u32>,
        #[serde(rename = "ipMasq", default)]
        ip_masq: bool,
        #[serde(default)]
        ipam: Option<Ipam>,
        #[serde(default)]
        list: Vec<Ipam>,
        #[serde(rename = "logFile", alias = "pluginLogFile", default)]
        log_file: Option<String>,
    }

    fn go(json: &str) -> (Conf, Vec<UnknownKey>) {
        from_slice(json.as_bytes()).unwrap()
    }

    #[test]
    fn keys_match_case_insensitively_at_every_level() {
        let (c, unknown) = go(r#"{"MTU": 1400, "ipmasq": true, "IPAM": {"Type": "host-local", "Subnet": "10.0.0.0/8"},
            "List": [{"TYPE": "x"}]}"#);
        assert_eq!(c.mtu, Some(1400));
        assert!(c.ip_masq);
        assert_eq!(c.ipam, Some(Ipam { kind: "host-local".into(), subnet: Some("10.0.0.0/8".into()) }));
        assert_eq!(c.list, [Ipam { kind: "x".into(), subnet: None }]);
        assert!(unknown.is_empty(), "{unknown:?}");
    }

    #[test]
    fn the_last_duplicate_wins_and_null_leaves_the_default() {
        assert_eq!(go(r#"{"mtu": 1400, "mtu": 1500}"#).0.mtu, Some(1500));
        assert_eq!(go(r#"{"MTU": 1400, "mtu": 1500}"#).0.mtu, Some(1500));
        assert_eq!(go(r#"{"mtu": 1500, "MTU": 1400}"#).0.mtu, Some(1400));
        assert!(!go(r#"{"ipMasq": null}"#).0.ip_masq);
    }

    #[test]
    fn an_exact_match_and_aliases_count() {
        assert_eq!(go(r#"{"pluginLogFile": "/x"}"#).0.log_file.as_deref(), Some("/x"));
        assert_eq!(go(r#"{"PluginLogFile": "/y"}"#).0.log_file.as_deref(), Some("/y"));
    }

    #[test]
    fn unknown_keys_are_ignored_and_reported_with_their_path() {
        let (c, unknown) = go(r#"{"mtuu": 1, "ipam": {"subnett": "x"}}"#);
        assert_eq!(c.mtu, None);
        let paths: Vec<String> = unknown.iter().map(|u| u.path.join(".")).collect();
        assert_eq!(paths, ["mtuu", "ipam.subnett"]);
        assert_eq!(unknown[1].name(), "subnett");
        assert_eq!(nearest("mtuu", unknown[0].known.iter().copied()), Some("mtu"));
        assert_eq!(nearest("subnett", unknown[1].known.iter().copied()), Some("subnet"));
        assert_eq!(nearest("completely-else", ["mtu", "ipam"]), None);
    }

    #[test]
    fn wrong_types_are_still_errors() {
        assert!(from_slice::<Conf>(br#"{"MTU": "x"}"#).is_err());
        assert!(from_slice::<Conf>(br#"{"ipam": 7}"#).is_err());
        assert!(from_slice::<Conf>(b"[1]").is_err());
    }
}
