//! [`SqlValue`]: the typed values of the API, bound as parameters and read from rows by
//! the PostgreSQL type of the parameter or column.

mod datetime;
mod numeric;
mod proto;

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use postgres_protocol::types as wire;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

pub use datetime::{CivilDate, MICROS_PER_DAY, UnixMicros};

type BoxError = Box<dyn StdError + Sync + Send>;

/// A value that cannot be bound to a parameter or read from a column. The messages are
/// safe for the caller: they name types, never echo values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("a {value} value cannot be bound to a parameter of type {pg_type}")]
    /// A value of one kind sent for a parameter of an incompatible type.
    Mismatch {
        /// The kind of value sent (`int`, `text`, ...).
        value: &'static str,
        /// The parameter's PostgreSQL type name.
        pg_type: String,
    },
    /// A value outside the range of its type (the type named).
    #[error("{0} value out of range")]
    OutOfRange(&'static str),
    /// Decimal text that is not a number.
    #[error("invalid decimal text")]
    InvalidDecimal,
    /// UUID text that is not a UUID.
    #[error("invalid uuid text")]
    InvalidUuid,
    /// A date that does not exist.
    #[error("invalid date")]
    InvalidDate,
    /// A time of day outside 00:00 to 24:00.
    #[error("time of day out of range")]
    InvalidTime,
    /// A timestamp finer than a microsecond.
    #[error("timestamps have microsecond precision")]
    TimestampPrecision,
    /// `infinity` / `-infinity` from the database.
    #[error("infinite dates and timestamps are not supported")]
    Infinite,
    /// A protobuf Value with no kind set.
    #[error("a Value with no kind set")]
    Empty,
    /// Bytes from the database that are not a valid value of the type named.
    #[error("malformed {0} from the database")]
    Malformed(&'static str),
    /// A column or parameter type the API cannot carry (its name).
    #[error("type {0} is not supported; cast it (for example to text)")]
    UnsupportedType(String),
    /// A value of this type from the database that could not be read.
    #[error("a value of type {0} from the database could not be read")]
    Unreadable(String),
    #[error(
        "array values must be rectangular: every element at one level is an array of the \
         same length, or none is"
    )]
    /// An array whose sub-arrays differ in length or depth.
    RaggedArray,
}

/// One typed SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// `bool`.
    Bool(bool),
    /// Integers (`int2`, `int4`, `int8`, `oid`).
    Int(i64),
    /// `float4`, `float8`.
    Float(f64),
    /// `text`, `varchar`, `char`, `name`, enums and other text-like types.
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
    /// `numeric`, as decimal text.
    Decimal(String),
    /// `uuid`.
    Uuid(uuid::Uuid),
    /// `timestamp` (no time zone), as if in UTC.
    Timestamp(UnixMicros),
    /// `timestamptz`.
    TimestampTz(UnixMicros),
    /// `date`.
    Date(CivilDate),
    /// Microseconds since midnight.
    Time(i64),
    /// `json`, its text.
    Json(String),
    /// `jsonb`, its text.
    Jsonb(String),
    /// A PostgreSQL array: its elements, or for a multi-dimensional array the arrays one
    /// dimension down (`{{1,2},{3,4}}` is `[[1, 2], [3, 4]]`). Rectangular, as PostgreSQL
    /// requires; leaves may be [`SqlValue::Null`]. Lower bounds other than 1 are not kept.
    Array(Vec<SqlValue>),
}

