//! Running helper programs and turning their failures into [`PgServerError`]s.

use std::process::{Output, Stdio};

use tokio::process::Command;

use crate::error::PgServerError;

/// Longest program output kept in an error message.
const MAX_OUTPUT_CHARS: usize = 4000;

/// Runs `command` to completion with stdin closed and its output captured; a non-zero
/// exit becomes [`PgServerError::CommandFailed`].
pub(crate) async fn run(command: &mut Command) -> Result<Output, PgServerError> {
    let shown = describe(command.as_std());
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| PgServerError::io(format!("could not run `{shown}`"), e))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(PgServerError::CommandFailed {
            command: shown,
            status: output.status,
            output: combined_output(&output),
        })
    }
}

/// stderr then stdout of a finished program, trimmed and cut to a readable length.
pub(crate) fn combined_output(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stdout.trim());
    }
    if text.chars().count() > MAX_OUTPUT_CHARS {
        let skip = text.chars().count() - MAX_OUTPUT_CHARS;
        text = format!("...{}", text.chars().skip(skip).collect::<String>());
    }
    text
}

/// The command line as a human would type it, for messages.
pub(crate) fn describe(command: &std::process::Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `word` for `/bin/sh` (pg_ctl hands its `-o` string to the shell).
pub(crate) fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn describe_joins_program_and_args() {
        let mut command = std::process::Command::new("pg_ctl");
        command.args(["-D", "/tmp/x", "start"]);
        assert_eq!(describe(&command), "pg_ctl -D /tmp/x start");
    }
}
