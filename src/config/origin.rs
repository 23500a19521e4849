//! Where a key's value came from, and the one-line error that names it.

use std::fmt::{self, Write as _};
use std::path::PathBuf;

/// A configuration that cannot be used: where, and what is wrong, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `FILE:LINE`, `FILE`, `environment VAR`, `--flag` or `default`.
    pub origin: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `ORIGIN: MESSAGE`, with control characters escaped: messages quote the user's values and
    /// paths, and a newline in one must not break the line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.origin.chars().chain(": ".chars()).chain(self.message.chars()) {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    Default,
    File { path: PathBuf, line: Option<usize> },
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line: Some(line) } => write!(f, "{}:{line}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(var) => write!(f, "environment {var}"),
            Origin::Flag(flag) => f.write_str(flag),
        }
    }
}
