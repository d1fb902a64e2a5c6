//! `micro-proto`: Micro's wire contracts.
//!
//! `store` keeps Micro v3's package, message names and field numbers exactly, so Micro v3
//! clients work unchanged; extensions use new numbers only. `cluster` is Micro's own service;
//! `raft` is the internal peer protocol. [`FILE_DESCRIPTOR_SET`] describes all of them for
//! the reflective HTTP gateway.

#![allow(clippy::all, clippy::pedantic)]

pub mod store {
    tonic::include_proto!("store");
}

pub mod events {
    tonic::include_proto!("events");
}

pub mod broker {
    tonic::include_proto!("broker");
}

pub mod cluster {
    tonic::include_proto!("cluster");
}

pub mod config {
    tonic::include_proto!("config");
}

pub mod lease {
    tonic::include_proto!("lease");
}

pub mod registry {
    tonic::include_proto!("registry");
}

pub mod sync {
    tonic::include_proto!("sync");
}

pub mod auth {
    tonic::include_proto!("auth");
}

pub mod runtime {
    tonic::include_proto!("runtime");
}

pub mod raft {
    tonic::include_proto!("raft");
}

/// The packages clients may call (over gRPC and through the HTTP gateway); `raft` is the
/// internal peer protocol and is not among them.
pub const PUBLIC_PACKAGES: &[&str] = &[
    "store", "events", "broker", "cluster", "lease", "registry", "config", "sync", "auth",
    "runtime",
];

/// The encoded `FileDescriptorSet` of every service above.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
