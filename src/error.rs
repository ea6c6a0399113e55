//! The admin API's client-facing error (SPEC §2 "Admin errors"): it knows its status and code
//! and renders `{"error": {"code", "message", "field"?}}`.

use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_json", message)
    }

    /// A validation error on one field, named by its path (`registries[0].weight`).
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        ApiError {
            field: (!field.is_empty()).then_some(field),
            ..Self::new(400, "validation_error", message)
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "unauthorized",
            "a valid admin token is required (Authorization: Bearer <token>)",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(405, "method_not_allowed", "method not allowed on this path")
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "body_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", message)
    }

    /// Prefixes the field path, for errors raised inside a nested structure.
    pub fn within(mut self, prefix: &str) -> Self {
        if self.code == "validation_error" && !prefix.is_empty() {
            self.field = Some(match self.field.take() {
                None => prefix.to_string(),
                Some(f) if f.starts_with('[') => format!("{prefix}{f}"),
                Some(f) => format!("{prefix}.{f}"),
            });
        }
        self
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = &self.field {
            error["field"] = json!(field);
        }
        json!({ "error": error })
    }
}

impl From<sled::Error> for ApiError {
    fn from(e: sled::Error) -> Self {
        ApiError::internal(format!("store error: {e}"))
    }
}
