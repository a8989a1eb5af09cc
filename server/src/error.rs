//! Errors: [`ApiError`], what a client sees (OpenAI's JSON error object with an HTTP status),
//! and [`ServerError`], what can stop the server from starting.

use std::net::SocketAddr;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use burn_phi3v::{DeviceError, Phi3vError};

/// An error answered to a client as OpenAI does:
/// `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI's error `type` (`invalid_request_error`, `authentication_error`, `server_error`, …).
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `context_length_exceeded`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 for a parameter this server does not implement.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).param(param).code("unsupported_parameter")
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(asked: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("the model `{asked}` does not exist; this server serves `{served}`"),
        )
        .param("model")
        .code("model_not_found")
    }

    /// 401 for a missing or wrong API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message).code("invalid_api_key")
    }

    /// 413 for a body over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body exceeds the server's limit of {limit} bytes (--max-body-bytes)"),
        )
        .code("request_too_large")
    }

    /// 503 while the server shuts down (or the engine has stopped).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code("service_unavailable")
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// 404 for a path this server does not have.
    pub fn no_route(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no route {path}")).code("not_found")
    }

    /// Names the request field at fault.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the machine-readable code.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body (also sent as an SSE event when a stream fails after it started).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The OpenAI name of a library parameter (`max_new_tokens` is `max_tokens` here).
fn openai_param(name: &str) -> &str {
    match name {
        "max_new_tokens" => "max_tokens",
        "min_new_tokens" => "min_tokens",
        "stop_strings" => "stop",
        other => other,
    }
}

impl From<Phi3vError> for ApiError {
    /// Maps the library's typed errors: what the request got wrong is a 400 naming the field,
    /// an engine that has stopped is a 503, anything else a 500.
    fn from(e: Phi3vError) -> Self {
        let message = e.to_string();
        match &e {
            Phi3vError::TooManyImages { .. } => Self::bad_request(message).param("messages").code("too_many_images"),
            Phi3vError::ContextOverflow { .. } => Self::bad_request(message).param("max_tokens").code("context_length_exceeded"),
            Phi3vError::PoolTooSmall { .. } => Self::bad_request(message).param("max_tokens").code("kv_cache_capacity_exceeded"),
            Phi3vError::ImageTags(_) => Self::bad_request(message).param("messages").code("invalid_image_tags"),
            Phi3vError::Image(_) => Self::bad_request(message).param("messages").code("invalid_image"),
            Phi3vError::InvalidParameter { name, .. } => {
                let param = openai_param(name);
                Self::bad_request(message.replace(name, param)).param(param).code("invalid_value")
            }
            Phi3vError::TokenOutOfRange { .. } | Phi3vError::InvalidInput(_) => Self::bad_request(message).code("invalid_input"),
            Phi3vError::EngineStopped => Self::unavailable(message),
            _ => Self::internal(message),
        }
    }
}

/// What can keep the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The model folder does not exist.
    #[error("model folder {0} does not exist")]
    ModelDir(std::path::PathBuf),
    /// The device string or dtype cannot be used.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Loading the model or starting the engine failed.
    #[error(transparent)]
    Model(#[from] Phi3vError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host and port do not form an address.
    #[error("invalid listen address {0:?}")]
    Address(String),
    /// An I/O error while serving (the runtime or the listener failed).
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the server listens.
pub(crate) fn parse_addr(host: &str, port: u16) -> Result<SocketAddr, ServerError> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ServerError::Address(format!("{host}:{port}")))
}
