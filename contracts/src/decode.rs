use serde::de::DeserializeOwned;

/// Why a payload could not be decoded. The message names the offending field
/// (as a JSON path) so a device developer can fix it without guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is {size} bytes, larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("field `{path}`: {message}")]
    Field { path: String, message: String },
    #[error("unsupported payload version {found}; this service speaks version {expected}")]
    Version { found: u64, expected: u8 },
}

impl DecodeError {
    /// A short, stable label for metrics (`reason` label of dead-letter counters).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::Field { .. } => "invalid_field",
            DecodeError::Version { .. } => "unsupported_version",
        }
    }

    pub(crate) fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        DecodeError::Field {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Parses JSON into `T`, reporting the path of the first offending field.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    // Good input takes the plain decoder; only bad input pays for tracking
    // the path its error names (the same error, decoded again).
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            DecodeError::NotJson(inner.to_string())
        } else {
            DecodeError::Field {
                // serde_path_to_error writes the document root as ".".
                path: if path == "." {
                    "(payload)".to_string()
                } else {
                    path
                },
                message: strip_position(&inner.to_string()),
            }
        }
    })?;
    de.end().map_err(|e| DecodeError::NotJson(e.to_string()))?;
    Ok(value)
}

/// serde_json appends " at line L column C"; with a field path that is noise.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

pub(crate) fn check_version(found: u64) -> Result<(), DecodeError> {
    if found == u64::from(crate::WIRE_VERSION) {
        Ok(())
    } else {
        Err(DecodeError::Version {
            found,
            expected: crate::WIRE_VERSION,
        })
    }
}
