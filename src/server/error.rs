//! Errors as OCI Distribution JSON error bodies with their status codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use layerstore::{Error, ErrorKind, RangeError};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Extra headers, such as `Range` on a chunk at the wrong offset.
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: String) -> Self {
        if let Ok(value) = HeaderValue::from_str(&value) {
            self.headers.push((name, value));
        }
        self
    }

    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint")
    }
}

/// `Range: 0-<last byte>` as the upload endpoints report progress (`0-0` when empty).
pub fn upload_range(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        let status = match kind {
            ErrorKind::BlobUnknown
            | ErrorKind::BlobUploadUnknown
            | ErrorKind::ManifestUnknown
            | ErrorKind::NameUnknown => StatusCode::NOT_FOUND,
            ErrorKind::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
            ErrorKind::BlobUploadInvalid
            | ErrorKind::DigestInvalid
            | ErrorKind::ManifestBlobUnknown
            | ErrorKind::ManifestInvalid
            | ErrorKind::NameInvalid
            | ErrorKind::SizeInvalid => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut error = Self::new(status, kind.code().unwrap_or("UNKNOWN"), e.to_string());
        match &e {
            Error::RangeInvalid(RangeError::UploadOffset { current, .. }) => {
                error = error.with_header(header::RANGE, upload_range(*current));
            }
            Error::RangeInvalid(RangeError::Unsatisfiable { size, .. }) => {
                error = error.with_header(header::CONTENT_RANGE, format!("bytes */{size}"));
            }
            _ => {}
        }
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "request failed");
            // Do not leak backend details to clients.
            error.message = "internal error; see the server log".to_owned();
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{"code": self.code, "message": self.message, "detail": null}]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
