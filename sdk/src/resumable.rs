//! Watches that remember where they are: every watch of the platform streams messages that
//! carry the revision of the change, so one that lost its node can continue on another from
//! the last revision + 1 and see exactly the rest.

use crate::Error;

/// A streamed message with the revision of the change it reports.
pub trait Revisioned {
    fn revision(&self) -> u64;
}

impl Revisioned for micro_proto::store::WatchResponse {
    fn revision(&self) -> u64 {
        self.revision
    }
}

impl Revisioned for micro_proto::registry::Result {
    fn revision(&self) -> u64 {
        self.revision
    }
}

impl Revisioned for micro_proto::config::WatchResponse {
    fn revision(&self) -> u64 {
        self.revision
    }
}

/// A running watch.
pub struct Resumable<M> {
    stream: tonic::Streaming<M>,
    last_revision: u64,
}

impl<M: Revisioned> Resumable<M> {
    /// A watch that started at `from_revision` (0: after now).
    pub(crate) fn new(stream: tonic::Streaming<M>, from_revision: u64) -> Self {
        Resumable {
            stream,
            last_revision: from_revision.saturating_sub(1),
        }
    }

    /// The next change; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<M>, Error> {
        let m = self.stream.message().await?;
        if let Some(m) = &m {
            self.last_revision = self.last_revision.max(m.revision());
        }
        Ok(m)
    }

    /// The revision to pass as `from_revision` to continue where this watch stopped.
    pub fn resume_from(&self) -> u64 {
        self.last_revision + 1
    }
}
