//! One way to turn a node's watch into a gRPC response stream, for the views whose watch
//! answers one message per changed key (registry, config, elections).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use micro_cluster::{Error, WatchEvent};
use micro_state::Change;
use tokio::sync::mpsc;
use tonic::Status;

use crate::errors::status;

pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Streams every change of the watch through `each` (which may skip one with `None`), in
/// revision order; progress notifications are dropped and errors end the stream.
pub fn per_change<T, F>(rx: mpsc::Receiver<Result<WatchEvent, Error>>, each: F) -> ResponseStream<T>
where
    T: Send + 'static,
    F: Fn(u64, Change) -> Option<Result<T, Status>> + Send + 'static,
{
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(move |item| -> Vec<Result<T, Status>> {
            match item {
                Err(e) => vec![Err(status(e))],
                Ok(WatchEvent::Progress { .. }) => Vec::new(),
                Ok(WatchEvent::Changes { revision, changes }) => changes
                    .into_iter()
                    .filter_map(|c| each(revision, c))
                    .collect(),
            }
        })
        .flat_map(futures::stream::iter);
    Box::pin(stream)
}

/// A history value that does not decode: a storage fault, named.
pub fn corrupt(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("corrupt history: {e}"))
}
