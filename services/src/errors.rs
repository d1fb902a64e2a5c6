//! Every error → status mapping lives here, so a gRPC client and an HTTP client see the same
//! code for the same failure.

use axum::http::StatusCode;
use micro_cluster::Error;
use tonic::{Code, Status};

/// A node error as a gRPC status.
pub fn status(e: Error) -> Status {
    match e {
        Error::Invalid { field, reason } => Status::invalid_argument(format!("{field} {reason}")),
        // Well-formed, but the state says no (a stale fencing token: the caller lost its lock).
        Error::Refused { field, reason } => {
            Status::failed_precondition(format!("{field} {reason}"))
        }
        Error::Unavailable(m) => Status::unavailable(m),
        e @ Error::Compacted { .. } => Status::out_of_range(e.to_string()),
        Error::NotFound(m) => Status::not_found(m),
        Error::Storage(m) => Status::internal(format!("storage: {m}")),
        Error::Internal(m) => Status::internal(m),
    }
}

/// A bad request field as a gRPC status naming the field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field} {reason}"))
}

/// The HTTP status Micro uses for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Micro's error body: `{"id", "code", "detail", "status"}`.
pub fn micro_error(id: &str, status: StatusCode, detail: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "code": status.as_u16(),
        "detail": detail,
        "status": status.canonical_reason().unwrap_or(""),
    })
}
