//! A problem in a file the user wrote, where it is and what is wrong: the one error shape of
//! plans and of the config file (`FILE:LINE:COL: field.path: message`). A leaf.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::Location;

/// One problem found in a file the user wrote (a plan, the config).
///
/// Displays as `FILE:LINE:COL: field.path: message` (without `field.path: ` when the problem
/// concerns the whole file, without `LINE:COL:` when it has no place in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The file as the user named it.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem is not at a place in the file (a flag's value, a
    /// file that could not be read).
    pub line: usize,
    /// 1-based column, in characters; 0 with `line`.
    pub column: usize,
    /// Field path such as `tasks[1].params[0].value`; empty for the whole file.
    pub path: String,
    /// What is wrong and, where known, how to fix it. Never holds a param value.
    pub message: String,
}

impl Issue {
    /// An issue at `line`:`column` (values below 1 are raised to 1).
    pub fn new(
        file: &Path,
        line: usize,
        column: usize,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            line: line.max(1),
            column: column.max(1),
            path: path.into(),
            message: message.into(),
        }
    }

    /// An issue that has no place in the file: a flag's value, a file that cannot be read.
    /// Displays as `FILE: field.path: message`.
    pub fn unplaced(file: &Path, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            path: path.into(),
            message: message.into(),
        }
    }

    /// An issue at a serde-saphyr location (an unknown location becomes 1:1).
    pub fn at(
        file: &Path,
        location: &Location,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = line_col(location);
        Self::new(file, line, column, path, message)
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file.display())?;
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        f.write_str(" ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file (or in several, for `deployd check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issues(pub Vec<Issue>);

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Issues {}

/// A serde-saphyr location as 1-based (line, column).
pub fn line_col(location: &Location) -> (usize, usize) {
    let line = usize::try_from(location.line())
        .unwrap_or(usize::MAX)
        .max(1);
    let column = usize::try_from(location.column())
        .unwrap_or(usize::MAX)
        .max(1);
    (line, column)
}
