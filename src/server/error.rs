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

    pub fn with_header_value(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
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

/// A request body that could not be received as sent (hyper's error while reading it). The
/// store sees it as an I/O error of the stream it reads; this marker tells the client's fault
/// apart from the backend's.
#[derive(Debug)]
pub struct ClientBodyError(pub axum::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = self.0.to_string();
        write!(f, "the request body could not be read: {said}")?;
        // hyper names the cause (a bad chunk size, an early end) only in its sources, after
        // axum's wrapper repeats its own message.
        let mut cause = std::error::Error::source(&self.0);
        while let Some(error) = cause {
            let text = error.to_string();
            if text != said {
                write!(f, ": {text}")?;
            }
            said = text;
            cause = error.source();
        }
        Ok(())
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The [`ClientBodyError`] that caused `e`, if any. An `io::Error`'s `source` skips the error
/// it wraps, so each `io::Error` in the chain is opened with `get_ref`.
fn client_body_error(e: &Error) -> Option<&ClientBodyError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = next {
        if let Some(body) = error.downcast_ref::<ClientBodyError>() {
            return Some(body);
        }
        if let Some(body) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<ClientBodyError>())
        {
            return Some(body);
        }
        next = error.source();
    }
    None
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        if let Some(body) = client_body_error(&e) {
            // Nothing of a broken chunk is kept: the upload stays at its offset.
            return Self::new(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                body.to_string(),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: Error) -> (StatusCode, &'static str) {
        let api = ApiError::from(e);
        (api.status, api.code)
    }

    #[test]
    fn a_body_that_broke_while_received_is_the_clients_fault() {
        let broken = ClientBodyError(axum::Error::new(std::io::Error::other("bad chunk size")));
        let e = Error::Io {
            context: "receiving the chunk".to_owned(),
            source: std::io::Error::other(broken),
        };
        assert_eq!(
            status_of(e),
            (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID")
        );
    }

    #[test]
    fn an_io_failure_of_the_backend_stays_a_500() {
        let e = Error::Io {
            context: "writing the staging file".to_owned(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(status_of(e), (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"));
    }
}
