//! [`SqlValue`] ⇄ `silo.router.v1.Value`: validated on receipt.

use silo_proto::router::v1 as pb;
use silo_proto::router::v1::value::Kind as PbKind;

use super::{CivilDate, MICROS_PER_DAY, SqlValue, UnixMicros, ValueError};

impl TryFrom<pb::Value> for SqlValue {
    type Error = ValueError;

    fn try_from(value: pb::Value) -> Result<Self, ValueError> {
        let kind = value.kind.ok_or(ValueError::Empty)?;
        Ok(match kind {
            PbKind::Null(_) => Self::Null,
            PbKind::BoolValue(v) => Self::Bool(v),
            PbKind::Int64Value(v) => Self::Int(v),
            PbKind::DoubleValue(v) => Self::Float(v),
            PbKind::StringValue(v) => Self::Text(v),
            PbKind::BytesValue(v) => Self::Bytes(v),
            PbKind::DecimalValue(v) => Self::Decimal(v),
            PbKind::UuidValue(v) => {
                Self::Uuid(uuid::Uuid::parse_str(&v).map_err(|_| ValueError::InvalidUuid)?)
            }
            PbKind::TimestampValue(v) => Self::Timestamp(UnixMicros::from_timestamp(&v)?),
            PbKind::TimestamptzValue(v) => Self::TimestampTz(UnixMicros::from_timestamp(&v)?),
            PbKind::DateValue(v) => Self::Date(CivilDate::new(v.year, v.month, v.day)?),
            PbKind::TimeValue(v) => {
                if !(0..=MICROS_PER_DAY).contains(&v.microseconds) {
                    return Err(ValueError::InvalidTime);
                }
                Self::Time(v.microseconds)
            }
            PbKind::JsonValue(v) => Self::Json(v),
            PbKind::JsonbValue(v) => Self::Jsonb(v),
            PbKind::ArrayValue(array) => {
                let values = array
                    .values
                    .into_iter()
                    .map(SqlValue::try_from)
                    .collect::<Result<Vec<_>, _>>()?;
                super::array_shape(&values)?;
                Self::Array(values)
            }
        })
    }
}

impl From<SqlValue> for pb::Value {
    fn from(value: SqlValue) -> Self {
        let kind = match value {
            SqlValue::Null => PbKind::Null(prost_types::NullValue::NullValue.into()),
            SqlValue::Bool(v) => PbKind::BoolValue(v),
            SqlValue::Int(v) => PbKind::Int64Value(v),
            SqlValue::Float(v) => PbKind::DoubleValue(v),
            SqlValue::Text(v) => PbKind::StringValue(v),
            SqlValue::Bytes(v) => PbKind::BytesValue(v),
            SqlValue::Decimal(v) => PbKind::DecimalValue(v),
            SqlValue::Uuid(v) => PbKind::UuidValue(v.hyphenated().to_string()),
            SqlValue::Timestamp(v) => PbKind::TimestampValue(v.to_timestamp()),
            SqlValue::TimestampTz(v) => PbKind::TimestamptzValue(v.to_timestamp()),
            SqlValue::Date(v) => PbKind::DateValue(pb::Date {
                year: v.year,
                month: v.month,
                day: v.day,
            }),
            SqlValue::Time(v) => PbKind::TimeValue(pb::TimeOfDay { microseconds: v }),
            SqlValue::Json(v) => PbKind::JsonValue(v),
            SqlValue::Jsonb(v) => PbKind::JsonbValue(v),
            SqlValue::Array(values) => PbKind::ArrayValue(pb::ArrayValue {
                values: values.into_iter().map(Self::from).collect(),
            }),
        };
        Self { kind: Some(kind) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_proto_and_back() {
        let values = vec![
            SqlValue::Null,
            SqlValue::Bool(true),
            SqlValue::Int(-7),
            SqlValue::Float(1.5),
            SqlValue::Text("héllo".into()),
            SqlValue::Bytes(vec![0, 255]),
            SqlValue::Decimal("1.20".into()),
            SqlValue::Uuid(uuid::Uuid::nil()),
            SqlValue::Timestamp(UnixMicros(1)),
            SqlValue::TimestampTz(UnixMicros(-1)),
            SqlValue::Date(CivilDate::new(2024, 2, 29).expect("valid")),
            SqlValue::Time(MICROS_PER_DAY),
            SqlValue::Json("{}".into()),
            SqlValue::Jsonb("[1]".into()),
            SqlValue::Array(vec![SqlValue::Int(1), SqlValue::Null]),
            SqlValue::Array(vec![
                SqlValue::Array(vec![SqlValue::Int(1), SqlValue::Null]),
                SqlValue::Array(vec![SqlValue::Int(3), SqlValue::Int(4)]),
            ]),
        ];
        for value in values {
            let back = SqlValue::try_from(pb::Value::from(value.clone())).expect("valid");
            assert_eq!(back, value);
        }
    }

    #[test]
    fn invalid_values_are_refused() {
        let ragged = pb::Value::from(SqlValue::Array(vec![
            SqlValue::Array(vec![SqlValue::Int(1)]),
            SqlValue::Array(vec![SqlValue::Int(1), SqlValue::Int(2)]),
        ]));
        assert_eq!(SqlValue::try_from(ragged), Err(ValueError::RaggedArray));
        let mixed = pb::Value::from(SqlValue::Array(vec![
            SqlValue::Array(vec![SqlValue::Int(1)]),
            SqlValue::Null,
        ]));
        assert_eq!(SqlValue::try_from(mixed), Err(ValueError::RaggedArray));
        assert_eq!(
            SqlValue::try_from(pb::Value { kind: None }),
            Err(ValueError::Empty)
        );
        let bad_uuid = pb::Value {
            kind: Some(PbKind::UuidValue("nope".into())),
        };
        assert_eq!(SqlValue::try_from(bad_uuid), Err(ValueError::InvalidUuid));
        let bad_time = pb::Value {
            kind: Some(PbKind::TimeValue(pb::TimeOfDay { microseconds: -1 })),
        };
        assert_eq!(SqlValue::try_from(bad_time), Err(ValueError::InvalidTime));
    }
}
