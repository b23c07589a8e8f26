//! One archived row as text: a JSON object per line (`jsonl`), or an RFC 4180 record (`csv`).
//!
//! JSON keeps SQLite's types: integers and reals as numbers (reals round-trip exactly), text as
//! strings, NULL as null, blobs as `{"$hex": "..."}`. Payload columns are written as the text
//! the gateway stored, with the `redact` keys scrubbed. CSV writes NULL as an empty field and
//! an empty string as `""`.

use std::io::Write;

use crate::gateway::Value;

use super::spec::Format;
use crate::redact::json::redact;

/// Turns rows of one table into archive lines.
#[derive(Debug, Clone)]
pub struct Encoder {
    format: Format,
    columns: Vec<String>,
    payload: Vec<bool>,
    redact: Vec<String>,
    /// Whether API keys recognised by their shape are redacted in payload columns too.
    key_shapes: bool,
}

impl Encoder {
    /// `payload[i]` tells whether column `i` holds JSON payload to redact.
    pub fn new(
        format: Format,
        columns: Vec<String>,
        payload: Vec<bool>,
        redact: Vec<String>,
    ) -> Self {
        Encoder {
            format,
            columns,
            payload,
            redact,
            key_shapes: false,
        }
    }

    /// Also redacts API keys recognised by their shape (`sk-…`, see [`crate::redact::api_keys`])
    /// inside payload columns, wherever they sit: LiteLLM's keys reach JSONB under names no
    /// `redact` list foresees (a `Bearer` header, an error traceback in `metadata`).
    pub fn with_key_shapes(mut self) -> Self {
        self.key_shapes = true;
        self
    }

    /// A payload column's text as archived: the `redact` keys' values replaced, and key shapes
    /// where asked.
    fn scrub(&self, text: &str) -> String {
        let keyed = redact(text, &self.redact);
        if self.key_shapes {
            crate::redact::api_keys(&keyed).into_owned()
        } else {
            keyed.into_owned()
        }
    }

    /// The file's first line, if the format has one.
    pub fn header(&self, out: &mut Vec<u8>) {
        if self.format == Format::Csv {
            let fields: Vec<String> = self.columns.iter().map(|c| csv_field(c)).collect();
            out.extend_from_slice(fields.join(",").as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Appends `values` (in column order) as one line.
    pub fn line(&self, values: &[Value], out: &mut Vec<u8>) {
        match self.format {
            Format::Jsonl => {
                out.push(b'{');
                for (i, (name, value)) in self.columns.iter().zip(values).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_string(name, out);
                    out.push(b':');
                    match value {
                        Value::Null => out.extend_from_slice(b"null"),
                        Value::Integer(n) => {
                            let _ = write!(out, "{n}");
                        }
                        Value::Real(f) => json_real(*f, out),
                        Value::Text(t) if self.payload[i] => json_string(&self.scrub(t), out),
                        Value::Text(t) => json_string(t, out),
                        Value::Blob(b) => {
                            out.extend_from_slice(b"{\"$hex\":\"");
                            out.extend_from_slice(hex::encode(b).as_bytes());
                            out.extend_from_slice(b"\"}");
                        }
                        Value::Time(t) => json_string(&time(t), out),
                    }
                }
                out.extend_from_slice(b"}\n");
            }
            Format::Csv => {
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match value {
                        Value::Null => {}
                        Value::Integer(n) => {
                            let _ = write!(out, "{n}");
                        }
                        Value::Real(f) => {
                            let _ = write!(out, "{f:?}");
                        }
                        Value::Text(t) if self.payload[i] => {
                            out.extend_from_slice(csv_field(&self.scrub(t)).as_bytes())
                        }
                        Value::Text(t) => out.extend_from_slice(csv_field(t).as_bytes()),
                        Value::Blob(b) => out.extend_from_slice(hex::encode(b).as_bytes()),
                        Value::Time(t) => out.extend_from_slice(time(t).as_bytes()),
                    }
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// A time column's value (PostgreSQL's `timestamp`) as archived: RFC 3339 in UTC, to the
/// microsecond PostgreSQL keeps.
fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_real(f: f64, out: &mut Vec<u8>) {
    match serde_json::Number::from_f64(f) {
        Some(n) => {
            let text = n.to_string();
            out.extend_from_slice(text.as_bytes());
            // Keep a REAL a real: 0.0 must not read back as the integer 0.
            if !text.contains(['.', 'e', 'E']) {
                out.extend_from_slice(b".0");
            }
        }
        // SQLite stores NaN as NULL; only infinities get here, which JSON cannot spell.
        None => json_string(if f > 0.0 { "Infinity" } else { "-Infinity" }, out),
    }
}

fn csv_field(s: &str) -> String {
    if s.is_empty() {
        return "\"\"".to_string();
    }
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder(format: Format) -> Encoder {
        Encoder::new(
            format,
            vec![
                "id".into(),
                "cost".into(),
                "note".into(),
                "request_data".into(),
                "b".into(),
            ],
            vec![false, false, false, true, false],
            vec!["api_key".into()],
        )
    }

    fn row() -> Vec<Value> {
        vec![
            Value::Integer(7),
            Value::Real(0.0),
            Value::Text("a \"b\", c".into()),
            Value::Text(r#"{"api_key": "sk-1", "n": 1}"#.into()),
            Value::Blob(vec![0xde, 0xad]),
        ]
    }

    #[test]
    fn jsonl_keeps_types_and_redacts_payloads() {
        let mut out = Vec::new();
        encoder(Format::Jsonl).line(&row(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"id\":7,\"cost\":0.0,\"note\":\"a \\\"b\\\", c\",\"request_data\":\"{\\\"api_key\\\": \\\"[redacted]\\\", \\\"n\\\": 1}\",\"b\":{\"$hex\":\"dead\"}}\n"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["cost"].is_f64());
    }

    #[test]
    fn a_time_column_is_archived_as_rfc3339_in_utc() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-04T05:06:07.123+00:00")
            .unwrap()
            .to_utc();
        let e = Encoder::new(Format::Jsonl, vec!["startTime".into()], vec![false], vec![]);
        let c = Encoder::new(Format::Csv, vec!["startTime".into()], vec![false], vec![]);
        for (encoder, want) in [
            (e, "{\"startTime\":\"2026-03-04T05:06:07.123Z\"}\n"),
            (c, "2026-03-04T05:06:07.123Z\r\n"),
        ] {
            let mut out = Vec::new();
            encoder.line(&[Value::Time(t)], &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn reals_round_trip_through_json() {
        for f in [0.1 + 0.2, 1e-9, 123456789.125, -0.000123, 3.0] {
            let mut out = Vec::new();
            json_real(f, &mut out);
            // std's parser is correctly rounded; serde_json's default one is not.
            let back: f64 = std::str::from_utf8(&out).unwrap().parse().unwrap();
            assert_eq!(back.to_bits(), f.to_bits(), "{f}");
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let mut out = Vec::new();
        let e = encoder(Format::Csv);
        e.header(&mut out);
        e.line(&row(), &mut out);
        e.line(
            &[
                Value::Null,
                Value::Real(1.5),
                Value::Text(String::new()),
                Value::Null,
                Value::Null,
            ],
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id,cost,note,request_data,b\r\n7,0.0,\"a \"\"b\"\", c\",\"{\"\"api_key\"\": \"\"[redacted]\"\", \"\"n\"\": 1}\",dead\r\n,1.5,\"\",,\r\n"
        );
    }
}
