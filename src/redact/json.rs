//! Redaction of JSON keys inside archived payload text, keeping every other byte as the gateway wrote it.
//!
//! The payload is scanned, not parsed and re-serialized: key order, spacing and number
//! spellings stay exactly as stored, and text that is not valid JSON (truncated payloads) is
//! still scrubbed wherever a `"key": value` pair can be recognised.

use std::borrow::Cow;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "\"[redacted]\"";

/// `text` with the value of every object member named in `keys`, at any depth, replaced by
/// `"[redacted]"`.
pub fn redact<'a>(text: &'a str, keys: &[String]) -> Cow<'a, str> {
    // Cheap way out for most payloads; a key could also be spelled with \u escapes.
    if keys.is_empty() || !(text.contains("\\u") || keys.iter().any(|k| text.contains(k.as_str())))
    {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let end = string_end(bytes, i);
        let colon = skip_space(bytes, end);
        if colon < bytes.len() && bytes[colon] == b':' && is_listed(&text[i..end], keys) {
            let value = skip_space(bytes, colon + 1);
            let value_end = value_end(bytes, value);
            out.push_str(&text[copied..value]);
            out.push_str(REDACTED);
            copied = value_end;
            i = value_end;
        } else {
            i = end;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Whether the quoted string token `token` (quotes included) decodes to one of `keys`.
fn is_listed(token: &str, keys: &[String]) -> bool {
    let inner = &token[1..token.len().saturating_sub(1).max(1)];
    if !inner.contains('\\') {
        return keys.iter().any(|k| k == inner);
    }
    match serde_json::from_str::<String>(token) {
        Ok(decoded) => keys.contains(&decoded),
        Err(_) => false,
    }
}

/// The index just past the string starting with the quote at `start` (or the end of input).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The index just past the JSON value starting at `start`: a string, a balanced object or
/// array, or a bare literal up to the next delimiter.
fn value_end(bytes: &[u8], start: usize) -> usize {
    match bytes.get(start) {
        None => start,
        Some(b'"') => string_end(bytes, start),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = start;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => {
                        i = string_end(bytes, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            bytes.len()
        }
        Some(_) => {
            let mut i = start;
            while i < bytes.len()
                && !matches!(bytes[i], b',' | b'}' | b']')
                && !bytes[i].is_ascii_whitespace()
            {
                i += 1;
            }
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn redaction_table() {
        let cases = [
            // (input, keys, expected)
            (
                r#"{"api_key": "sk-abc", "model": "x"}"#,
                &["api_key"][..],
                r#"{"api_key": "[redacted]", "model": "x"}"#,
            ),
            (
                r#"{"a":{"b":{"api_key":"sk-1"}},"c":[{"api_key":"sk-2"}]}"#,
                &["api_key"],
                r#"{"a":{"b":{"api_key":"[redacted]"}},"c":[{"api_key":"[redacted]"}]}"#,
            ),
            (
                r#"{"api_key": {"nested": "sk-x"}, "n": 1}"#,
                &["api_key"],
                r#"{"api_key": "[redacted]", "n": 1}"#,
            ),
            (
                r#"{"api_key": 12345}"#,
                &["api_key"],
                r#"{"api_key": "[redacted]"}"#,
            ),
            (
                r#"{"api_key": null}"#,
                &["api_key"],
                r#"{"api_key": "[redacted]"}"#,
            ),
            // A value that merely equals a key name is not a key.
            (
                r#"{"name": "api_key", "x": ["api_key"]}"#,
                &["api_key"],
                r#"{"name": "api_key", "x": ["api_key"]}"#,
            ),
            // Escapes in keys and in values.
            (
                r#"{"api\u005fkey": "sk-\"q\"", "t": "a\\"}"#,
                &["api_key"],
                r#"{"api\u005fkey": "[redacted]", "t": "a\\"}"#,
            ),
            // Several keys; truncated JSON still scrubbed.
            (
                r#"{"token": "t1", "secret": "s1", "api_key": "sk-trunc"#,
                &["secret", "api_key"],
                r#"{"token": "t1", "secret": "[redacted]", "api_key": "[redacted]""#,
            ),
            ("not json at all", &["api_key"], "not json at all"),
            (r#"{"api_key": "sk-1"}"#, &[], r#"{"api_key": "sk-1"}"#),
        ];
        for (input, k, expected) in cases {
            assert_eq!(redact(input, &keys(k)), expected, "input {input}");
        }
    }

    #[test]
    fn untouched_text_is_borrowed() {
        assert!(matches!(
            redact(r#"{"model": "x"}"#, &keys(&["api_key"])),
            Cow::Borrowed(_)
        ));
    }
}