impl SqlValue {
    fn kind_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "bool",
            Self::Int(_) => "int64",
            Self::Float(_) => "double",
            Self::Text(_) => "string",
            Self::Bytes(_) => "bytes",
            Self::Decimal(_) => "decimal",
            Self::Uuid(_) => "uuid",
            Self::Timestamp(_) => "timestamp",
            Self::TimestampTz(_) => "timestamptz",
            Self::Date(_) => "date",
            Self::Time(_) => "time",
            Self::Json(_) => "json",
            Self::Jsonb(_) => "jsonb",
            Self::Array(_) => "array",
        }
    }

    /// About the size of this value in a response message (never less): what the
    /// response-size limit counts.
    pub fn wire_size(&self) -> usize {
        /// Tag, length and the `Value` wrapper around a field.
        const FRAMING: usize = 12;
        FRAMING
            + match self {
                Self::Null | Self::Bool(_) => 1,
                Self::Int(_) | Self::Float(_) | Self::Time(_) => 10,
                Self::Text(v) | Self::Decimal(v) | Self::Json(v) | Self::Jsonb(v) => v.len(),
                Self::Bytes(v) => v.len(),
                Self::Uuid(_) => 36,
                Self::Timestamp(_) | Self::TimestampTz(_) | Self::Date(_) => 20,
                Self::Array(values) => values.iter().map(Self::wire_size).sum(),
            }
    }

    fn mismatch(&self, ty: &Type) -> BoxError {
        Box::new(ValueError::Mismatch {
            value: self.kind_name(),
            pg_type: ty.name().to_owned(),
        })
    }
}

/// The base type of a domain, else the type itself.
fn base_type(ty: &Type) -> &Type {
    match ty.kind() {
        Kind::Domain(inner) => base_type(inner),
        _ => ty,
    }
}

fn is_text_like(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    ) || matches!(ty.kind(), Kind::Enum(_))
        || ty.name() == "citext"
}

/// Whether a column of type `ty` can be read into a [`SqlValue`]; checked before a
/// statement runs so an unsupported column fails fast with a clear message.
pub fn check_column_type(ty: &Type) -> Result<(), ValueError> {
    let ty = base_type(ty);
    let supported = match ty.kind() {
        Kind::Array(member) => {
            !matches!(base_type(member).kind(), Kind::Array(_)) && check_column_type(member).is_ok()
        }
        _ => {
            is_text_like(ty)
                || matches!(
                    *ty,
                    Type::BOOL
                        | Type::INT2
                        | Type::INT4
                        | Type::INT8
                        | Type::OID
                        | Type::FLOAT4
                        | Type::FLOAT8
                        | Type::CHAR
                        | Type::BYTEA
                        | Type::NUMERIC
                        | Type::UUID
                        | Type::TIMESTAMP
                        | Type::TIMESTAMPTZ
                        | Type::DATE
                        | Type::TIME
                        | Type::JSON
                        | Type::JSONB
                        | Type::VOID
                )
        }
    };
    if supported {
        Ok(())
    } else {
        Err(ValueError::UnsupportedType(ty.name().to_owned()))
    }
}

fn encode_int(value: i64, ty: &Type, out: &mut BytesMut) -> Result<(), BoxError> {
    let range = || ValueError::OutOfRange("int64");
    match *ty {
        Type::INT2 => wire::int2_to_sql(i16::try_from(value).map_err(|_| range())?, out),
        Type::INT4 => wire::int4_to_sql(i32::try_from(value).map_err(|_| range())?, out),
        Type::INT8 => wire::int8_to_sql(value, out),
        Type::OID => wire::oid_to_sql(u32::try_from(value).map_err(|_| range())?, out),
        // Doubles hold every integer up to 2^53 exactly; larger ones round, as in SQL.
        Type::FLOAT4 => wire::float4_to_sql(value as f32, out),
        Type::FLOAT8 => wire::float8_to_sql(value as f64, out),
        Type::NUMERIC => numeric::encode(&value.to_string(), out)?,
        _ => return Err(SqlValue::Int(value).mismatch(ty)),
    }
    Ok(())
}

fn encode_json(text: &str, ty: &Type, out: &mut BytesMut) {
    if *ty == Type::JSONB {
        out.put_u8(1);
    }
    out.put_slice(text.as_bytes());
}

