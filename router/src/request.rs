//! What a call asks for, validated from the proto messages on receipt.

use silo_proto::router::v1 as pb;

use crate::session::Command;
use crate::value::{SqlValue, ValueError};

/// A request the router cannot run, before it reaches the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request has no statement.
    #[error("statement is required")]
    MissingStatement,
    /// The statement's SQL is empty.
    #[error("statement sql is empty")]
    EmptySql,
    #[error("parameter ${index}: {source}")]
    /// A parameter value that does not fit its parameter.
    Param {
        /// The parameter's number, 1-based (`$1` is 1).
        index: usize,
        /// What is wrong with the value.
        source: ValueError,
    },
    /// The SQL text contains a NUL character.
    #[error("the statement text contains a NUL character, which PostgreSQL does not accept")]
    NulInSql,
    /// A Batch without statements.
    #[error("a batch needs at least one statement")]
    EmptyBatch,
    /// `COMMIT`, `ROLLBACK`, `BEGIN` and the like inside Batch or Transaction, where the
    /// router owns the transaction.
    #[error(
        "transaction control statements (BEGIN, COMMIT, ROLLBACK, END, ABORT, START, \
         PREPARE TRANSACTION) cannot run inside Batch or Transaction: use the stream's \
         commit / rollback; SAVEPOINT, RELEASE and ROLLBACK TO are allowed"
    )]
    TransactionControl,
    /// A statement that needs a part of PostgreSQL's protocol the API does not carry.
    #[error("{0} is not supported through the router")]
    Unsupported(&'static str),
    /// A message out of place in its stream; the text says which.
    #[error("{0}")]
    Invalid(&'static str),
}

/// One SQL statement and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlStatement {
    /// The SQL text, with `$1` .. `$n` placeholders.
    pub sql: String,
    /// The placeholders' values, in order.
    pub params: Vec<SqlValue>,
}

impl TryFrom<Option<pb::Statement>> for SqlStatement {
    type Error = RequestError;

    fn try_from(statement: Option<pb::Statement>) -> Result<Self, RequestError> {
        let statement = statement.ok_or(RequestError::MissingStatement)?;
        if statement.sql.trim().is_empty() {
            return Err(RequestError::EmptySql);
        }
        if statement.sql.contains('\0') {
            return Err(RequestError::NulInSql);
        }
        if Command::of(&statement.sql).copies_over_the_connection {
            return Err(RequestError::Unsupported(
                "COPY ... FROM STDIN / TO STDOUT (use INSERT with parameters, or QueryStream)",
            ));
        }
        let params = statement
            .params
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                SqlValue::try_from(value).map_err(|source| RequestError::Param {
                    index: i + 1,
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sql: statement.sql,
            params,
        })
    }
}

/// A result column: its name and PostgreSQL type name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column's name.
    pub name: String,
    /// Its PostgreSQL type name (`int8`, `text`, `_int4` for arrays, ...).
    pub type_name: String,
}

impl SqlStatement {
    /// Refuses a statement that would start or end a transaction, for Batch and
    /// Transaction, where the router owns the transaction.
    pub fn inside_transaction(self) -> Result<Self, RequestError> {
        if Command::of(&self.sql).controls_transaction {
            Err(RequestError::TransactionControl)
        } else {
            Ok(self)
        }
    }
}

/// Columns and rows of a query (or one batch of a streamed query).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rows {
    /// The result's columns.
    pub columns: Vec<Column>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<SqlValue>>,
}

impl From<Column> for pb::Column {
    fn from(column: Column) -> Self {
        Self {
            name: column.name,
            type_name: column.type_name,
        }
    }
}

fn pb_rows(rows: Vec<Vec<SqlValue>>) -> Vec<pb::Row> {
    rows.into_iter()
        .map(|row| pb::Row {
            values: row.into_iter().map(pb::Value::from).collect(),
        })
        .collect()
}

impl From<Rows> for pb::QueryResponse {
    fn from(rows: Rows) -> Self {
        Self {
            columns: rows.columns.into_iter().map(Into::into).collect(),
            rows: pb_rows(rows.rows),
        }
    }
}

impl From<Rows> for pb::RowBatch {
    fn from(rows: Rows) -> Self {
        Self {
            columns: rows.columns.into_iter().map(Into::into).collect(),
            rows: pb_rows(rows.rows),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_validated() {
        assert_eq!(
            SqlStatement::try_from(None),
            Err(RequestError::MissingStatement)
        );
        let empty = pb::Statement {
            sql: "  ".into(),
            params: vec![],
        };
        assert_eq!(
            SqlStatement::try_from(Some(empty)),
            Err(RequestError::EmptySql)
        );
        let bad_param = pb::Statement {
            sql: "SELECT $1".into(),
            params: vec![pb::Value { kind: None }],
        };
        assert_eq!(
            SqlStatement::try_from(Some(bad_param)),
            Err(RequestError::Param {
                index: 1,
                source: ValueError::Empty
            })
        );
    }
}
