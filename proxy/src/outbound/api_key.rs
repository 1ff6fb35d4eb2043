//! API keys as headers: a key fills the `{{API_KEY}}` of the server's template in its header,
//! or a JSON object gives whole headers. Values are marked sensitive so no log or debug
//! output of a header map shows them.

use http::{HeaderName, HeaderValue};

/// The placeholder a template's key replaces.
pub const PLACEHOLDER: &str = "{{API_KEY}}";
/// The longest key a user may enter.
pub const MAX_KEY_BYTES: usize = 4096;

/// The header carrying `key` as `header`, built with `template` (the bare key without one).
/// The error says what is wrong without quoting the key.
pub fn header(
    header: &str,
    template: Option<&str>,
    key: &str,
) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::try_from(header).map_err(|e| format!("header name {header:?}: {e}"))?;
    let value = match template {
        Some(t) => t.replace(PLACEHOLDER, key),
        None => key.to_owned(),
    };
    Ok((name, sensitive(&value, header)?))
}

/// The headers of a JSON object of header name -> value (an AuthOverride without a key).
pub fn headers(json: &[u8]) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|_| "not a JSON object of headers".to_owned())?;
    object
        .iter()
        .map(|(name, value)| {
            let header =
                HeaderName::try_from(name).map_err(|e| format!("header name {name:?}: {e}"))?;
            let text = value
                .as_str()
                .ok_or_else(|| format!("the value of header {name} is not a string"))?;
            Ok((header, sensitive(text, name)?))
        })
        .collect()
}

/// Checks a key a person entered: not empty, not too long, one line of visible text.
pub fn check_entered(key: &str) -> Result<&str, String> {
    let key = key.trim();
    if key.is_empty() {
        return Err("enter the key".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!("the key is longer than {MAX_KEY_BYTES} bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err("the key must be one line of text without control characters".into());
    }
    Ok(key)
}

fn sensitive(value: &str, header: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::try_from(value)
        .map_err(|_| format!("the value for header {header} is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_the_key_and_values_are_sensitive() {
        let (name, value) = header("Authorization", Some("Bearer {{API_KEY}}"), "k1").unwrap();
        assert_eq!(name, "authorization");
        assert_eq!(value, "Bearer k1");
        assert!(value.is_sensitive());
        let (_, bare) = header("X-API-Key", None, "k2").unwrap();
        assert_eq!(bare, "k2");
    }

    #[test]
    fn errors_never_quote_the_key() {
        let error = header("X-Key", None, "secret\nvalue").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
        let error = headers(br#"{"X-Key": "a\u0000b"}"#).unwrap_err();
        assert!(
            error.contains("X-Key") && !error.contains("a\u{0}b"),
            "{error}"
        );
    }

    #[test]
    fn header_objects() {
        let list = headers(br#"{"X-One": "1", "X-Two": "2"}"#).unwrap();
        assert_eq!(list.len(), 2);
        assert!(headers(br#"{"X-One": 1}"#).is_err());
        assert!(headers(b"[1]").is_err());
    }

    #[test]
    fn entered_keys_are_one_line() {
        assert_eq!(check_entered("  abc \n").unwrap(), "abc");
        assert!(check_entered("").is_err());
        assert!(check_entered("a\u{7}b").is_err());
        assert!(check_entered(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }
}