impl ToSql for SqlValue {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let ty = base_type(ty);
        match self {
            Self::Null => return Ok(IsNull::Yes),
            Self::Bool(v) if *ty == Type::BOOL => wire::bool_to_sql(*v, out),
            Self::Int(v) => encode_int(*v, ty, out)?,
            Self::Float(v) => match *ty {
                Type::FLOAT8 => wire::float8_to_sql(*v, out),
                Type::FLOAT4 => wire::float4_to_sql(*v as f32, out),
                Type::NUMERIC if v.is_finite() => numeric::encode(&v.to_string(), out)?,
                Type::NUMERIC if v.is_nan() => numeric::encode("NaN", out)?,
                Type::NUMERIC if *v > 0.0 => numeric::encode("Infinity", out)?,
                Type::NUMERIC => numeric::encode("-Infinity", out)?,
                _ => return Err(self.mismatch(ty)),
            },
            Self::Text(v) | Self::Decimal(v) if *ty == Type::NUMERIC => numeric::encode(v, out)?,
            Self::Text(v) if is_text_like(ty) => wire::text_to_sql(v, out),
            Self::Text(v) | Self::Json(v) | Self::Jsonb(v)
                if matches!(*ty, Type::JSON | Type::JSONB) =>
            {
                encode_json(v, ty, out);
            }
            Self::Text(v) if *ty == Type::UUID => {
                let uuid = uuid::Uuid::parse_str(v).map_err(|_| ValueError::InvalidUuid)?;
                wire::uuid_to_sql(*uuid.as_bytes(), out);
            }
            Self::Json(v) | Self::Jsonb(v) | Self::Decimal(v) if is_text_like(ty) => {
                wire::text_to_sql(v, out);
            }
            Self::Bytes(v) if *ty == Type::BYTEA => wire::bytea_to_sql(v, out),
            Self::Uuid(v) if *ty == Type::UUID => wire::uuid_to_sql(*v.as_bytes(), out),
            Self::Uuid(v) if is_text_like(ty) => wire::text_to_sql(&v.to_string(), out),
            Self::Timestamp(v) | Self::TimestampTz(v)
                if matches!(*ty, Type::TIMESTAMP | Type::TIMESTAMPTZ) =>
            {
                wire::timestamp_to_sql(v.to_pg()?, out);
            }
            Self::Date(v) if *ty == Type::DATE => wire::date_to_sql(v.to_pg()?, out),
            Self::Time(v) if *ty == Type::TIME => wire::time_to_sql(*v, out),
            Self::Array(values) => {
                let Kind::Array(member) = ty.kind() else {
                    return Err(self.mismatch(ty));
                };
                return encode_array(values, member, out);
            }
            _ => return Err(self.mismatch(ty)),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        // The match in `to_sql` decides, with a message naming both types.
        true
    }

    to_sql_checked!();
}

/// The length of each dimension of the array `values`, outermost first; `[]` for an empty
/// array (as PostgreSQL, which gives an empty array no dimensions, also `[[], []]`).
/// Fails unless every level is all arrays of one length or all non-arrays.
pub fn array_shape(values: &[SqlValue]) -> Result<Vec<usize>, ValueError> {
    let mut shape = vec![values.len()];
    let mut level: Vec<&SqlValue> = values.iter().collect();
    while let Some(SqlValue::Array(first)) = level.first() {
        let len = first.len();
        let mut next = Vec::with_capacity(level.len() * len);
        for value in level {
            match value {
                SqlValue::Array(inner) if inner.len() == len => next.extend(inner),
                _ => return Err(ValueError::RaggedArray),
            }
        }
        shape.push(len);
        level = next;
    }
    if level
        .iter()
        .any(|value| matches!(value, SqlValue::Array(_)))
    {
        return Err(ValueError::RaggedArray);
    }
    if shape.contains(&0) {
        shape.clear();
    }
    Ok(shape)
}

/// The non-array values of a rectangular array, in row-major order.
fn array_leaves<'a>(values: &'a [SqlValue], out: &mut Vec<&'a SqlValue>) {
    for value in values {
        match value {
            SqlValue::Array(inner) => array_leaves(inner, out),
            leaf => out.push(leaf),
        }
    }
}

