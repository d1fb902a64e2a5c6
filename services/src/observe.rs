//! What every request leaves behind: request counts and latency (Prometheus, see `metrics`),
//! and, for a request that carries `x-request-id`, log lines on every node it touches (see
//! `micro_cluster::trace`) plus the id echoed in the response.
//!
//! One tower layer outermost on the gRPC port (so it sees the answers of auth and of the
//! error mapper too) and one axum middleware on the HTTP port.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use micro_cluster::trace;
use tonic::codegen::BoxFuture;
use tracing::Instrument;

/// The gRPC method as a metrics label: a method the node serves, by its path; anything else
/// (users' services, paths naming nothing) is `proxy`. Only served methods, so a client cannot
/// mint series by calling made-up paths; `&'static`, so a request's label allocates nothing.
fn grpc_method(path: &str) -> &'static str {
    static SERVED: std::sync::OnceLock<std::collections::HashSet<&'static str>> =
        std::sync::OnceLock::new();
    let served = SERVED.get_or_init(|| {
        let mut services = crate::grpc::front_errors::served();
        services.insert(
            "grpc.health.v1.Health".into(),
            vec!["Check".into(), "Watch".into()],
        );
        // Leaked once: a fixed, small set of paths that lives as long as the process.
        services
            .iter()
            .flat_map(|(svc, methods)| methods.iter().map(move |m| format!("/{svc}/{m}")))
            .map(|p| &*Box::leak(p.into_boxed_str()))
            .collect()
    });
    served.get(path).copied().unwrap_or("proxy")
}

/// A status code as a metrics label (its `Debug` name), without formatting one per request.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The request id a request carries, if any (at most 128 visible ASCII characters).
fn request_id(headers: &http::HeaderMap) -> Option<Arc<str>> {
    let v = headers.get(trace::HEADER)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())).then(|| v.into())
}

/// The tower layer observing the gRPC port.
#[derive(Clone, Copy, Default)]
pub struct GrpcObserve;

impl<S> tower::Layer<S> for GrpcObserve {
    type Service = GrpcObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcObserveService { inner }
    }
}

#[derive(Clone)]
pub struct GrpcObserveService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcObserveService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = grpc_method(req.uri().path());
        let id = request_id(req.headers());
        if let Some(id) = &id {
            tracing::info!(request_id = %id, method = %method, "request");
        }
        let span = if trace::spans_on() {
            tracing::info_span!(
                "grpc",
                method = %method,
                request_id = id.as_deref().unwrap_or(""),
                code = tracing::field::Empty
            )
        } else {
            tracing::Span::none()
        };
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(async move {
            let mut resp = trace::scoped(id.clone(), fut)
                .instrument(span.clone())
                .await?;
            // Errors are trailers-only responses (the status is in the headers); a status
            // sent after a body (a stream that fails midway) counts as the OK it started as.
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            let code = tonic::Code::from_i32(code);
            span.record("code", tracing::field::debug(code));
            let secs = started.elapsed().as_secs_f64();
            metrics::counter!(
                "micro_grpc_requests_total",
                "method" => method,
                "code" => code_label(code)
            )
            .increment(1);
            metrics::histogram!("micro_grpc_request_seconds", "method" => method).record(secs);
            if let Some(id) = id {
                tracing::info!(request_id = %id, method = %method, code = ?code, seconds = secs, "response");
                if let Ok(v) = id.parse() {
                    resp.headers_mut().insert(trace::HEADER, v);
                }
            }
            Ok(resp)
        })
    }
}

/// The HTTP route as a metrics label: the first path segment for Micro's own routes, `service`
/// for users' services (one label, whatever their names).
fn http_route(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    const OWN: &[&str] = &[
        "", "metrics", "health", "ui", "rpc", "store", "events", "broker", "registry", "config",
        "auth", "cluster", "lease", "sync", "stream", "runtime",
    ];
    OWN.iter()
        .find(|r| **r == first)
        .copied()
        .unwrap_or("service")
}

/// The axum middleware observing the HTTP port.
pub async fn http(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = Instant::now();
    let route = http_route(req.uri().path());
    let id = request_id(req.headers());
    if let Some(id) = &id {
        tracing::info!(request_id = %id, path = %req.uri().path(), "http request");
    }
    let span = if trace::spans_on() {
        tracing::info_span!(
            "http",
            method = %req.method(),
            path = %req.uri().path(),
            request_id = id.as_deref().unwrap_or(""),
            status = tracing::field::Empty
        )
    } else {
        tracing::Span::none()
    };
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("status", status);
    let secs = started.elapsed().as_secs_f64();
    metrics::counter!(
        "micro_http_requests_total",
        "route" => route,
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("micro_http_request_seconds", "route" => route).record(secs);
    if let Some(id) = id {
        tracing::info!(request_id = %id, status, seconds = secs, "http response");
        if let Ok(v) = id.parse() {
            resp.headers_mut().insert(trace::HEADER, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(grpc_method("/store.Store/Read"), "/store.Store/Read");
        assert_eq!(
            grpc_method("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(grpc_method("/greeter.Say/Hello"), "proxy");
        assert_eq!(grpc_method("garbage"), "proxy");
        // Made-up paths, even in Micro's packages, mint no series of their own.
        assert_eq!(grpc_method("/store.Store/Nope"), "proxy");
        assert_eq!(grpc_method("/grpc.made.Up/X"), "proxy");
        for code in [
            tonic::Code::Ok,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
        ] {
            assert_eq!(code_label(code), format!("{code:?}"));
        }
        assert_eq!(http_route("/store/read"), "store");
        assert_eq!(http_route("/metrics"), "metrics");
        assert_eq!(http_route("/"), "");
        assert_eq!(http_route("/greeter/say/hello"), "service");
    }

    #[test]
    fn request_ids_are_short_visible_ascii() {
        let mut h = http::HeaderMap::new();
        assert_eq!(request_id(&h), None);
        h.insert(trace::HEADER, "abc-123".parse().unwrap());
        assert_eq!(request_id(&h).as_deref(), Some("abc-123"));
        h.insert(trace::HEADER, "a b".parse().unwrap());
        assert_eq!(request_id(&h), None);
        h.insert(trace::HEADER, "x".repeat(129).parse().unwrap());
        assert_eq!(request_id(&h), None);
    }
}
