//! The router's typed `Value`s as JSON and as table cells, and command-line parameters as
//! `Value`s.

use serde_json::{Map, Value as Json};
use silo_proto::router::v1::{self as rpb, value::Kind};

/// A row as an object keyed by column name (a later column wins over an earlier one of
/// the same name).
pub fn row_json(columns: &[rpb::Column], row: &rpb::Row) -> Json {
    let object: Map<String, Json> = columns
        .iter()
        .zip(&row.values)
        .map(|(column, value)| (column.name.clone(), json(value)))
        .collect();
    Json::Object(object)
}

pub fn json(value: &rpb::Value) -> Json {
    let Some(kind) = &value.kind else {
        return Json::Null;
    };
    match kind {
        Kind::Null(_) => Json::Null,
        Kind::BoolValue(b) => Json::Bool(*b),
        Kind::Int64Value(i) => Json::from(*i),
        Kind::DoubleValue(d) => serde_json::Number::from_f64(*d)
            .map_or_else(|| Json::String(d.to_string()), Json::Number),
        Kind::StringValue(s) | Kind::DecimalValue(s) | Kind::UuidValue(s) => {
            Json::String(s.clone())
        }
        Kind::BytesValue(bytes) => Json::String(hex(bytes)),
        Kind::TimestampValue(t) | Kind::TimestamptzValue(t) => Json::String(t.to_string()),
        Kind::DateValue(d) => Json::String(format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)),
        Kind::TimeValue(t) => Json::String(time_of_day(t.microseconds)),
        Kind::JsonValue(text) | Kind::JsonbValue(text) => {
            serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.clone()))
        }
        Kind::ArrayValue(array) => Json::Array(array.values.iter().map(json).collect()),
    }
}

/// A value as a table cell: text as it is, NULL as `NULL`, everything else as JSON.
pub fn cell(value: &rpb::Value) -> String {
    match json(value) {
        Json::Null => "NULL".to_owned(),
        Json::String(text) => text,
        other => other.to_string(),
    }
}

/// A `--param`: a JSON literal when it parses as one (number, bool, null, quoted string),
/// else text.
pub fn param(raw: &str) -> rpb::Value {
    let kind = match serde_json::from_str::<Json>(raw) {
        Ok(Json::Null) => Kind::Null(0),
        Ok(Json::Bool(b)) => Kind::BoolValue(b),
        Ok(Json::Number(n)) => match n.as_i64() {
            Some(i) => Kind::Int64Value(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Ok(Json::String(s)) => Kind::StringValue(s),
        Ok(other @ (Json::Array(_) | Json::Object(_))) => Kind::JsonbValue(other.to_string()),
        Err(_) => Kind::StringValue(raw.to_owned()),
    };
    rpb::Value { kind: Some(kind) }
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 + bytes.len() * 2);
    text.push_str("\\x");
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn time_of_day(microseconds: i64) -> String {
    let seconds = microseconds / 1_000_000;
    let micros = microseconds % 1_000_000;
    let clock = format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    );
    if micros == 0 {
        clock
    } else {
        format!("{clock}.{micros:06}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_json_literals_or_text() {
        assert_eq!(param("42").kind, Some(Kind::Int64Value(42)));
        assert_eq!(param("1.5").kind, Some(Kind::DoubleValue(1.5)));
        assert_eq!(param("true").kind, Some(Kind::BoolValue(true)));
        assert_eq!(param("null").kind, Some(Kind::Null(0)));
        assert_eq!(param("\"42\"").kind, Some(Kind::StringValue("42".into())));
        assert_eq!(
            param("hello world").kind,
            Some(Kind::StringValue("hello world".into()))
        );
    }

    #[test]
    fn values_render_as_json_and_cells() {
        let time = rpb::Value {
            kind: Some(Kind::TimeValue(rpb::TimeOfDay {
                microseconds: 3_723_000_500,
            })),
        };
        assert_eq!(cell(&time), "01:02:03.000500");
        let bytes = rpb::Value {
            kind: Some(Kind::BytesValue(vec![0xde, 0xad])),
        };
        assert_eq!(cell(&bytes), "\\xdead");
        let jsonb = rpb::Value {
            kind: Some(Kind::JsonbValue("{\"a\": [1]}".into())),
        };
        assert_eq!(json(&jsonb), serde_json::json!({"a": [1]}));
        assert_eq!(cell(&rpb::Value { kind: None }), "NULL");
    }
}
