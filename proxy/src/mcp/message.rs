//! JSON-RPC messages as the gateway sees them: just enough of each to route it, the rest kept
//! as received; and the MCP names (headers, `_meta` keys) the gateway reads and writes.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use http::HeaderName;

/// The session header, in the spelling of 2025-06-18 (header names are case-insensitive).
pub const SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// The protocol version header.
pub const PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// The `_meta` key of a stateless request's protocol version.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The `_meta` key of a stateless request's client capabilities.
pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// The newest protocol version of the `initialize` era.
pub const LATEST_LEGACY: &str = "2025-11-25";

/// The routing-relevant parts of one JSON-RPC message.
#[derive(Deserialize, Debug, Default)]
pub struct Envelope {
    /// Request or response id.
    #[serde(default)]
    pub id: Option<Value>,
    /// Method, for requests and notifications.
    #[serde(default)]
    pub method: Option<String>,
    /// Parameters.
    #[serde(default, deserialize_with = "params")]
    pub params: Option<Params>,
    /// Present on success responses.
    #[serde(default)]
    pub result: Option<serde::de::IgnoredAny>,
    /// Present on error responses.
    #[serde(default)]
    pub error: Option<serde::de::IgnoredAny>,
}

/// The parameters routing looks at.
#[derive(Deserialize, Debug, Default)]
pub struct Params {
    /// Tool or prompt name.
    #[serde(default)]
    pub name: Option<String>,
    /// Resource URI.
    #[serde(default)]
    pub uri: Option<String>,
    /// Pagination cursor.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Tool arguments, as sent (the audit trail measures them).
    #[serde(default)]
    pub arguments: Option<Box<serde_json::value::RawValue>>,
    /// Request metadata (stateless requests carry their protocol version here).
    #[serde(default, rename = "_meta", deserialize_with = "meta")]
    pub meta: Option<Meta>,
}

/// The `_meta` keys routing looks at.
#[derive(Deserialize, Debug, Default)]
pub struct Meta {
    /// The stateless era's per-request protocol version.
    #[serde(default, rename = "io.modelcontextprotocol/protocolVersion")]
    pub protocol_version: Option<String>,
    /// The stateless era's client capabilities (required there; not read here).
    #[serde(default, rename = "io.modelcontextprotocol/clientCapabilities")]
    pub client_capabilities: Option<serde::de::IgnoredAny>,
}

/// `params` and `params._meta` are objects (or null) in MCP; serde would also take an array
/// for a struct, which the gateway's rewrites could not handle.
fn params<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Params>, D::Error> {
    d.deserialize_option(ObjectOrNull::new("params to be a JSON object"))
}

fn meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Meta>, D::Error> {
    d.deserialize_option(ObjectOrNull::new("params._meta to be a JSON object"))
}

/// Deserializes a `T` from a JSON object only; null is None.
struct ObjectOrNull<T> {
    expected: &'static str,
    into: std::marker::PhantomData<T>,
}

impl<T> ObjectOrNull<T> {
    fn new(expected: &'static str) -> Self {
        Self {
            expected,
            into: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOrNull<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
    }
}

/// Why a body is not one JSON-RPC message, with the JSON-RPC error code that says so.
#[derive(Debug)]
pub struct Malformed {
    /// -32700 for what is not JSON, -32600 for JSON that is not one message MCP accepts.
    pub code: i64,
    /// What is wrong, and where.
    pub message: String,
    /// The message's id, when it could be read.
    pub id: Option<Value>,
}

impl Malformed {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: crate::error::code::INVALID_REQUEST,
            message: message.into(),
            id: None,
        }
    }
}

/// Just the id of a message whose other fields are wrong.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<Value>,
}

/// What kind of message it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// Has a method and an id.
    Request,
    /// Has a method and no id.
    Notification,
    /// Has an id and a result or error.
    Response,
    /// Anything else.
    Invalid,
}

