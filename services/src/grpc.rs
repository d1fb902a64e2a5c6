//! The gRPC services: thin adapters between protobuf and [`micro_cluster::Node`], one module
//! per building block.

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod events;
pub mod feed;
pub mod front_errors;
pub mod lease;
pub mod pace;
pub mod registry;
pub mod runtime;
pub mod store;
pub mod sync;
