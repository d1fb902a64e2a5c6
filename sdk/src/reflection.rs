//! Reads a running service's protobuf descriptors over gRPC server reflection
//! (`grpc.reflection.v1`), which every [`crate::Service`] serves: what the gateway and the
//! CLI need to speak JSON to a service they were not compiled with.

use std::collections::{BTreeSet, HashMap};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::DescriptorPool;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_reflection::pb::v1 as pb;

use crate::Error;

/// The gRPC metadata naming the registered service a call is for, when its path does not
/// (the node's proxy routes on it; Micro v3's `Micro-Service` header).
pub const SERVICE_HEADER: &str = "micro-service";

/// Just the parts of a `FileDescriptorProto` needed to follow its imports (prost skips the
/// rest of the fields).
#[derive(Clone, PartialEq, Message)]
struct FileHead {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, repeated, tag = "3")]
    dependency: Vec<String>,
}

/// The descriptors of every service `transport` serves (reflection and health excluded),
/// with their imports. `service`, when given, is sent as [`SERVICE_HEADER`] so a node's proxy
/// routes the reflection stream to that registered service.
pub async fn descriptors<T>(transport: T, service: Option<&str>) -> Result<DescriptorPool, Error>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    use pb::server_reflection_request::MessageRequest;
    use pb::server_reflection_response::MessageResponse;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ServerReflectionRequest>(4);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(s) = service.and_then(|s| s.parse().ok()) {
        req.metadata_mut().insert(SERVICE_HEADER, s);
    }
    let send = |m: MessageRequest| {
        let tx = tx.clone();
        async move {
            tx.send(pb::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            })
            .await
            .map_err(|_| Error::Service("the reflection stream closed".into()))
        }
    };
    send(MessageRequest::ListServices(String::new())).await?;
    let mut client = pb::server_reflection_client::ServerReflectionClient::new(transport);
    let mut stream = client.server_reflection_info(req).await?.into_inner();
    let mut next = async || -> Result<MessageResponse, Error> {
        let resp = stream
            .message()
            .await?
            .ok_or_else(|| Error::Service("the reflection stream ended early".into()))?;
        match resp.message_response {
            Some(MessageResponse::ErrorResponse(e)) => Err(Error::Service(format!(
                "reflection: {} (code {})",
                e.error_message, e.error_code
            ))),
            Some(m) => Ok(m),
            None => Err(Error::Service("reflection: empty answer".into())),
        }
    };
    let MessageResponse::ListServicesResponse(list) = next().await? else {
        return Err(Error::Service(
            "reflection: unexpected answer to ListServices".into(),
        ));
    };
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    let take = |m: MessageResponse,
                files: &mut HashMap<String, Vec<u8>>,
                wanted: &mut BTreeSet<String>|
     -> Result<(), Error> {
        let MessageResponse::FileDescriptorResponse(f) = m else {
            return Err(Error::Service("reflection: unexpected answer".into()));
        };
        for raw in f.file_descriptor_proto {
            let head = FileHead::decode(raw.as_slice())
                .map_err(|e| Error::Service(format!("reflection: bad descriptor: {e}")))?;
            wanted.extend(head.dependency.iter().cloned());
            files.insert(head.name, raw);
        }
        Ok(())
    };
    for s in list.service {
        if s.name.starts_with("grpc.reflection.") || s.name.starts_with("grpc.health.") {
            continue;
        }
        send(MessageRequest::FileContainingSymbol(s.name)).await?;
        take(next().await?, &mut files, &mut wanted)?;
    }
    // Imports the answers did not already carry.
    loop {
        let missing: Vec<String> = wanted
            .iter()
            .filter(|f| !files.contains_key(*f))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        for name in missing {
            wanted.remove(&name);
            send(MessageRequest::FileByFilename(name.clone())).await?;
            take(next().await?, &mut files, &mut wanted)?;
            if !files.contains_key(&name) {
                return Err(Error::Service(format!(
                    "reflection: the service did not send {name}"
                )));
            }
        }
    }
    drop(tx);
    // A FileDescriptorSet is its files as field 1: build one and let the pool order them.
    let mut set = Vec::new();
    for raw in files.values() {
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut set);
        prost::encoding::encode_varint(raw.len() as u64, &mut set);
        set.put_slice(raw);
    }
    DescriptorPool::decode(set.as_slice())
        .map_err(|e| Error::Service(format!("reflection: descriptors do not resolve: {e}")))
}

/// A codec that passes encoded protobuf through untouched (for callers that encode
/// messages themselves, e.g. from JSON by reflection).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
