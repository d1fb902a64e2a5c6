//! `broker.Broker`, Micro v3 compatible: ephemeral pub/sub across every node.

use std::pin::Pin;

use futures::Stream;
use micro_cluster::broker::Message;
use micro_cluster::Node;
use micro_proto::broker as pb;
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::errors::invalid;

pub struct BrokerService {
    node: Node,
}

impl BrokerService {
    pub fn server(node: Node) -> pb::broker_server::BrokerServer<BrokerService> {
        pb::broker_server::BrokerServer::new(BrokerService { node })
    }
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<pb::Message, Status>> + Send>>;

#[tonic::async_trait]
impl pb::broker_server::Broker for BrokerService {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        if req.topic.is_empty() {
            return Err(invalid("topic", "must not be empty"));
        }
        let topic = caller.scoped("topic", &req.topic)?;
        let m = req.message.unwrap_or_default();
        let msg = Message {
            header: m.header.into_iter().collect(),
            body: m.body,
        };
        self.node.broker_publish(&topic, msg).await;
        Ok(Response::new(pb::Empty {}))
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&req);
        let req = req.into_inner();
        if req.topic.is_empty() {
            return Err(invalid("topic", "must not be empty"));
        }
        let topic = caller.scoped("topic", &req.topic)?;
        let rx = self.node.broker_subscribe(&topic, &req.queue);
        let stream =
            futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |m| {
                Ok(pb::Message {
                    header: m.header.into_iter().collect(),
                    body: m.body,
                })
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
