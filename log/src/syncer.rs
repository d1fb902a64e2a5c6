//! Group commit: one thread fsyncs the WAL for every caller that queued while the previous
//! fsync ran, then tells them all, in submission order.

use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use rocksdb::DB;

pub(crate) type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

pub(crate) struct Syncer {
    tx: Option<mpsc::Sender<Done>>,
    handle: Option<JoinHandle<()>>,
}

impl Syncer {
    pub(crate) fn start(db: Arc<DB>) -> Syncer {
        let (tx, rx) = mpsc::channel::<Done>();
        let handle = std::thread::Builder::new()
            .name("micro-log-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    // Every write that precedes a queued callback is in the WAL already, so
                    // this one fsync makes all of them durable.
                    let started = std::time::Instant::now();
                    let res = db.flush_wal(true).map_err(|e| e.into_string());
                    metrics::histogram!("micro_log_fsync_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("micro_log_fsync_waiters").record(waiting.len() as f64);
                    for done in waiting {
                        done(res.clone());
                    }
                }
            })
            .expect("spawn the log sync thread");
        Syncer {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    pub(crate) fn submit(&self, done: Done) {
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(done)) = tx.send(done) {
                done(Err("the log sync thread has stopped".into()));
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
