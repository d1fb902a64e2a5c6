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

/// Parses `60s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 60s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h)")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
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
