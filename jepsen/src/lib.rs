//! `micro-jepsen`: black-box fault injection against a real Micro cluster, with history
//! checkers.
//!
//! A run starts `micro server` processes whose peer links all go through TCP proxies owned by
//! the harness ([`proxy`]), drives concurrent clients ([`workload`]) while a seeded nemesis
//! kills, pauses and partitions nodes ([`nemesis`]), heals, reads everything back and checks
//! the recorded history ([`checker`]): per-key linearizability of read/write/cas registers and
//! the set-full properties of a grow-only set. See `docs/jepsen.md`.

pub mod checker;
pub mod cluster;
pub mod corrupt;
pub mod history;
pub mod membership;
pub mod nemesis;
pub mod proxy;
pub mod run;
pub mod timeline;
pub mod workload;

pub use checker::{Validity, Verdict};
pub use run::{run, Config, Report};

pub use micro_testkit::parse_duration;

/// Connects an SDK client to a node's gRPC address. Every client the harness uses (workload
/// processes, consumers, the nemesis's membership calls, status polls) is built here, so
/// that connection settings and credentials are one change. It acts as the cluster's admin
/// once `run` logged in ([`micro_testkit::auth::login`]).
pub async fn connect(addr: &str) -> Result<micro::Client, micro::Error> {
    micro_testkit::auth::connect(addr).await
}

/// The `micro` binary next to the running executable (`target/<profile>/`), or one level up
/// (test executables live in `target/<profile>/deps/`).
pub fn default_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let here = dir.join("micro");
    if here.exists() {
        return here;
    }
    dir.parent().map_or(here.clone(), |p| p.join("micro"))
}
