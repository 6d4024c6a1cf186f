//! Configuration errors: one [`ConfigError`] per problem with file, line and column, and
//! [`ConfigErrors`], the list a parse returns so a user sees every problem at once.
//!
//! Owns: error formatting. Must never: decide what is valid (that is `schema`/`validate`).

use std::fmt;
use std::path::PathBuf;

/// What class of problem a [`ConfigError`] reports (for callers and tests to match on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// A key this schema does not know.
    UnknownKey,
    /// A value of the wrong TOML type.
    WrongType,
    /// A required key or section is absent.
    Missing,
    /// A value outside what is allowed (range, enum, format).
    InvalidValue,
    /// A value that must be unique is used twice (node-id, minor, address:port, name).
    Duplicate,
    /// A reference to a host that has no `[on.<host>]` section.
    UnknownHost,
    /// The file name does not match the resource name.
    NameMismatch,
}

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File the problem is in.
    pub path: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: usize,
    /// 1-based column in characters; 0 when the problem concerns the whole file.
    pub col: usize,
    /// Class of problem.
    pub kind: ErrorKind,
    /// What is wrong; what is allowed or what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// All problems found; displays one line per problem.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors {
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// A list holding one error.
    pub fn single(error: ConfigError) -> Self {
        Self {
            errors: vec![error],
        }
    }

    /// True when no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Iterates over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self::single(error)
    }
}
