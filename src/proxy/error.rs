//! Client-facing proxy errors (SPEC §3): one enum that knows its HTTP status and both wire
//! shapes — OpenAI `{"error": {message, type, code, param}}` and Anthropic
//! `{"type": "error", "error": {type, message}}` — so each official SDK raises the right class.

use bytes::Bytes;
use serde_json::json;

/// Which API shape the client speaks, from the path it called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientFormat {
    #[default]
    OpenAi,
    Anthropic,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProxyError {
    #[error("no consumer at this path")]
    ConsumerNotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("invalid or missing API key")]
    InvalidApiKey,
    #[error("{0}")]
    InvalidRequest(String),
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    ModelNotAllowed(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    ContentBlocked(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    UpstreamUnavailable(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::ConsumerNotFound | ProxyError::NotFound(_) => 404,
            ProxyError::Forbidden(_) | ProxyError::ModelNotAllowed(_) => 403,
            ProxyError::InvalidApiKey => 401,
            ProxyError::InvalidRequest(_)
            | ProxyError::LimitExceeded(_)
            | ProxyError::ContentBlocked(_) => 400,
            ProxyError::BodyTooLarge(_) => 413,
            ProxyError::MethodNotAllowed(_) => 405,
            ProxyError::RateLimited(_) => 429,
            ProxyError::UpstreamUnavailable(_) => 502,
            ProxyError::Unavailable(_) => 503,
            ProxyError::UpstreamTimeout(_) => 504,
            ProxyError::Internal(_) => 500,
        }
    }

    /// OpenAI's `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::ConsumerNotFound => "consumer_not_found",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::InvalidApiKey => "invalid_api_key",
            ProxyError::InvalidRequest(_) => "invalid_request_error",
            ProxyError::LimitExceeded(_) => "limit_exceeded",
            ProxyError::ContentBlocked(_) => "content_blocked",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::ModelNotAllowed(_) => "model_not_allowed",
            ProxyError::NotFound(_) => "not_found",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::RateLimited(_) => "rate_limit_exceeded",
            ProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::Unavailable(_) => "service_unavailable",
            ProxyError::Internal(_) => "internal_error",
        }
    }

    /// OpenAI's `error.type`.
    fn openai_type(&self) -> &'static str {
        match self.status() {
            400 | 404 | 405 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            _ => "api_error",
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic_type(&self) -> &'static str {
        match self.status() {
            400 | 405 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        }
    }

    pub fn body(&self, format: ClientFormat) -> Bytes {
        let message = self.to_string();
        let v = match format {
            ClientFormat::OpenAi => json!({"error": {
                "message": message, "type": self.openai_type(), "code": self.code(), "param": null}}),
            ClientFormat::Anthropic => json!({"type": "error", "error": {
                "type": self.anthropic_type(), "message": message}}),
        };
        Bytes::from(v.to_string())
    }
}
