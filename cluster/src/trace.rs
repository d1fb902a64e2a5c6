//! The request id a client gave (`x-request-id`), carried with its write through the batcher,
//! the forward to the leader and the apply, so one id finds the request in every node's log.
//!
//! The front end runs a request's handler inside [`REQUEST_ID`]'s scope; whatever that
//! handler submits takes the id along. A batch of writes carries the ids of all its requests,
//! joined by commas. Only requests that came with an id are followed (and logged at INFO):
//! giving one is how a caller asks for its request to be traced.

use std::sync::Arc;

/// Whether spans are made for requests, proposals and forwards (only when something exports
/// them: `micro server --otlp-endpoint`); without, the request path makes none.
static SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns span making on (once an exporter is installed).
pub fn enable_spans() {
    SPANS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether spans are on.
pub fn spans_on() -> bool {
    SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The metadata (and HTTP header) carrying a request id.
pub const HEADER: &str = "x-request-id";

tokio::task_local! {
    /// The id(s) of the request(s) the current task works for.
    pub static REQUEST_ID: Arc<str>;
}

/// The request id(s) of the current task, if it has any.
pub fn current() -> Option<Arc<str>> {
    REQUEST_ID.try_with(|id| id.clone()).ok()
}

/// Runs `fut` for the request(s) `id` (no scope without one).
pub async fn scoped<F: std::future::Future>(id: Option<Arc<str>>, fut: F) -> F::Output {
    match id {
        Some(id) => REQUEST_ID.scope(id, fut).await,
        None => fut.await,
    }
}

/// Counts something open (a watch, a consumer) in gauge `name` while it lives.
pub struct Open(&'static str);

impl Open {
    pub fn new(name: &'static str) -> Open {
        metrics::gauge!(name).increment(1.0);
        Open(name)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}
