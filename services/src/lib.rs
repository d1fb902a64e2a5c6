//! `micro-services`: Micro's front ends and the `micro` binary.
//!
//! - `grpc/`: tonic services (`store.Store`, `cluster.Cluster`): decode, call the node, encode;
//! - `gateway`: the HTTP front end, mapping `/[service]/[method]` to RPCs as Micro v3 does,
//!   JSON ↔ protobuf by reflection over the services' descriptors;
//! - `errors`: the one mapping from node errors to gRPC statuses and from gRPC statuses to
//!   Micro's HTTP error JSON;
//! - `runtime`: `micro run`'s supervisor, placement and instance logs;
//! - `server`: assembles a node and its front ends;
//! - `cli`: the `micro` command line (clap lives only here).
//!
//! What it must never do: hold business logic of a view (`micro-state`) or touch Raft directly
//! (`micro-cluster`).

pub mod auth;
pub mod cli;
pub mod dashboard;
pub mod errors;
pub mod gateway;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod otel;
pub mod runtime;
pub mod server;
pub mod upstream;
