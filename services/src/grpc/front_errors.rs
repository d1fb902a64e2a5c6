//! Errors tonic answers before any handler runs, made to say what went wrong.
//!
//! - A request message that does not decode (garbage bytes, a string field that is not
//!   UTF-8) is the client's fault: `INVALID_ARGUMENT`, not the `INTERNAL` tonic's prost codec
//!   reports.
//! - A path naming no service, or no method of a service, gets `UNIMPLEMENTED` with a message
//!   naming what was asked for and what exists (tonic's is empty).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::BoxFuture;
use tonic::{Code, Status};

/// The message prost's `DecodeError` starts with (tonic-prost passes it on as `INTERNAL`).
const DECODE_ERROR: &str = "failed to decode Protobuf message";

/// Every service of the public packages (`micro_proto::PUBLIC_PACKAGES`) → its methods, from
/// Micro's descriptor set.
pub fn served() -> BTreeMap<String, Vec<String>> {
    let pool = prost_reflect::DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptor set decodes");
    pool.services()
        .filter(|s| micro_proto::PUBLIC_PACKAGES.contains(&s.package_name()))
        .map(|s| {
            let methods = s.methods().map(|m| m.name().to_string()).collect();
            (s.full_name().to_string(), methods)
        })
        .collect()
}

/// A tower layer over the gRPC router: see the module docs.
#[derive(Clone)]
pub struct FrontErrors {
    /// Served service (full name) → its methods.
    services: Arc<BTreeMap<String, Vec<String>>>,
}

impl Default for FrontErrors {
    fn default() -> Self {
        FrontErrors::new()
    }
}

impl FrontErrors {
    /// For a server serving every service of the public packages
    /// (`micro_proto::PUBLIC_PACKAGES`), with their methods from Micro's descriptor set.
    /// (`tests/tests/services.rs` checks that the server really serves all of them.)
    pub fn new() -> FrontErrors {
        FrontErrors {
            services: Arc::new(served()),
        }
    }

    /// What to say about a request for `path` that nothing implements.
    fn unimplemented(&self, path: &str) -> String {
        let known = || self.services.keys().cloned().collect::<Vec<_>>().join(", ");
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return format!(
                "{path:?} is not a gRPC method path (/package.Service/Method); services: {}",
                known()
            );
        };
        match self.services.get(service) {
            Some(methods) => format!(
                "service {service} has no method {method:?}; it has {}",
                methods.join(", ")
            ),
            None => format!(
                "unknown service {service}: no registered service serves it (register one with the SDK, or name it in the micro-service header), and this server has {}",
                known()
            ),
        }
    }

    fn rewrite(
        &self,
        path: &str,
        resp: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        // Only trailers-only answers (status in the headers): what tonic sends when the
        // request never reached a handler.
        let Some(status) = Status::from_header_map(resp.headers()) else {
            return resp;
        };
        match status.code() {
            Code::Internal if status.message().starts_with(DECODE_ERROR) => {
                Status::invalid_argument(format!("invalid request: {}", status.message()))
                    .into_http()
            }
            Code::Unimplemented if status.message().is_empty() => {
                Status::unimplemented(self.unimplemented(path)).into_http()
            }
            _ => resp,
        }
    }
}

impl<S> tower::Layer<S> for FrontErrors {
    type Service = FrontErrorsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FrontErrorsService {
            inner,
            errors: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FrontErrorsService<S> {
    inner: S,
    errors: FrontErrors,
}

impl<S, B> tower::Service<http::Request<B>> for FrontErrorsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let errors = self.errors.clone();
        let fut = self.inner.call(req);
        Box::pin(async move { Ok(errors.rewrite(&path, fut.await?)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_unknown_service_or_method_and_what_exists() {
        let e = FrontErrors::new();
        let m = e.unimplemented("/nope.Nope/Call");
        assert!(
            m.contains("unknown service nope.Nope")
                && m.contains("events.Stream")
                && m.contains("lease.Lease")
                && m.contains("store.Store"),
            "{m}"
        );
        let m = e.unimplemented("/store.Store/Frob");
        assert!(
            m.contains("no method \"Frob\"") && m.contains("Read"),
            "{m}"
        );
    }

    #[test]
    fn decode_errors_become_invalid_argument() {
        let e = FrontErrors::new();
        let bad = Status::internal(format!("{DECODE_ERROR}: invalid string value")).into_http();
        let out = e.rewrite("/store.Store/Read", bad);
        let s = Status::from_header_map(out.headers()).unwrap();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("invalid string value"));
        // A handler's own INTERNAL is left alone.
        let own = Status::internal("storage: disk on fire").into_http();
        let out = e.rewrite("/store.Store/Read", own);
        assert_eq!(
            Status::from_header_map(out.headers()).unwrap().code(),
            Code::Internal
        );
    }
}
