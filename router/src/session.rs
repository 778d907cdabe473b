//! What a caller's statement may do to the session: the few commands the router must know
//! about before it runs one, read from the statement's leading keywords, and the reset that
//! undoes what a statement may leave behind before the connection serves anyone else.
//!
//! The reset undoes every session-level change (`SET`s, role, cursors, `LISTEN`s, advisory
//! locks, temp tables, sequence state) without deallocating our prepared statements, which
//! `DISCARD ALL` would. `ROLLBACK` is sent only when a transaction may be open: outside one,
//! PostgreSQL answers it with a WARNING that it also writes to its server log, once per
//! call. A transaction block can only be opened by a top-level `BEGIN` or
//! `START TRANSACTION` (nothing inside a function or procedure can leave one open), and the
//! extended query protocol the router uses runs exactly one statement per call, so the
//! statement's first keywords tell.

/// Undoes everything but an open transaction.
pub const SESSION_RESET: &str = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; \
    UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// [`SESSION_RESET`], first ending the transaction the caller left open.
pub const SESSION_RESET_WITH_ROLLBACK: &str = "ROLLBACK; SET SESSION AUTHORIZATION DEFAULT; \
    RESET ALL; CLOSE ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); DISCARD TEMP; \
    DISCARD SEQUENCES";

/// What one statement is, as far as the router cares, judged by its leading keywords.
/// Anything the lexer cannot read counts as possibly opening a transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Command {
    /// `BEGIN` / `START TRANSACTION`: leaves a transaction block open.
    pub opens_transaction: bool,
    /// Starts, ends or hands off a transaction (`BEGIN`, `START`, `COMMIT`, `END`,
    /// `ROLLBACK` but not `ROLLBACK TO SAVEPOINT`, `ABORT`, `PREPARE TRANSACTION`,
    /// `COMMIT PREPARED`, `ROLLBACK PREPARED`): inside the API's own transactions it would
    /// make the API's answer a lie, so Batch and Transaction refuse it.
    pub controls_transaction: bool,
    /// `PREPARE`, `DEALLOCATE` or `DISCARD`: changes the session's prepared statements
    /// behind the router's back (its own statement cache, and tokio-postgres' type-lookup
    /// statements); the connection is closed after the call instead of reused.
    pub touches_prepared_statements: bool,
    /// `COPY ... FROM STDIN` / `COPY ... TO STDOUT`: the copy sub-protocol, which the API
    /// does not carry.
    pub copies_over_the_connection: bool,
}

impl Command {
    /// Reads `sql` (one statement).
    pub fn of(sql: &str) -> Self {
        let mut words = Words::new(sql);
        let Some(first) = words.next() else {
            return Self {
                opens_transaction: true,
                ..Self::default()
            };
        };
        let is = |word: &str, keyword: &str| word.eq_ignore_ascii_case(keyword);
        let mut command = Self::default();
        if is(first, "begin") || is(first, "start") {
            command.opens_transaction = true;
            command.controls_transaction = true;
        } else if is(first, "commit") || is(first, "end") || is(first, "abort") {
            command.controls_transaction = true;
        } else if is(first, "rollback") {
            // ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name stays inside the transaction.
            let mut next = words.next();
            if next.is_some_and(|w| is(w, "work") || is(w, "transaction")) {
                next = words.next();
            }
            command.controls_transaction = !next.is_some_and(|w| is(w, "to"));
        } else if is(first, "prepare") {
            if words.next().is_some_and(|w| is(w, "transaction")) {
                command.controls_transaction = true;
            } else {
                command.touches_prepared_statements = true;
            }
        } else if is(first, "deallocate") || is(first, "discard") {
            command.touches_prepared_statements = true;
        } else if is(first, "copy") {
            command.copies_over_the_connection = words.any(|w| is(w, "stdin") || is(w, "stdout"));
        }
        command
    }
}

/// What the statements of one lease may have left in the session beyond what
/// [`SESSION_RESET`] undoes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Residue {
    /// A transaction block may be open.
    pub transaction: bool,
    /// The session's prepared statements may differ from what the router believes: the
    /// connection is closed instead of reused.
    pub prepared_statements: bool,
}

impl Residue {
    /// What running `sql` (one statement) may leave behind.
    pub fn of(sql: &str) -> Self {
        let command = Command::of(sql);
        Self {
            transaction: command.opens_transaction,
            prepared_statements: command.touches_prepared_statements,
        }
    }