impl Envelope {
    /// Parses a message; arrays (2025-03-26 batches), non-objects, and fields of the wrong
    /// type are errors.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => serde_json::from_slice(bytes).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => Malformed {
                    id: serde_json::from_slice::<IdOnly>(bytes)
                        .ok()
                        .and_then(|m| m.id),
                    ..Malformed::invalid(e.to_string())
                },
                _ => Malformed {
                    code: crate::error::code::PARSE_ERROR,
                    message: e.to_string(),
                    id: None,
                },
            }),
            Some(b'[') => Err(Malformed::invalid(
                "JSON-RPC batches are not part of MCP since 2025-06-18; send one message per request",
            )),
            _ => Err(Malformed {
                code: crate::error::code::PARSE_ERROR,
                message: "expected a JSON object".into(),
                id: None,
            }),
        }
    }

    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match (&self.method, &self.id) {
            (Some(_), Some(id)) if !id.is_null() => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) if self.result.is_some() || self.error.is_some() => Kind::Response,
            _ => Kind::Invalid,
        }
    }

    /// The method, or "".
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or_default()
    }

    /// The protocol version in `_meta`, if any.
    pub fn meta_version(&self) -> Option<&str> {
        self.params
            .as_ref()?
            .meta
            .as_ref()?
            .protocol_version
            .as_deref()
    }

    /// `params.name`, or "".
    pub fn name(&self) -> &str {
        self.params
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .unwrap_or_default()
    }
}

/// `map[key]` as an object to write into: created when absent or null; None when it holds
/// anything else (a peer's malformed message is never indexed into, which would panic).
pub fn child_object<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// A message's `params` to write into (see [`child_object`]); None when the message is not an
/// object or its `params` is not one.
pub fn params_mut(message: &mut Value) -> Option<&mut Map<String, Value>> {
    child_object(message.as_object_mut()?, "params")
}

/// `json` (an object) with the string `value` at `path` (member names from the top), every
/// other member copied as it came: what the gateway renames in a message it forwards
/// without building it as a [`Value`]. A missing member is added; a step that is not an
/// object is an error.
pub fn with_string_at(json: &[u8], path: &[&str], value: &str) -> serde_json::Result<Vec<u8>> {
    let Some((name, rest)) = path.split_first() else {
        return serde_json::to_vec(value);
    };
    let Members(members) = serde_json::from_slice(json)?;
    let mut out = Vec::with_capacity(json.len() + value.len());
    let mut found = false;
    out.push(b'{');
    for (i, (member, raw)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, member)?;
        out.push(b':');
        if member == name {
            found = true;
            out.extend(with_string_at(raw.get().as_bytes(), rest, value)?);
        } else {
            out.extend_from_slice(raw.get().as_bytes());
        }
    }
    if !found {
        if !members.is_empty() {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name)?;
        out.push(b':');
        out.extend(with_string_at(b"{}", rest, value)?);
    }
    out.push(b'}');
    Ok(out)
}

/// An object's members in order: names decoded, values as their JSON text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let kind = |s: &str| Envelope::parse(s.as_bytes()).unwrap().kind();
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Kind::Request
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Kind::Notification
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Kind::Response
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"x"}}"#),
            Kind::Response
        );
        assert_eq!(kind(r#"{"jsonrpc":"2.0"}"#), Kind::Invalid);
        assert!(Envelope::parse(b"[]").is_err());
    }

    #[test]
    fn a_string_is_set_and_the_rest_kept_as_it_came() {
        let message = br#"{"jsonrpc":"2.0", "id":7,"method":"tools/call","params":{"name":"gh_search","arguments":{"q":"a\u00e9 ","n":1.50}}}"#;
        let renamed = with_string_at(message, &["params", "name"], "search").unwrap();
        assert_eq!(
            std::str::from_utf8(&renamed).unwrap(),
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"q":"a\u00e9 ","n":1.50}}}"#
        );
        let added = with_string_at(
            br#"{"params":{"ref":{}}}"#,
            &["params", "ref", "uri"],
            "a\"b",
        )
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&added).unwrap(),
            serde_json::json!({"params": {"ref": {"uri": "a\"b"}}})
        );
        let escaped = with_string_at(br#"{"p\u0061rams":{}}"#, &["params", "name"], "x").unwrap();
        assert_eq!(
            std::str::from_utf8(&escaped).unwrap(),
            r#"{"params":{"name":"x"}}"#
        );
        assert!(with_string_at(br#"{"params":[1]}"#, &["params", "name"], "x").is_err());
    }
}
