//! `micro call`, `micro describe` and the dynamic per-service commands
//! (`micro greeter say hello --name John`): calling users' services with JSON.
//!
//! The call goes to the node's gRPC port, which forwards it to a node of the service (its
//! proxy); the request and response are converted from and to JSON with the descriptors the
//! service serves by reflection, fetched the same way.

use bytes::Bytes;
use futures::StreamExt;
use micro::proto::registry as rpb;
use micro::reflection::{RawCodec, SERVICE_HEADER};
use prost::Message;
use prost_reflect::{DynamicMessage, MethodDescriptor};

use super::*;
use crate::gateway::{camel, json_options, query_to_json, to_message};

/// `Say.Hello` from the registry (any case), with its gRPC path.
fn endpoint_of<'a>(
    service: &str,
    versions: &'a [rpb::Service],
    endpoint: &str,
) -> anyhow::Result<(&'a rpb::Endpoint, String)> {
    let all: Vec<&rpb::Endpoint> = versions.iter().flat_map(|s| &s.endpoints).collect();
    let Some(e) = all
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(endpoint))
        .copied()
    else {
        let mut names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
        names.sort();
        names.dedup();
        anyhow::bail!(
            "service {service} has no endpoint {endpoint}; it has {}",
            names.join(", ")
        );
    };
    let path = micro::service::grpc_path(service, e)
        .ok_or_else(|| anyhow::anyhow!("endpoint {} is not Service.Method", e.name))?;
    Ok((e, path))
}

/// The registered versions of `service`, with a remedy when there are none.
async fn lookup(client: &Client, service: &str) -> anyhow::Result<Vec<rpb::Service>> {
    match client.registry().get(service).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_not_found() => anyhow::bail!(
            "service {service} is not registered; `micro services` lists the ones that are"
        ),
        Err(e) => Err(e.into()),
    }
}