    /// Adds what `other` left behind to this.
    pub fn add(&mut self, other: Self) {
        self.transaction |= other.transaction;
        self.prepared_statements |= other.prepared_statements;
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

/// The words of a statement outside comments, string literals, quoted identifiers and
/// dollar-quoted bodies, in order: runs of ASCII letters and `_`. The first word is `None`
/// when the statement does not start with one (after white space and comments), so an
/// unreadable statement is never mistaken for a harmless one.
struct Words<'a> {
    sql: &'a str,
    at: usize,
    started: bool,
}

impl<'a> Words<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            sql,
            at: 0,
            started: false,
        }
    }

    /// Skips white space and comments; `false` at an unterminated comment.
    fn skip_space(&mut self) -> bool {
        let bytes = self.sql.as_bytes();
        loop {
            match bytes.get(self.at..) {
                Some([b, ..]) if b.is_ascii_whitespace() => self.at += 1,
                Some([b'-', b'-', ..]) => {
                    self.at += bytes[self.at..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .unwrap_or(bytes.len() - self.at);
                }
                Some([b'/', b'*', ..]) => {
                    let mut depth = 0usize;
                    loop {
                        match bytes.get(self.at..) {
                            Some([b'/', b'*', ..]) => {
                                depth += 1;
                                self.at += 2;
                            }
                            Some([b'*', b'/', ..]) => {
                                depth -= 1;
                                self.at += 2;
                                if depth == 0 {
                                    break;
                                }
                            }
                            Some([_, ..]) => self.at += 1,
                            _ => return false,
                        }
                    }
                }
                _ => return true,
            }
        }
    }

    /// Skips a quoted token starting at the cursor, if there is one.
    fn skip_quoted(&mut self) -> bool {
        let bytes = self.sql.as_bytes();
        let rest = &self.sql[self.at..];
        let closing = |quote: u8, backslash: bool, from: usize| {
            let mut i = from;
            while let Some(&b) = bytes.get(i) {
                if backslash && b == b'\\' {
                    i += 2;
                } else if b == quote {
                    if bytes.get(i + 1) == Some(&quote) {
                        i += 2;
                    } else {
                        return i + 1;
                    }
                } else {
                    i += 1;
                }
            }
            bytes.len()
        };
        match bytes.get(self.at..) {
            Some([b'\'', ..]) => self.at = closing(b'\'', false, self.at + 1),
            Some([b'"', ..]) => self.at = closing(b'"', false, self.at + 1),
            Some([b'e' | b'E', b'\'', ..]) => self.at = closing(b'\'', true, self.at + 2),
            Some([b'$', ..]) => {
                // $tag$ ... $tag$, where the tag is empty or an identifier.
                let tag_len = rest[1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len() - 1);
                if rest.as_bytes().get(1 + tag_len) != Some(&b'$') {
                    self.at += 1;
                    return true;
                }
                let tag = &rest[..tag_len + 2];
                self.at = match rest[tag.len()..].find(tag) {
                    Some(end) => self.at + tag.len() + end + tag.len(),
                    None => bytes.len(),
                };
            }
            _ => return false,
        }
        true
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            if !self.skip_space() {
                return None;
            }
            if self.started && self.skip_quoted() {
                continue;
            }
            let rest = &self.sql[self.at..];
            let len = rest
                .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
                .unwrap_or(rest.len());
            if len > 0 {
                self.started = true;
                self.at += len;
                return Some(&rest[..len]);
            }
            if !self.started || rest.is_empty() {
                return None;
            }
            // Any other character (digits, operators, punctuation).
            self.at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_word(sql: &str) -> Option<&str> {
        Words::new(sql).next()
    }

    #[test]
    fn first_words_skip_space_and_comments() {
        assert_eq!(first_word("select 1"), Some("select"));
        assert_eq!(first_word("  \n\tBEGIN;"), Some("BEGIN"));
        assert_eq!(first_word("-- note\nstart transaction"), Some("start"));
        assert_eq!(
            first_word("/* a /* nested */ comment */ begin"),
            Some("begin")
        );
        assert_eq!(first_word("/* unterminated"), None);
        assert_eq!(first_word("(select 1)"), None);
        assert_eq!(first_word("-- only a comment"), None);
        assert_eq!(first_word(""), None);
    }

    #[test]
    fn later_words_skip_literals() {
        let words: Vec<_> = Words::new(
            "COPY t (a) FROM 'stdin' /* stdout */ WITH (FORMAT \"stdout\") $x$ stdin $x$ E'\\' stdin' x",
        )
        .collect();
        assert_eq!(words, ["COPY", "t", "a", "FROM", "WITH", "FORMAT", "x"]);
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
        assert_eq!(
            Residue::of("BEGIN").reset_sql(),
            SESSION_RESET_WITH_ROLLBACK
        );
        assert_eq!(Residue::of("SELECT 1").reset_sql(), SESSION_RESET);
    }

    #[test]
    fn transaction_control_is_recognised_and_savepoints_are_not() {
        for sql in [
            "COMMIT",
            "commit and chain",
            "END",
            "end work",
            "ROLLBACK",
            "rollback work",
            "ROLLBACK AND CHAIN",
            "ABORT",
            "BEGIN",
            "START TRANSACTION READ ONLY",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
            "/* c */ -- d\n commit",
        ] {
            assert!(Command::of(sql).controls_transaction, "{sql}");
        }
        for sql in [
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "ROLLBACK TO a",
            "rollback to savepoint a",
            "ROLLBACK WORK TO SAVEPOINT a",
            "ROLLBACK TRANSACTION TO a",
            "SELECT 'commit'",
            "committed_rows",
            "PREPARE p AS SELECT 1",
        ] {
            assert!(!Command::of(sql).controls_transaction, "{sql}");
        }
    }

    #[test]
    fn prepared_statement_commands_and_copy_are_recognised() {
        for sql in [
            "PREPARE p AS SELECT 1",
            "DEALLOCATE ALL",
            "deallocate prepare p",
            "DISCARD ALL",
            "DISCARD PLANS",
        ] {
            assert!(Command::of(sql).touches_prepared_statements, "{sql}");
            assert!(Residue::of(sql).prepared_statements, "{sql}");
        }
        assert!(!Command::of("PREPARE TRANSACTION 'x'").touches_prepared_statements);
        for sql in [
            "COPY t FROM STDIN",
            "copy t (a, b) from stdin with (format csv)",
            "COPY (SELECT 1) TO STDOUT",
        ] {
            assert!(Command::of(sql).copies_over_the_connection, "{sql}");
        }
        for sql in ["COPY t FROM '/tmp/stdin'", "SELECT stdin FROM t"] {
            assert!(!Command::of(sql).copies_over_the_connection, "{sql}");
        }
    }
}
