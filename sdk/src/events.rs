//! The events client: publish, consume (replay from any position, then live), ack.

use std::collections::HashMap;

use crate::Transport as Channel;
use micro_proto::events as pb;
use pb::stream_client::StreamClient;

use crate::Error;

pub use pb::{ConsumeRequest, Event};

/// Event stream operations.
#[derive(Clone)]
pub struct Events {
    client: StreamClient<Channel>,
}

/// A live consumption: events in order; see [`Events::consume`].
pub struct Consumer {
    stream: tonic::Streaming<pb::Event>,
    /// Set when the requested start had been trimmed by retention: the first retained sequence
    /// the stream starts at instead.
    pub trimmed_to: Option<u64>,
}

impl Consumer {
    /// The next event, `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<pb::Event>, Error> {
        Ok(self.stream.message().await?)
    }
}

impl Events {
    pub(crate) fn new(channel: Channel) -> Self {
        Events {
            client: StreamClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(16 * 1024 * 1024),
        }
    }

    /// Publishes an event; returns its sequence in the topic.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        metadata: HashMap<String, String>,
    ) -> Result<u64, Error> {
        let req = pb::PublishRequest {
            topic: topic.to_string(),
            metadata,
            payload,
            timestamp: 0,
            fence: None,
        };
        Ok(self
            .client
            .clone()
            .publish(req)
            .await?
            .into_inner()
            .sequence)
    }

    /// Starts consuming. Set `from_sequence`, `from_start` or `offset` (unix seconds) to replay,
    /// `group` to share the stream with other consumers of the group (then ack each event),
    /// `stop_at_end` to stop once caught up.
    pub async fn consume(&self, req: pb::ConsumeRequest) -> Result<Consumer, Error> {
        let resp = self.client.clone().consume(req).await?;
        let trimmed_to = resp
            .metadata()
            .get("x-micro-trimmed-to")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Consumer {
            stream: resp.into_inner(),
            trimmed_to,
        })
    }

    /// Acks (or with `success = false` asks to redeliver) an event delivered to `group`.
    pub async fn ack(&self, group: &str, id: &str, success: bool) -> Result<(), Error> {
        let req = pb::AckRequest {
            id: id.to_string(),
            success,
            group: group.to_string(),
        };
        self.client.clone().ack(req).await?;
        Ok(())
    }

    pub async fn topics(&self) -> Result<Vec<pb::Topic>, Error> {
        Ok(self
            .client
            .clone()
            .topics(pb::TopicsRequest {})
            .await?
            .into_inner()
            .topics)
    }

    /// Keeps at most `max_events` events and none older than `max_age_ms` (0: unlimited).
    pub async fn set_retention(
        &self,
        topic: &str,
        max_events: u64,
        max_age_ms: u64,
    ) -> Result<(), Error> {
        let req = pb::RetentionRequest {
            topic: topic.to_string(),
            max_events,
            max_age: max_age_ms,
        };
        self.client.clone().retention(req).await?;
        Ok(())
    }
}
