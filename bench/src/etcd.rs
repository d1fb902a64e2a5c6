//! etcd's v3 gRPC API (the subset in proto/etcd/kv.proto), over the same tonic stack the Micro
//! SDK uses, so both systems are driven by identical client code paths.

#![allow(clippy::all, clippy::pedantic)]

pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

// The generated lock service names etcd's messages by their package.
use pb as etcdserverpb;

/// etcd's lock service (`v3lockpb.Lock`), which etcd's server embeds.
pub mod lockpb {
    tonic::include_proto!("v3lockpb");
}