/// The method behind `endpoint` of `service`, from the descriptors the service serves.
async fn method_of(
    client: &Client,
    service: &str,
    versions: &[rpb::Service],
    endpoint: &str,
) -> anyhow::Result<(MethodDescriptor, String)> {
    let (_, path) = endpoint_of(service, versions, endpoint)?;
    let pool = retried(
        |e| matches!(e, micro::Error::Status(st) if micro::discovery::retryable(st)),
        || micro::reflection::descriptors(client.channel(), Some(service)),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot read service {service}'s descriptors: {e}"))?;
    let (full, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("bad gRPC path {path}"))?;
    let m = pool
        .get_service_by_name(full)
        .and_then(|sd| sd.methods().find(|m| m.name() == method))
        .ok_or_else(|| anyhow::anyhow!("service {service} does not serve {path}"))?;
    Ok((m, path))
}

/// Calls `rpc` with a JSON request; prints the response (each message of a stream).
async fn invoke(
    client: &Client,
    service: &str,
    rpc: &MethodDescriptor,
    path: &str,
    request: &Value,
    out: Output,
) -> anyhow::Result<ExitCode> {
    if rpc.is_client_streaming() {
        anyhow::bail!(
            "{} takes a stream of requests; call it with a gRPC client",
            rpc.name()
        );
    }
    let msg = to_message(&rpc.input(), request).map_err(|e| anyhow::anyhow!(e))?;
    let mut req = tonic::Request::new(Bytes::from(msg.encode_to_vec()));
    req.metadata_mut().insert(SERVICE_HEADER, service.parse()?);
    let mut grpc = tonic::client::Grpc::new(client.channel());
    grpc.ready().await?;
    let path: http::uri::PathAndQuery = path.parse()?;
    let show = |b: Bytes| -> anyhow::Result<()> {
        let m = DynamicMessage::decode(rpc.output(), b)?;
        let v = m.serialize_with_options(serde_json::value::Serializer, &json_options())?;
        match out {
            Output::Json => println!("{v}"),
            Output::Table => print_json(&v),
        }
        Ok(())
    };
    if rpc.is_server_streaming() {
        let mut stream = grpc
            .server_streaming(req, path, RawCodec)
            .await
            .map_err(status_error)?
            .into_inner();
        while let Some(item) = stream.next().await {
            show(item.map_err(status_error)?)?;
        }
    } else {
        let (body, metadata) = (req.get_ref().clone(), req.metadata().clone());
        let resp = retried(micro::discovery::retryable, || {
            let mut req = tonic::Request::new(body.clone());
            *req.metadata_mut() = metadata.clone();
            let (mut grpc, path) = (grpc.clone(), path.clone());
            async move {
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                grpc.unary(req, path, RawCodec).await
            }
        })
        .await
        .map_err(status_error)?;
        show(resp.into_inner())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `op` up to three times while it fails with an error `retry` accepts. An instance that
/// just died stays registered until its TTL ends; the node's proxy marks it unreachable after
/// one failed call and picks another on the next try (nothing reached the dead one).
async fn retried<T, E, F, Fut>(retry: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < 3 && retry(&e) => attempt += 1,
            other => return other,
        }
    }
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

/// `micro call SERVICE ENDPOINT '{json}'`.
pub(super) async fn call(
    t: &Target,
    out: Output,
    service: String,
    endpoint: String,
    request: Option<String>,
) -> anyhow::Result<ExitCode> {
    let request: Value = match request.as_deref().map(str::trim) {
        None | Some("") => json!({}),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("the request is not valid JSON: {e}"))?,
    };
    if !request.is_object() {
        anyhow::bail!("the request must be a JSON object, e.g. '{{\"name\":\"John\"}}'");
    }
    let client = t.connect().await?;
    let versions = lookup(&client, &service).await?;
    let (rpc, path) = method_of(&client, &service, &versions, &endpoint).await?;
    invoke(&client, &service, &rpc, &path, &request, out).await
}

/// One line per field: `name type`.
fn fields(v: Option<&rpb::Value>, indent: &str, lines: &mut Vec<String>) {
    for f in v.map(|v| v.values.as_slice()).unwrap_or_default() {
        lines.push(format!("{indent}--{} {}", f.name, f.r#type));
        if !f.values.is_empty() {
            let nested: Vec<String> = f
                .values
                .iter()
                .map(|x| format!("{}.{} {}", f.name, x.name, x.r#type))
                .collect();
            for n in nested {
                lines.push(format!("{indent}  --{n}"));
            }
        }
    }
}

/// The endpoints of a service with their request fields, as the dynamic commands take them.
fn usage(service: &str, versions: &[rpb::Service]) -> String {
    let mut lines = vec![
        format!("Call service {service}'s endpoints:"),
        String::new(),
    ];
    let mut seen = Vec::new();
    for e in versions.iter().flat_map(|s| &s.endpoints) {
        if seen.contains(&e.name) {
            continue;
        }
        seen.push(e.name.clone());
        let words = e.name.split('.').map(kebab).collect::<Vec<_>>().join(" ");
        let stream = if e
            .metadata
            .get(micro::service::STREAM)
            .is_some_and(|v| v == "true")
        {
            " (stream)"
        } else {
            ""
        };
        lines.push(format!(
            "  micro {service} {words} [--field value]...{stream}"
        ));
        fields(e.request.as_ref(), "      ", &mut lines);
    }
    lines.push(String::new());
    lines.push(format!(
        "Or with JSON: micro call {service} ENDPOINT '{{\"field\":\"value\"}}'"
    ));
    lines.join("\n")
}

/// `SayHello` → `say-hello`.
fn kebab(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// `micro greeter say hello --name John`: words name the endpoint, flags its request fields
/// (`--options.limit 5` for nested ones).
pub(super) async fn dynamic(
    t: &Target,
    out: Output,
    args: Vec<String>,
) -> anyhow::Result<ExitCode> {
    // Global flags after the service's name reach us unparsed: take `--output` here.
    let mut out = out;
    let mut args = args;
    if let Some(i) = args
        .iter()
        .position(|a| a == "-o" || a == "--output" || a.starts_with("--output="))
    {
        let value = match args[i].split_once('=') {
            Some((_, v)) => v.to_string(),
            None if i + 1 < args.len() => args.remove(i + 1),
            None => anyhow::bail!("--output needs a value: table or json"),
        };
        args.remove(i);
        out = match value.as_str() {
            "json" => Output::Json,
            "table" => Output::Table,
            v => anyhow::bail!("--output {v}: expected table or json"),
        };
    }
    let Some((service, rest)) = args.split_first() else {
        anyhow::bail!("no command given; see `micro --help`");
    };
    let words: Vec<&String> = rest.iter().take_while(|a| !a.starts_with('-')).collect();
    let flags = &rest[words.len()..];
    let help = flags.iter().any(|f| f == "--help" || f == "-h");
    let client = t.connect().await.map_err(|e| {
        anyhow::anyhow!("`{service}` is not a micro command, and no node answered to look it up as a service: {e:#}")
    })?;
    let versions = match client.registry().get(service).await {
        Ok(v) => v,
        Err(e) if e.is_not_found() => anyhow::bail!(
            "`{service}` is neither a micro command nor a registered service; see `micro --help` and `micro services`"
        ),
        Err(e) => return Err(e.into()),
    };
    let endpoint =
        match words.as_slice() {
            [] => {
                println!("{}", usage(service, &versions));
                return Ok(if help {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                });
            }
            // `micro greeter hello`: the one endpoint method of that name
            [m] => {
                let want = camel(m);
                let found: Vec<&str> = versions
                    .iter()
                    .flat_map(|s| &s.endpoints)
                    .map(|e| e.name.as_str())
                    .filter(|n| {
                        n.rsplit('.')
                            .next()
                            .is_some_and(|x| x.eq_ignore_ascii_case(&want))
                    })
                    .collect();
                match found.first() {
                    Some(n) => n.to_string(),
                    None => format!("{}.{want}", camel(service)),
                }
            }
            [svc, m] => format!("{}.{}", camel(svc), camel(m)),
            _ => {
                anyhow::bail!(
            "too many words: {}; endpoints are `SERVICE METHOD` (see `micro {service} --help`)",
            words.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
        )
            }
        };
    let (e, _) = endpoint_of(service, &versions, &endpoint)?;
    if help {
        let mut lines = vec![format!(
            "micro {service} {} [--field value]...",
            rest[..words.len()].join(" ")
        )];
        fields(e.request.as_ref(), "  ", &mut lines);
        println!("{}", lines.join("\n"));
        return Ok(ExitCode::SUCCESS);
    }
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < flags.len() {
        let f = flags[i].trim_start_matches('-');
        if let Some((k, v)) = f.split_once('=') {
            pairs.push((k.to_string(), v.to_string()));
            i += 1;
        } else if i + 1 < flags.len() && !flags[i + 1].starts_with("--") {
            pairs.push((f.to_string(), flags[i + 1].clone()));
            i += 2;
        } else {
            // A bare flag is a true boolean.
            pairs.push((f.to_string(), "true".to_string()));
            i += 1;
        }
    }
    let (rpc, path) = method_of(&client, service, &versions, &endpoint).await?;
    let request = query_to_json(&rpc.input(), &pairs).map_err(|e| anyhow::anyhow!(e))?;
    invoke(&client, service, &rpc, &path, &request, out).await
}

/// `micro describe SERVICE`: versions, nodes and endpoints with their fields.
pub(super) async fn describe(t: &Target, out: Output, service: String) -> anyhow::Result<ExitCode> {
    let client = t.connect().await?;
    let versions = lookup(&client, &service).await?;
    match out {
        Output::Json => super::registry::print_services(&versions, out)?,
        Output::Table => {
            super::registry::print_services(&versions, out)?;
            println!("{}", usage(&service, &versions));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_names() {
        assert_eq!(kebab("SayHello"), "say-hello");
        assert_eq!(camel("say-hello"), "SayHello");
        assert_eq!(camel("hello"), "Hello");
    }
}
