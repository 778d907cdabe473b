//! Keeping pooled sessions clean: what a caller's statement may leave behind, and the reset
//! that undoes it before the connection serves anyone else.
//!
//! The reset undoes every session-level change (`SET`s, role, cursors, `LISTEN`s, advisory
//! locks, temp tables, sequence state) without deallocating our prepared statements, which
//! `DISCARD ALL` would. `ROLLBACK` is sent only when a transaction may be open: outside one,
//! PostgreSQL answers it with a WARNING that it also writes to its server log, once per
//! call. A transaction block can only be opened by a top-level `BEGIN` or
//! `START TRANSACTION` (nothing inside a function or procedure can leave one open), so the
//! statement's first keyword tells.

/// Undoes everything but an open transaction.
pub const SESSION_RESET: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; \
    UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// [`SESSION_RESET`], first ending the transaction the caller left open.
pub const SESSION_RESET_WITH_ROLLBACK: &str = "ROLLBACK; SET SESSION AUTHORIZATION DEFAULT; \
    RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; \
    DISCARD SEQUENCES";

/// What the statements of one lease may have left in the session beyond what
/// [`SESSION_RESET`] undoes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residue {
    /// A transaction block may be open.
    pub transaction: bool,
    /// A `PREPARE` may have made a named statement, which only `DEALLOCATE` (and with it the
    /// loss of our own prepared statements) removes: such a connection is closed instead.
    pub prepared_statement: bool,
}

impl Residue {
    /// What running `sql` (one statement) may leave behind, judged by its first keyword.
    /// Anything it cannot read counts as leaving a transaction open.
    pub fn of(sql: &str) -> Self {
        match first_keyword(sql) {
            Some(word) => Self {
                transaction: word.eq_ignore_ascii_case("begin")
                    || word.eq_ignore_ascii_case("start"),
                prepared_statement: word.eq_ignore_ascii_case("prepare"),
            },
            None => Self {
                transaction: true,
                prepared_statement: false,
            },
        }
    }

    pub fn add(&mut self, other: Self) {
        self.transaction |= other.transaction;
        self.prepared_statement |= other.prepared_statement;
    }

    /// The reset that leaves the session clean.
    pub fn reset_sql(self) -> &'static str {
        if self.transaction {
            SESSION_RESET_WITH_ROLLBACK
        } else {
            SESSION_RESET
        }
    }
}

/// The first word of `sql` after white space and comments (`--` lines and nested
/// `/* */` blocks), or `None` when something else comes first.
fn first_keyword(sql: &str) -> Option<&str> {
    let bytes = sql.as_bytes();
    let mut i = 0;
    loop {
        match bytes.get(i..) {
            Some([b, ..]) if b.is_ascii_whitespace() => i += 1,
            Some([b'-', b'-', ..]) => {
                i += bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(bytes.len() - i);
            }
            Some([b'/', b'*', ..]) => {
                let mut depth = 0usize;
                loop {
                    match bytes.get(i..) {
                        Some([b'/', b'*', ..]) => {
                            depth += 1;
                            i += 2;
                        }
                        Some([b'*', b'/', ..]) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        Some([_, ..]) => i += 1,
                        // An unterminated comment: PostgreSQL refuses the statement.
                        _ => return None,
                    }
                }
            }
            _ => break,
        }
    }
    let rest = &sql[i..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_keywords_skip_space_and_comments() {
        assert_eq!(first_keyword("select 1"), Some("select"));
        assert_eq!(first_keyword("  \n\tBEGIN;"), Some("BEGIN"));
        assert_eq!(first_keyword("-- note\nstart transaction"), Some("start"));
        assert_eq!(
            first_keyword("/* a /* nested */ comment */ begin"),
            Some("begin")
        );
        assert_eq!(first_keyword("/* unterminated"), None);
        assert_eq!(first_keyword("(select 1)"), None);
        assert_eq!(first_keyword("-- only a comment"), None);
        assert_eq!(first_keyword(""), None);
    }

    #[test]
    fn only_transaction_starts_leave_a_transaction() {
        for sql in [
            "BEGIN",
            "begin isolation level serializable",
            "Start Transaction",
            "/* x */ BEGIN",
            "(select 1)",
        ] {
            assert!(Residue::of(sql).transaction, "{sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "SET search_path TO x",
            "CREATE TEMP TABLE t (x int)",
            "COMMIT",
            "ROLLBACK",
            "beginning_of_a_name",
        ] {
            assert!(!Residue::of(sql).transaction, "{sql}");
        }
        assert!(Residue::of("PREPARE p AS SELECT 1").prepared_statement);
        assert_eq!(
            Residue::of("BEGIN").reset_sql(),
            SESSION_RESET_WITH_ROLLBACK
        );
        assert_eq!(Residue::of("SELECT 1").reset_sql(), SESSION_RESET);
    }
}
