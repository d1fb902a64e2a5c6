//! Optional OpenTelemetry trace export (`micro server --otlp-endpoint URL`, OTLP over
//! HTTP/protobuf, e.g. `http://collector:4318/v1/traces`).
//!
//! With it, every request becomes a span (`grpc` or `http`: method or path, status, and the
//! caller's `x-request-id` when given), and so do a follower's forwarded write and the leader's
//! proposal (`forwarded_write`, `propose`), each with the node id as a resource attribute.
//! Without it no span is made at all, so the request path pays nothing for the option.
//! Batching, retries and the standard `OTEL_*` variables (`OTEL_BSP_SCHEDULE_DELAY`, …) are
//! the OpenTelemetry SDK's.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The exporter's provider, flushed and shut down when the server stops.
pub struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Flushes what is batched and stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("micro: OTLP export shutdown: {e}");
        }
    }
}

/// A tracing layer exporting spans to `endpoint`, and the handle that stops it.
pub fn layer<S>(
    endpoint: &str,
    node_id: u64,
) -> anyhow::Result<(impl tracing_subscriber::Layer<S>, Export)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .with_headers(Default::default())
        .build()
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("micro")
        .with_attribute(opentelemetry::KeyValue::new(
            "micro.node_id",
            node_id as i64,
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("micro");
    micro_cluster::trace::enable_spans();
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer),
        Export { provider },
    ))
}
