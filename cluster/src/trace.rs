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

/// Wall-clock stamps of a write's steps, for `micro-bench timeline` (docs/benchmarks.md,
/// "Ninth"). With `MICRO_TIMELINE_DIR` set when a node starts, it appends `<unix ns>\t<step>`
/// lines to `DIR/n<node id>.tsv`; the nodes of one machine share its clock, so their stamps
/// line up into one write's path across them. Unset (always, outside a benchmark), a stamp
/// costs one load and a branch.
pub mod timeline {
    use std::fmt::Write as _;
    use std::io::Write as _;
    use std::sync::{Mutex, OnceLock};

    static STAMPS: OnceLock<Mutex<Vec<(u128, &'static str)>>> = OnceLock::new();

    /// Starts recording if `MICRO_TIMELINE_DIR` is set (the first node of a process only).
    pub fn start(node_id: u64) {
        let Some(dir) = std::env::var_os("MICRO_TIMELINE_DIR") else {
            return;
        };
        let mut first = false;
        let stamps = STAMPS.get_or_init(|| {
            first = true;
            Mutex::new(Vec::new())
        });
        if !first {
            return;
        }
        let path = std::path::Path::new(&dir).join(format!("n{node_id}.tsv"));
        // Written from a thread of its own, a few times a second: the stamps themselves only
        // push onto a vector.
        let spawned = std::thread::Builder::new()
            .name("micro-timeline".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let taken = std::mem::take(&mut *stamps.lock().unwrap_or_else(|e| e.into_inner()));
                if taken.is_empty() {
                    continue;
                }
                let mut text = String::with_capacity(taken.len() * 32);
                for (t, step) in taken {
                    let _ = writeln!(text, "{t}\t{step}");
                }
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(text.as_bytes()));
                if let Err(e) = written {
                    tracing::warn!(path = %path.display(), "timeline stamps not written: {e}");
                    return;
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("timeline not recorded: {e}");
        }
    }

    /// Notes that this node reached `step` now (when recording).
    #[inline]
    pub fn stamp(step: &'static str) {
        if let Some(stamps) = STAMPS.get() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            stamps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((t, step));
        }
    }
}
