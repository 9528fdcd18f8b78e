//! Validation errors that name the offending field, so an operator can find
//! the typo (`routes[2].paths[0]: ...`) without reading the source.

use std::fmt;

/// One invalid field: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `routes[2].paths[0]`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Re-roots the error under `prefix` (an empty prefix leaves it as is).
    pub fn under(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.path = if self.path.is_empty() {
                prefix.to_string()
            } else if self.path.starts_with('[') {
                format!("{prefix}{}", self.path)
            } else {
                format!("{prefix}.{}", self.path)
            };
        }
        self
    }
}

/// Joins a parent path and a child field name.
pub fn field(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// Joins a parent path and a list index.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Deserializes with the failing field's path in the error, so a bad etcd
/// value is reported as precisely as a bad YAML file.
pub fn deserialize_at<'de, D, T>(de: D) -> Result<T, FieldError>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let mut message = e.into_inner().to_string();
        // Some deserializers (serde_yaml_ng) prefix the path we already report.
        if let Some((head, tail)) = message.split_once(": ") {
            if !head.contains(' ') && path.starts_with(head) {
                message = tail.to_string();
            }
        }
        FieldError::new(path, message)
    })
}

/// [`deserialize_at`] for a JSON value (etcd values are JSON).
pub fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    deserialize_at(&mut serde_json::Deserializer::from_slice(bytes))
}