fn encode_array(
    values: &[SqlValue],
    member: &Type,
    out: &mut BytesMut,
) -> Result<IsNull, BoxError> {
    let shape = array_shape(values)?;
    let dimensions = shape
        .iter()
        .map(|&len| {
            Ok(wire::ArrayDimension {
                len: i32::try_from(len).map_err(|_| ValueError::OutOfRange("array length"))?,
                lower_bound: 1,
            })
        })
        .collect::<Result<Vec<_>, ValueError>>()?;
    let mut leaves = Vec::new();
    if !shape.is_empty() {
        array_leaves(values, &mut leaves);
    }
    wire::array_to_sql(
        dimensions,
        member.oid(),
        leaves,
        |leaf, out| match leaf.to_sql(member, out)? {
            IsNull::No => Ok(postgres_protocol::IsNull::No),
            IsNull::Yes => Ok(postgres_protocol::IsNull::Yes),
        },
        out,
    )?;
    Ok(IsNull::No)
}

fn decode_array(member: &Type, raw: &[u8]) -> Result<SqlValue, BoxError> {
    use fallible_iterator::FallibleIterator;
    let array = wire::array_from_sql(raw)?;
    let shape = array
        .dimensions()
        .map(|d| usize::try_from(d.len).map_err(|_| ValueError::Malformed("array").into()))
        .collect::<Vec<usize>>()?;
    let mut values = array
        .values()
        .map(|raw| match raw {
            Some(raw) => SqlValue::from_sql(member, raw),
            None => Ok(SqlValue::Null),
        })
        .collect::<Vec<SqlValue>>()?;
    // Group the leaves into arrays, innermost dimension first.
    for &len in shape.iter().skip(1).rev() {
        if len == 0 {
            break;
        }
        let mut grouped = Vec::with_capacity(values.len() / len);
        let mut leaves = values.into_iter();
        loop {
            let chunk: Vec<SqlValue> = leaves.by_ref().take(len).collect();
            if chunk.is_empty() {
                break;
            }
            grouped.push(SqlValue::Array(chunk));
        }
        values = grouped;
    }
    Ok(SqlValue::Array(values))
}

impl<'a> FromSql<'a> for SqlValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let ty = base_type(ty);
        if let Kind::Array(member) = ty.kind() {
            return decode_array(member, raw);
        }
        if is_text_like(ty) {
            return Ok(Self::Text(wire::text_from_sql(raw)?.to_owned()));
        }
        Ok(match *ty {
            Type::BOOL => Self::Bool(wire::bool_from_sql(raw)?),
            Type::INT2 => Self::Int(i64::from(wire::int2_from_sql(raw)?)),
            Type::INT4 => Self::Int(i64::from(wire::int4_from_sql(raw)?)),
            Type::INT8 => Self::Int(wire::int8_from_sql(raw)?),
            Type::OID => Self::Int(i64::from(wire::oid_from_sql(raw)?)),
            Type::FLOAT4 => Self::Float(f64::from(wire::float4_from_sql(raw)?)),
            Type::FLOAT8 => Self::Float(wire::float8_from_sql(raw)?),
            Type::CHAR => Self::Text(char::from(wire::char_from_sql(raw)? as u8).to_string()),
            Type::BYTEA => Self::Bytes(wire::bytea_from_sql(raw).to_vec()),
            Type::NUMERIC => Self::Decimal(numeric::decode(raw)?),
            Type::UUID => Self::Uuid(uuid::Uuid::from_bytes(wire::uuid_from_sql(raw)?)),
            Type::TIMESTAMP => {
                Self::Timestamp(UnixMicros::from_pg(wire::timestamp_from_sql(raw)?)?)
            }
            Type::TIMESTAMPTZ => {
                Self::TimestampTz(UnixMicros::from_pg(wire::timestamp_from_sql(raw)?)?)
            }
            Type::DATE => Self::Date(CivilDate::from_pg(wire::date_from_sql(raw)?)?),
            Type::TIME => Self::Time(wire::time_from_sql(raw)?),
            Type::JSON => Self::Json(wire::text_from_sql(raw)?.to_owned()),
            Type::JSONB => match raw.split_first() {
                Some((1, text)) => Self::Jsonb(wire::text_from_sql(text)?.to_owned()),
                _ => return Err(Box::new(ValueError::Malformed("jsonb"))),
            },
            Type::VOID => Self::Null,
            _ => return Err(Box::new(ValueError::UnsupportedType(ty.name().to_owned()))),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Self::Null)
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}
