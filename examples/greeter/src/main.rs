//! The greeter: `Say.Hello {name} -> {msg}`, registered with Micro and callable through the
//! node's gateway (`curl 'localhost:8080/greeter/say/hello?name=John'`), its gRPC proxy and
//! the CLI (`micro call greeter Say.Hello '{"name":"John"}'`).
//!
//! It finds the node as the CLI does (`MICRO_SERVER`, else the CLI's env, else
//! 127.0.0.1:8081) and logs in with the CLI's credentials or `MICRO_AUTH_ID`/`_SECRET`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("greeter");
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/greeter.bin"));
}

use pb::say_server::{Say, SayServer};

#[derive(Default)]
struct Greeter {
    hellos: Arc<AtomicU64>,
}

/// The most greetings one Stream call sends.
const MAX_STREAM: i64 = 10_000;

#[tonic::async_trait]
impl Say for Greeter {
    async fn hello(&self, req: Request<pb::Request>) -> Result<Response<pb::Response>, Status> {
        self.hellos.fetch_add(1, Ordering::Relaxed);
        let name = req.into_inner().name;
        Ok(Response::new(pb::Response {
            msg: format!("Hello {name}"),
        }))
    }

    type StreamStream = ReceiverStream<Result<pb::Response, Status>>;

    async fn stream(
        &self,
        req: Request<pb::StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let req = req.into_inner();
        if !(0..=MAX_STREAM).contains(&req.count) {
            return Err(Status::invalid_argument(format!(
                "count must be between 0 and {MAX_STREAM}"
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for i in 1..=req.count {
                let msg = format!("Hello {} ({i}/{})", req.name, req.count);
                if tx.send(Ok(pb::Response { msg })).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn info(
        &self,
        req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let ctx = micro::Context::of(&req);
        let account = ctx.account().unwrap_or_default();
        Ok(Response::new(pb::InfoResponse {
            instance: std::process::id().to_string(),
            hellos: self.hellos.load(Ordering::Relaxed),
            caller: account.id,
            namespace: ctx.namespace().map_or(account.issuer, str::to_string),
        }))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let service = micro::Service::new("greeter")
        .descriptors(pb::FILE_DESCRIPTOR_SET)
        // Each call at RUST_LOG=info (the default here).
        .layer(micro::service::Logging)
        .add_service(SayServer::new(Greeter::default()));
    match service.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("greeter: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
