//! Typed errors. Every input error names the file and, where there is one, the field,
//! so that the binary can print a single actionable line.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is wrong; `field` says where.
    #[error("{path}: {field}: {msg}")]
    Format { path: PathBuf, field: String, msg: String },
    /// A setting given on the command line or in a config is invalid.
    #[error("invalid setting {field}: {msg}")]
    Setting { field: String, msg: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn format(path: impl AsRef<Path>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), field: field.into(), msg: msg.into() }
    }
    pub fn setting(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Setting { field: field.into(), msg: msg.into() }
    }
}

/// Attach a path (and field) to errors of foreign crates.
pub trait Context<T> {
    fn at(self, path: &Path, field: &str) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn at(self, path: &Path, field: &str) -> Result<T> {
        self.map_err(|e| Error::format(path, field, e.to_string()))
    }
}
