//! The values our statements bind and read on the gateway's database, whatever its engine.
//!
//! Job code reads and binds these, never an engine's own types, so one job runs on every
//! backend. Each backend converts at its edge: SQLite binds [`Value::Time`] as ISO-8601 text
//! (a time column's bounds are converted by the dialect first, see
//! [`super::Dialect::time_bound`]), PostgreSQL as a `timestamp`.

use chrono::{DateTime, Utc};

/// One parameter or one column of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    /// A point in time in UTC (PostgreSQL's `timestamp` columns; SQLite has no time type).
    Time(DateTime<Utc>),
}

/// Which kind of value a column held where another was expected.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
        Value::Time(_) => "a time",
    }
}

impl Value {
    /// The name of the value's kind, for messages ("a blob").
    pub fn kind(&self) -> &'static str {
        kind(self)
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Bytes of data: text and blob lengths, 8 per number or time.
    pub fn bytes(&self) -> u64 {
        match self {
            Value::Null => 0,
            Value::Integer(_) | Value::Real(_) | Value::Time(_) => 8,
            Value::Text(t) => t.len() as u64,
            Value::Blob(b) => b.len() as u64,
        }
    }

    /// An integer or null, as SQLite's own conversion reads one: text or a real is an error.
    pub fn as_i64(&self) -> anyhow::Result<Option<i64>> {
        match self {
            Value::Null => Ok(None),
            Value::Integer(n) => Ok(Some(*n)),
            other => anyhow::bail!("expected an integer, found {}", kind(other)),
        }
    }

    /// A number or null; an integer reads as a real.
    pub fn as_f64(&self) -> anyhow::Result<Option<f64>> {
        match self {
            Value::Null => Ok(None),
            Value::Integer(n) => Ok(Some(*n as f64)),
            Value::Real(f) => Ok(Some(*f)),
            other => anyhow::bail!("expected a number, found {}", kind(other)),
        }
    }

    /// Text or null.
    pub fn into_string(self) -> anyhow::Result<Option<String>> {
        match self {
            Value::Null => Ok(None),
            Value::Text(t) => Ok(Some(t)),
            other => anyhow::bail!("expected text, found {}", kind(&other)),
        }
    }

    /// A truth value or null: an integer (SQLite's booleans) or, from PostgreSQL, `boolean`
    /// read as 0 / 1.
    pub fn as_bool(&self) -> anyhow::Result<Option<bool>> {
        Ok(self.as_i64()?.map(|n| n != 0))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Integer(n)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Real(f)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_as_strict_as_sqlites_own() {
        assert_eq!(Value::Integer(3).as_i64().unwrap(), Some(3));
        assert_eq!(Value::Null.as_i64().unwrap(), None);
        assert!(Value::Real(1.5).as_i64().is_err());
        assert!(Value::Text("3".into()).as_i64().is_err());
        assert_eq!(Value::Integer(2).as_f64().unwrap(), Some(2.0));
        assert_eq!(Value::Real(0.25).as_f64().unwrap(), Some(0.25));
        assert!(Value::Text("x".into()).as_f64().is_err());
        assert_eq!(
            Value::Text("a".into()).into_string().unwrap().as_deref(),
            Some("a")
        );
        assert!(Value::Blob(vec![1]).into_string().is_err());
        assert_eq!(Value::Integer(0).as_bool().unwrap(), Some(false));
        assert_eq!(Value::from(None::<i64>), Value::Null);
        assert_eq!(Value::Blob(vec![1, 2]).bytes(), 2);
        assert_eq!(Value::Time(Utc::now()).bytes(), 8);
    }
}
