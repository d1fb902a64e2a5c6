//! Health for load balancers and orchestrators, without a token (it carries no data):
//!
//! - `GET /health`: liveness — the process answers (200 while it runs);
//! - `GET /health/ready` and gRPC `grpc.health.v1.Health` (service `""`): readiness — the node
//!   can serve reads and writes now. Ready means all of:
//!   1. Raft is running and this node knows a leader (itself or another). A follower cut off
//!      from the leader stops knowing one within an election timeout (0.8–1.6 s): it stands
//!      for election and has no leader until one wins;
//!   2. on the leader, a quorum acknowledged it within the last [`QUORUM_ACK_MAX`] (a leader
//!      cut off from the majority is not ready, though Raft 0.9 keeps its role);
//!   3. this node has applied all but at most [`MAX_APPLY_LAG`] entries of its log.
//!
//! A `grpc.health.v1.Health` call that names a user's service (`micro-service` header) is
//! that service's, and goes to it through the proxy.

use openraft::async_runtime::WatchReceiver;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use micro_cluster::Node;
use openraft::ServerState;
use serde::Serialize;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// The most entries a ready node's state may trail its own log by.
pub const MAX_APPLY_LAG: u64 = 1_000;
/// The longest a ready leader may go without a quorum's acknowledgement.
pub const QUORUM_ACK_MAX: Duration = Duration::from_secs(3);
/// How often the gRPC health status is re-evaluated (besides every role change).
const REEVALUATE: Duration = Duration::from_millis(250);

/// A node's readiness, as `/health/ready` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub node_id: u64,
    /// The leader this node knows (0: none).
    pub leader: u64,
    pub state: &'static str,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
}

/// Whether `node` is ready to serve, and why not.
pub fn readiness(node: &Node) -> Readiness {
    let m = node.raft().metrics().borrow_watched().clone();
    let last_log = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map_or(0, |l| l.index);
    let reason = if let Err(e) = &m.running_state {
        format!("raft stopped: {e}")
    } else if m.current_leader.is_none() {
        "no leader known (an election is under way, or this node cannot reach a majority)".into()
    } else if m.state == ServerState::Leader
        && micro_cluster::quorum_ack_age(&m).is_none_or(|age| age > QUORUM_ACK_MAX)
    {
        format!(
            "leader without a quorum's acknowledgement for over {} s",
            QUORUM_ACK_MAX.as_secs()
        )
    } else if last_log.saturating_sub(applied) > MAX_APPLY_LAG {
        format!("applied {applied} of {last_log} log entries (more than {MAX_APPLY_LAG} behind)")
    } else {
        String::new()
    };
    Readiness {
        ready: reason.is_empty(),
        reason,
        node_id: m.id,
        leader: m.current_leader.unwrap_or(0),
        state: micro_cluster::node::state_name(m.state),
        term: m.current_term,
        last_log_index: last_log,
        applied_index: applied,
    }
}

/// Keeps the gRPC health status of service `""` equal to [`readiness`] until the node stops.
pub async fn report(node: Node, reporter: HealthReporter) {
    let mut server = node.raft().server_metrics();
    let mut stopping = node.stopping();
    let mut last = None;
    loop {
        let ready = readiness(&node).ready;
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            last = Some(ready);
        }
        tokio::select! {
            r = server.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(REEVALUATE) => {}
            _ = stopping.wait_for(|s| *s) => break,
        }
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
}

/// `grpc.health.v1.Health` on the node's gRPC port: the node's own (`H`, tonic-health's
/// server), unless the call names a user's service, which the proxy forwards it to.
#[derive(Clone)]
pub struct HealthRoute<H> {
    pub own: H,
    pub proxy: crate::upstream::Proxy,
}

impl<H> tonic::server::NamedService for HealthRoute<H> {
    const NAME: &'static str = "grpc.health.v1.Health";
}

impl<H> tower::Service<http::Request<tonic::body::Body>> for HealthRoute<H>
where
    H: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    H::Future: Send + 'static,
{
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req
            .headers()
            .contains_key(micro::reflection::SERVICE_HEADER)
        {
            return self.proxy.call(req.map(axum::body::Body::new));
        }
        let mut own = self.own.clone();
        Box::pin(async move {
            let resp = tower::Service::call(&mut own, req).await?;
            Ok(resp.map(axum::body::Body::new))
        })
    }
}

/// `/metrics`, `/health` and `/health/ready` on the HTTP port: no token needed.
pub fn routes(node: Node) -> axum::Router {
    use crate::dashboard::get_only as get;
    let for_metrics = node.clone();
    let for_ready = node.clone();
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let node = for_metrics.clone();
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        crate::metrics::render(&node),
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let id = node.id();
                async move { axum::Json(serde_json::json!({"status": "ok", "node_id": id})) }
            }),
        )
        .route(
            "/health/ready",
            get(move || {
                let node = for_ready.clone();
                async move {
                    let r = readiness(&node);
                    let code = if r.ready {
                        http::StatusCode::OK
                    } else {
                        http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (code, axum::Json(r))
                }
            }),
        )
}
