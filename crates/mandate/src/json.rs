//! Strict JSON objects for JOSE headers and claims: duplicate member names are refused at
//! every depth (RFC 8725 §3.2 warns that parsers disagree on which duplicate wins).

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why bytes are not a strict JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrictJsonError {
    /// Not JSON at all (syntax, UTF-8, nesting deeper than serde_json's limit of 128).
    Syntax,
    /// Valid JSON, but not an object.
    NotObject,
    /// An object with the same member name twice.
    DuplicateMember,
}

/// Parses `bytes` as one JSON object with no duplicate member names at any depth.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictJsonError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictSeed(&duplicate)
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value))
        .map_err(|_| {
            if duplicate.get() {
                StrictJsonError::DuplicateMember
            } else {
                StrictJsonError::Syntax
            }
        })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(StrictJsonError::NotObject),
    }
}

#[derive(Clone, Copy)]
struct StrictSeed<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                self.0.set(true);
                return Err(A::Error::custom("duplicate member name"));
            }
            let value = access.next_value_seed(self)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec4_duplicate_member_names_are_refused_at_every_depth() {
        assert!(parse_object(br#"{"a":1,"b":{"c":[{"d":1}]}}"#).is_ok());
        assert_eq!(
            parse_object(br#"{"aud":"a","aud":"b"}"#),
            Err(StrictJsonError::DuplicateMember)
        );
        assert_eq!(
            parse_object(br#"{"s":{"x":1,"x":1}}"#),
            Err(StrictJsonError::DuplicateMember)
        );
        assert_eq!(
            parse_object(br#"{"s":[{"x":1,"x":2}]}"#),
            Err(StrictJsonError::DuplicateMember)
        );
        // The same name spelled with an escape is the same name.
        assert_eq!(
            parse_object(br#"{"aud":"a","\u0061ud":"b"}"#),
            Err(StrictJsonError::DuplicateMember)
        );
    }

    #[test]
    fn strict_json_refuses_non_objects_bombs_and_trailing_bytes() {
        assert_eq!(parse_object(b"[1]"), Err(StrictJsonError::NotObject));
        assert_eq!(parse_object(b"{} {}"), Err(StrictJsonError::Syntax));
        assert_eq!(
            parse_object(b"\xef\xbb\xbf{}"),
            Err(StrictJsonError::Syntax)
        );
        assert_eq!(
            parse_object(b"{\"a\":\"\xff\"}"),
            Err(StrictJsonError::Syntax)
        );
        let bomb = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_object(bomb.as_bytes()), Err(StrictJsonError::Syntax));
    }
}
