//! The HTTP gateway: Micro v3's `/[service]/[method]` mapping onto gRPC.
//!
//! A path resolves to a service and an endpoint as Micro's API gateway does (see
//! [`resolve`]); the endpoint names a gRPC method whose request and response types come from
//! the services' descriptors, so JSON converts to protobuf and back by reflection (proto3 JSON
//! mapping: bytes are base64). The call goes to this node's own gRPC port, so HTTP clients get
//! exactly the gRPC behaviour, errors included.

use std::str::FromStr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use micro::reflection::RawCodec;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::{Map, Value};
use tonic::transport::Channel;

use crate::errors::{http_status, micro_error};

use micro::reflection::SERVICE_HEADER;
/// Protobuf packages the gateway exposes (the internal peer protocol is not one of them).
use micro_proto::PUBLIC_PACKAGES;
/// Large enough for a base64 value just over the store's 1.5 MiB limit to reach validation
/// and get a 400 naming the field instead of a bare 413.
const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// How much of a body over BODY_LIMIT is read (and dropped) to answer with a 413 the client
/// can read; beyond this the connection is just closed.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

pub struct Gateway {
    pool: DescriptorPool,
    channel: Channel,
    authn: Arc<crate::auth::Authenticator>,
    upstreams: Arc<crate::upstream::Upstreams>,
}

impl Gateway {
    /// A gateway calling the gRPC front end at `grpc_addr` (which forwards calls for users'
    /// services to their nodes).
    pub fn new(
        grpc_addr: std::net::SocketAddr,
        authn: Arc<crate::auth::Authenticator>,
        upstreams: Arc<crate::upstream::Upstreams>,
    ) -> anyhow::Result<Gateway> {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET)?;
        let mut target = grpc_addr;
        if target.ip().is_unspecified() {
            target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Gateway {
            pool,
            channel,
            authn,
            upstreams,
        })
    }

    pub fn router(self) -> Router {
        Router::new().fallback(handle).with_state(Arc::new(self))
    }
}

/// `read-all` → `ReadAll`, `read_all` → `ReadAll`, `read` → `Read`.
pub(crate) fn camel(segment: &str) -> String {
    segment
        .split(['-', '_'])
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut c = s.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

fn is_version(s: &str) -> bool {
    s.len() > 1 && s.starts_with('v') && s[1..].chars().all(|c| c.is_ascii_digit())
}

/// Micro v3's path → (service, endpoint) resolution:
/// `/foo` → (`foo`, `Foo.Call`); `/foo/bar` → (`foo`, `Foo.Bar`); `/foo/bar/baz` → (`foo`,
/// `Bar.Baz`); longer paths put the extra leading segments into the service name
/// (`/foo/bar/baz/cat` → (`foo.bar`, `Baz.Cat`)); a leading version segment joins the service
/// name (`/v1/foo/bar` → (`v1.foo`, `Foo.Bar`)).
pub fn resolve(path: &str) -> Option<(String, String)> {
    let mut parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        return None;
    }
    let mut prefix = String::new();
    if is_version(parts[0]) && parts.len() > 1 {
        prefix = format!("{}.", parts.remove(0));
    }
    let (service, endpoint) = match parts.len() {
        1 => (parts[0].to_string(), format!("{}.Call", camel(parts[0]))),
        2 => (
            parts[0].to_string(),
            format!("{}.{}", camel(parts[0]), camel(parts[1])),
        ),
        n => (
            parts[..n - 2].join("."),
            format!("{}.{}", camel(parts[n - 2]), camel(parts[n - 1])),
        ),
    };
    Some((format!("{prefix}{service}"), endpoint))
}

fn error(id: &str, status: StatusCode, detail: impl AsRef<str>) -> Response {
    (status, axum::Json(micro_error(id, status, detail.as_ref()))).into_response()
}

/// An error answered before the request body was read (or while reading it failed): the
/// connection cannot carry another request, so the answer says `Connection: close`. Without
/// it the server closed the connection silently after answering, and a client that reused
/// it from its pool (reqwest does) failed its next request with "connection closed before
/// message completed" (found by the hostile-client test).
pub(crate) fn error_closing(id: &str, status: StatusCode, detail: impl AsRef<str>) -> Response {
    let mut r = error(id, status, detail);
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some(origin) = foreign_origin(&headers) {
        // There is no auth yet: without this, any web page open in a browser on this machine
        // could POST to the gateway (a cross-site request needs no preflight for text/plain).
        return error_closing(
            "micro.gateway",
            StatusCode::FORBIDDEN,
            format!("cross-origin request from {origin} refused; call the gateway from the same origin or without a browser"),
        );
    }
    let is_rpc = uri.path().trim_end_matches('/') == "/rpc";
    let resolved = if is_rpc {
        None
    } else {
        match resolve(uri.path()) {
            Some(r) => Some(r),
            None => {
                return error_closing(
                    "micro.gateway",
                    StatusCode::NOT_FOUND,
                    "no service in the path; try /store/read",
                )
            }
        }
    };
    let body = match read_body(&headers, body).await {
        Ok(b) => b,
        Err((status, detail)) => return error_closing("micro.gateway", status, detail),
    };
    // `/rpc`: the service, endpoint and request are in the body (Micro v3's RPC handler).
    let (service, endpoint, rpc_request) = match resolved {
        Some((s, e)) => (s, e, None),
        None => match rpc_body(&headers, &body) {
            Ok((s, e, r)) => (s, e, Some(r)),
            Err(detail) => return error("micro.gateway", StatusCode::BAD_REQUEST, detail),
        },
    };
    let id = format!("micro.{service}");
    let user = !PUBLIC_PACKAGES.contains(&service.as_str());
    let (rpc, found) = if user {
        match user_method(&gw, &headers, &service, &endpoint).await {
            Ok((m, f)) => (m, Some(f)),
            Err(r) => return r,
        }
    } else {
        match find_method(&gw.pool, &service, &endpoint) {
            Ok(m) => (m, None),
            Err((status, detail)) => return error(&id, status, detail),
        }
    };
    // Where the call goes: Micro's own services on this node's gRPC port (through its auth
    // layer); a user's service straight to an instance (the caller was authorised above),
    // skipping the loopback hop through the proxy.
    let target = |tried: &[String]| -> Result<(Option<String>, Channel), tonic::Status> {
        match &found {
            None => Ok((None, gw.channel.clone())),
            Some(f) => {
                let (inst, channel) = gw.upstreams.pick(f, tried)?;
                Ok((Some(inst.address), channel))
            }
        }
    };
    if rpc.is_client_streaming() {
        return error(
            &id,
            StatusCode::BAD_REQUEST,
            format!("{endpoint} takes a stream of requests; call it over gRPC"),
        );
    }
    let input = match rpc_request {
        Some(v) => v,
        None => match request_json(&rpc.input(), &method, &uri, &body) {
            Ok(v) => v,
            Err(detail) => return error(&id, StatusCode::BAD_REQUEST, detail),
        },
    };
    let msg = match to_message(&rpc.input(), &input) {
        Ok(m) => m,
        Err(detail) => return error(&id, StatusCode::BAD_REQUEST, detail),
    };
    let encoded: Bytes = msg.encode_to_vec().into();
    let grpc_request = |body: Bytes| {
        let mut req = grpc_request(&headers, body);
        if user {
            if let Ok(v) = service.parse() {
                req.metadata_mut().insert(SERVICE_HEADER, v);
            }
        }
        req
    };
    let wants_sse = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if rpc.is_server_streaming() && wants_sse {
        let channel = match target(&[]) {
            Ok((_, c)) => c,
            Err(status) => return error(&id, http_status(status.code()), status.message()),
        };
        return match sse(&channel, &rpc, grpc_request(encoded.clone())).await {
            Ok(r) => r,
            Err(status) => error(&id, http_status(status.code()), status.message()),
        };
    }
    let to_json = |bytes: Bytes| -> Result<Value, String> {
        let out = DynamicMessage::decode(rpc.output(), bytes)
            .map_err(|e| format!("bad response: {e}"))?;
        out.serialize_with_options(serde_json::value::Serializer, &json_options())
            .map_err(|e| e.to_string())
    };
    let answer = if rpc.is_server_streaming() {
        let channel = match target(&[]) {
            Ok((_, c)) => c,
            Err(status) => return error(&id, http_status(status.code()), status.message()),
        };
        match call_streaming(&channel, &rpc, grpc_request(encoded.clone())).await {
            // Pages of repeated fields (store List's `keys`) merge into one message, as
            // concatenated protobuf does: Micro v3 answers List with one object.
            Ok(parts) if is_page(&rpc.output()) => to_json(parts.concat().into()),
            // Anything else (events, broker messages, snapshot chunks) would merge into its
            // last message: answer with all of them, in order.
            Ok(parts) => parts.into_iter().map(to_json).collect::<Result<_, _>>(),
            Err(status) => return error(&id, http_status(status.code()), status.message()),
        }
    } else {
        // An instance of a user's service that cannot be reached is passed over for a while,
        // and the call tried on another: a unary call that got UNAVAILABLE did not run, and
        // one whose connection broke under it most likely did not (an instance that dies
        // mid-call may have run it: the retry runs it again).
        let attempts = if user { 3 } else { 1 };
        let mut tried = Vec::new();
        loop {
            let (address, channel) = match target(&tried) {
                Ok(t) => t,
                Err(status) => return error(&id, http_status(status.code()), status.message()),
            };
            match call(&channel, &rpc, grpc_request(encoded.clone())).await {
                Ok(bytes) => break to_json(bytes),
                Err(status)
                    if micro::discovery::retryable(&status) && tried.len() + 1 < attempts =>
                {
                    tracing::debug!("retrying {service} {endpoint}: {}", status.message());
                    if let Some(a) = address {
                        gw.upstreams.failed(&a);
                        tried.push(a);
                    }
                }
                Err(status) => return error(&id, http_status(status.code()), status.message()),
            }
        }
    };
    match answer {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => error(&id, StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The method a user service's endpoint names, from the descriptors its nodes serve. The
/// caller is checked first, so nobody learns what a service offers without access to it.
async fn user_method(
    gw: &Gateway,
    headers: &axum::http::HeaderMap,
    service: &str,
    endpoint: &str,
) -> Result<(MethodDescriptor, Arc<crate::upstream::Found>), Response> {
    let id = format!("micro.{service}");
    let fail = |status: tonic::Status| error(&id, http_status(status.code()), status.message());
    let (svc, method) = endpoint.split_once('.').unwrap_or((endpoint, "Call"));
    let mut auth_headers = grpc_request(headers, Bytes::new())
        .metadata()
        .clone()
        .into_headers();
    if let Ok(v) = service.parse() {
        auth_headers.insert(SERVICE_HEADER, v);
    }
    let caller = gw
        .authn
        .authorize(&format!("/{service}.{svc}/{method}"), &auth_headers)
        .map_err(fail)?;
    let Some(found) = gw
        .upstreams
        .find(&caller.namespace, service)
        .map_err(fail)?
    else {
        return Err(error(
            &id,
            StatusCode::NOT_FOUND,
            format!(
                "service {service} not found in namespace {:?}",
                caller.namespace
            ),
        ));
    };
    let no_endpoint = || {
        let names: Vec<&str> = found.endpoints.iter().map(|e| e.name.as_str()).collect();
        error(
            &id,
            StatusCode::BAD_REQUEST,
            format!(
                "service {service} has no endpoint {endpoint}; it has {}",
                names.join(", ")
            ),
        )
    };
    let Some(path) = found.grpc_path(endpoint) else {
        return Err(no_endpoint());
    };
    let pool = gw
        .upstreams
        .descriptors(&caller.namespace, &found)
        .await
        .map_err(fail)?;
    let (full, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .ok_or_else(no_endpoint)?;
    let m = pool
        .get_service_by_name(full)
        .and_then(|sd| sd.methods().find(|m| m.name() == method))
        .ok_or_else(no_endpoint)?;
    Ok((m, found))
}

/// Micro v3's `/rpc` body: `service`, `endpoint` (or `method`) and `request` (an object, or
/// JSON in a string), as JSON or as a form.
fn rpc_body(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<(String, String, Value), String> {
    // By content: `curl -d '{...}'` labels JSON as a form.
    let json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let form = !json
        && headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let obj: Map<String, Value> = if form {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|e| format!("bad form: {e}"))?;
        pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect()
    } else {
        match serde_json::from_slice(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err(
                    "/rpc takes a JSON object: {\"service\", \"endpoint\", \"request\"}".into(),
                )
            }
            Err(e) => return Err(format!("request body is not valid JSON: {e}")),
        }
    };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let service = text("service").ok_or("field service is required (e.g. \"greeter\")")?;
    let endpoint = text("endpoint")
        .or_else(|| text("method"))
        .ok_or("field endpoint (or method) is required (e.g. \"Say.Hello\")")?;
    let request = match obj.get("request") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Err("field request must be a JSON object".into()),
        },
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err("field request must be a JSON object".into()),
    };
    Ok((service.to_string(), endpoint.to_string(), request))
}

/// A message made only of repeated fields: the messages of a stream of it merge into one
/// holding all their elements.
fn is_page(desc: &MessageDescriptor) -> bool {
    let mut fields = desc.fields().peekable();
    fields.peek().is_some() && fields.all(|f| f.is_list())
}

/// The request body, up to BODY_LIMIT. A larger one gets Micro's JSON 413 (axum's own answer
/// is plain text), after reading and dropping up to DRAIN_LIMIT of it: a client that sends
/// its whole body before reading the answer (most do) would otherwise see its connection
/// closed mid-send instead of the error.
async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Bytes, (StatusCode, String)> {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the gateway's limit of {} MiB",
                BODY_LIMIT / (1024 * 1024)
            ),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        })?;
        total = total.saturating_add(chunk.len());
        if total <= BODY_LIMIT {
            buf.extend_from_slice(&chunk);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    if total > BODY_LIMIT {
        return Err(too_large());
    }
    Ok(buf.freeze())
}

fn find_method(
    pool: &DescriptorPool,
    service: &str,
    endpoint: &str,
) -> Result<MethodDescriptor, (StatusCode, String)> {
    let known = PUBLIC_PACKAGES.contains(&service);
    let (svc, method) = endpoint.split_once('.').unwrap_or((endpoint, "Call"));
    let full = format!("{service}.{svc}");
    let found = known
        .then(|| pool.get_service_by_name(&full))
        .flatten()
        .or_else(|| {
            // `/events/publish`: no service `events.Events`, but exactly one service of the
            // package has `Publish`, so that is the one meant.
            let mut candidates = pool
                .services()
                .filter(|s| s.package_name() == service && s.methods().any(|m| m.name() == method));
            let first = candidates.next();
            first.filter(|_| known && candidates.next().is_none())
        });
    let Some(sd) = found else {
        if known {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("service {service} has no endpoint {endpoint}"),
            ));
        }
        return Err((
            StatusCode::NOT_FOUND,
            format!("service {service} not found"),
        ));
    };
    let found = sd.methods().find(|m| m.name() == method);
    found.ok_or_else(|| {
        let names: Vec<String> = sd
            .methods()
            .map(|m| format!("{svc}.{}", m.name()))
            .collect();
        (
            StatusCode::BAD_REQUEST,
            format!(
                "service {service} has no endpoint {endpoint}; it has {}",
                names.join(", ")
            ),
        )
    })
}

/// The request as JSON: the body (empty means `{}`), or for GET the query string.
fn request_json(
    desc: &MessageDescriptor,
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<Value, String> {
    if method == Method::GET && body.is_empty() {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
            .map_err(|e| format!("bad query string: {e}"))?;
        return query_to_json(desc, &pairs);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("request body must be a JSON object".into());
    }
    Ok(v)
}

/// `options.prefix=true&key=a` → `{"options":{"prefix":true},"key":"a"}`, typed by the
/// message's fields.
pub(crate) fn query_to_json(
    desc: &MessageDescriptor,
    pairs: &[(String, String)],
) -> Result<Value, String> {
    let mut root = Map::new();
    for (path, raw) in pairs {
        let mut msg = desc.clone();
        let mut obj = &mut root;
        let segs: Vec<&str> = path.split('.').collect();
        for (i, seg) in segs.iter().enumerate() {
            let field = msg
                .get_field_by_name(seg)
                .or_else(|| msg.get_field_by_json_name(seg))
                .ok_or_else(|| format!("unknown query parameter {path}"))?;
            if i + 1 == segs.len() {
                let v = match field.kind() {
                    Kind::Bool => Value::Bool(
                        raw.parse()
                            .map_err(|_| format!("{path} must be true or false"))?,
                    ),
                    Kind::Int32
                    | Kind::Int64
                    | Kind::Sint32
                    | Kind::Sint64
                    | Kind::Sfixed32
                    | Kind::Sfixed64 => Value::from(
                        raw.parse::<i64>()
                            .map_err(|e| int_error(path, raw, &e, "an integer"))?,
                    ),
                    Kind::Uint32 | Kind::Uint64 | Kind::Fixed32 | Kind::Fixed64 => Value::from(
                        raw.parse::<u64>()
                            .map_err(|e| int_error(path, raw, &e, "a non-negative integer"))?,
                    ),
                    _ => Value::String(raw.clone()),
                };
                obj.insert(field.json_name().to_string(), v);
            } else {
                let Kind::Message(m) = field.kind() else {
                    return Err(format!("{path}: {seg} is not a message"));
                };
                msg = m;
                obj = obj
                    .entry(field.json_name().to_string())
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
                    .ok_or_else(|| format!("{path} conflicts with another parameter"))?;
            }
        }
    }
    Ok(Value::Object(root))
}

fn int_error(path: &str, raw: &str, e: &std::num::ParseIntError, what: &str) -> String {
    use std::num::IntErrorKind::{NegOverflow, PosOverflow};
    match e.kind() {
        PosOverflow | NegOverflow => format!("{path}: {raw} is out of range"),
        _ => format!("{path} must be {what}"),
    }
}

fn deserialize(desc: &MessageDescriptor, v: &Value) -> Result<DynamicMessage, serde_json::Error> {
    let opts = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
    DynamicMessage::deserialize_with_options(desc.clone(), v, &opts)
}

/// Converts JSON to the request message; on failure names the offending field.
pub(crate) fn to_message(desc: &MessageDescriptor, v: &Value) -> Result<DynamicMessage, String> {
    if let Some(detail) = out_of_range(desc, v, "") {
        return Err(detail);
    }
    deserialize(desc, v).map_err(|e| match bad_field(desc, v, "") {
        Some(detail) => detail,
        None => format!("invalid request: {e}"),
    })
}

/// Finds the first JSON number that does not fit its integer field. serde_json reads an
/// integer beyond u64/i64 as a float, which prost-reflect then saturates: `"limit":
/// 18446744073709551616` became 18446744073709551615 instead of an error. (Numbers in strings
/// are range-checked by prost-reflect itself.)
fn out_of_range(desc: &MessageDescriptor, v: &Value, path: &str) -> Option<String> {
    for (k, val) in v.as_object()? {
        let Some(field) = desc
            .get_field_by_json_name(k)
            .or_else(|| desc.get_field_by_name(k))
        else {
            continue;
        };
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let kind = entry.map_entry_value_field().kind();
            for (mk, mv) in val.as_object().into_iter().flatten() {
                if let Some(e) = value_out_of_range(&kind, mv, &format!("{here}.{mk}")) {
                    return Some(e);
                }
            }
        } else if field.is_list() {
            for (i, item) in val.as_array().into_iter().flatten().enumerate() {
                if let Some(e) = value_out_of_range(&field.kind(), item, &format!("{here}[{i}]")) {
                    return Some(e);
                }
            }
        } else if let Some(e) = value_out_of_range(&field.kind(), val, &here) {
            return Some(e);
        }
    }
    None
}

fn value_out_of_range(kind: &Kind, v: &Value, path: &str) -> Option<String> {
    let (lo, hi, name): (i128, i128, &str) = match kind {
        Kind::Message(m) => return out_of_range(m, v, path),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => (i32::MIN.into(), i32::MAX.into(), "int32"),
        Kind::Uint32 | Kind::Fixed32 => (0, u32::MAX.into(), "uint32"),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => (i64::MIN.into(), i64::MAX.into(), "int64"),
        Kind::Uint64 | Kind::Fixed64 => (0, u64::MAX.into(), "uint64"),
        _ => return None,
    };
    let n = v.as_number()?;
    let fits = match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => (lo..=hi).contains(&i128::from(i)),
        (_, Some(u), _) => (lo..=hi).contains(&i128::from(u)),
        // Bounds as floats: lo is a power of two (exact), hi + 1 too, so `< hi + 1` is exact.
        (_, _, Some(f)) => f >= lo as f64 && f < (hi + 1) as f64,
        _ => true,
    };
    (!fits).then(|| format!("invalid field {path}: {n} is out of range for {name}"))
}

/// Finds the first field whose value does not fit its type, descending into messages.
fn bad_field(desc: &MessageDescriptor, v: &Value, path: &str) -> Option<String> {
    let obj = v.as_object()?;
    for (k, val) in obj {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let Some(field) = desc
            .get_field_by_json_name(k)
            .or_else(|| desc.get_field_by_name(k))
        else {
            continue;
        };
        let single = Value::Object(Map::from_iter([(k.clone(), val.clone())]));
        if let Err(e) = deserialize(desc, &single) {
            if let (Kind::Message(m), false) = (field.kind(), field.is_list() || field.is_map()) {
                if let Some(inner) = bad_field(&m, val, &here) {
                    return Some(inner);
                }
            }
            return Some(format!(
                "invalid field {here}: {}",
                strip_position(&e.to_string())
            ));
        }
    }
    None
}

fn strip_position(s: &str) -> &str {
    s.split(" at line ").next().unwrap_or(s)
}

/// The request's `Origin` when it names another site than the one it was sent to (browsers
/// send `Origin` on cross-site requests; command-line clients send none).
fn foreign_origin(headers: &axum::http::HeaderMap) -> Option<String> {
    let origin = headers
        .get(axum::http::header::ORIGIN)?
        .to_str()
        .unwrap_or("?");
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    (origin_host != host).then(|| origin.to_string())
}

pub(crate) fn json_options() -> prost_reflect::SerializeOptions {
    prost_reflect::SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
}

fn grpc_path(rpc: &MethodDescriptor) -> Result<http::uri::PathAndQuery, tonic::Status> {
    http::uri::PathAndQuery::from_str(&format!(
        "/{}/{}",
        rpc.parent_service().full_name(),
        rpc.name()
    ))
    .map_err(|e| tonic::Status::internal(e.to_string()))
}

/// A server-streaming RPC as Server-Sent Events: one `data:` JSON message per gRPC message,
/// for as long as the stream (e.g. a live `events/consume`) runs.
async fn sse(
    channel: &Channel,
    rpc: &MethodDescriptor,
    body: tonic::Request<Bytes>,
) -> Result<Response, tonic::Status> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let mut grpc = ready(channel).await?;
    let stream = grpc
        .server_streaming(body, grpc_path(rpc)?, RawCodec)
        .await?
        .into_inner();
    let output = rpc.output();
    let events = stream.map(move |item| {
        let ev = match item.and_then(|b| {
            DynamicMessage::decode(output.clone(), b)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        }) {
            Ok(m) => match m.serialize_with_options(serde_json::value::Serializer, &json_options())
            {
                Ok(v) => Event::default().data(v.to_string()),
                Err(e) => Event::default().event("error").data(e.to_string()),
            },
            Err(status) => Event::default().event("error").data(
                micro_error(
                    "micro.gateway",
                    http_status(status.code()),
                    status.message(),
                )
                .to_string(),
            ),
        };
        Ok::<_, std::convert::Infallible>(ev)
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The gRPC request for an HTTP request: the body, and who is asking (the `Authorization`
/// header, else Micro's `micro-token` cookie, and `Micro-Namespace`), so the gRPC front end's
/// auth layer decides for HTTP callers exactly as for gRPC ones.
fn grpc_request(headers: &axum::http::HeaderMap, body: Bytes) -> tonic::Request<Bytes> {
    let mut req = tonic::Request::new(body);
    let md = req.metadata_mut();
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .cloned()
        .or_else(|| {
            cookie(headers, "micro-token").and_then(|t| format!("Bearer {t}").parse().ok())
        });
    if let Some(v) = token.and_then(|v| v.to_str().ok().and_then(|s| s.parse().ok())) {
        md.insert("authorization", v);
    }
    if let Some(v) = headers
        .get(crate::auth::NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
    {
        md.insert(crate::auth::NAMESPACE_HEADER, v);
    }
    if let Some(v) = headers
        .get(micro_cluster::trace::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
    {
        md.insert(micro_cluster::trace::HEADER, v);
    }
    req
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn ready(channel: &Channel) -> Result<tonic::client::Grpc<Channel>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("gRPC front end not ready: {e}")))?;
    Ok(grpc)
}

/// Calls the unary `rpc` on the local gRPC front end with an encoded request.
async fn call(
    channel: &Channel,
    rpc: &MethodDescriptor,
    body: tonic::Request<Bytes>,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = ready(channel).await?;
    let path = grpc_path(rpc)?;
    Ok(grpc.unary(body, path, RawCodec).await?.into_inner())
}

/// Calls the server-streaming `rpc` and gathers its messages until the stream ends.
async fn call_streaming(
    channel: &Channel,
    rpc: &MethodDescriptor,
    body: tonic::Request<Bytes>,
) -> Result<Vec<Bytes>, tonic::Status> {
    let mut grpc = ready(channel).await?;
    let path = grpc_path(rpc)?;
    let mut stream = grpc
        .server_streaming(body, path, RawCodec)
        .await?
        .into_inner();
    let mut all = Vec::new();
    while let Some(part) = stream.next().await {
        all.push(part?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str) -> Option<(String, String)> {
        resolve(p)
    }

    #[test]
    fn resolves_paths_like_micro() {
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(r("/foo"), pair("foo", "Foo.Call"));
        assert_eq!(r("/foo/bar"), pair("foo", "Foo.Bar"));
        assert_eq!(r("/foo/bar/baz"), pair("foo", "Bar.Baz"));
        assert_eq!(r("/foo/bar/baz/cat"), pair("foo.bar", "Baz.Cat"));
        assert_eq!(r("/v1/foo/bar"), pair("v1.foo", "Foo.Bar"));
        assert_eq!(r("/store/read-all"), pair("store", "Store.ReadAll"));
        assert_eq!(r("/"), None);
    }

    #[test]
    fn finds_platform_methods_and_names_missing_ones() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        assert_eq!(
            find_method(&pool, "store", "Store.Read").unwrap().name(),
            "Read"
        );
        let m = find_method(&pool, "events", "Stream.Consume").unwrap();
        assert_eq!(m.parent_service().full_name(), "events.Stream");
        // A unique method name in the package resolves without the service segment.
        let m = find_method(&pool, "events", "Events.Publish").unwrap();
        assert_eq!(m.parent_service().full_name(), "events.Stream");
        let (code, detail) = find_method(&pool, "store", "Store.Nope").unwrap_err();
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(detail.contains("Store.Read"), "{detail}");
        assert_eq!(
            find_method(&pool, "nope", "Nope.Call").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
        // The peer protocol is never reachable through the gateway.
        assert_eq!(
            find_method(&pool, "raft", "Peer.Vote").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn only_pages_of_repeated_fields_merge() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        let msg = |n: &str| pool.get_message_by_name(n).unwrap();
        assert!(is_page(&msg("store.ListResponse")));
        assert!(!is_page(&msg("events.Event")));
        assert!(!is_page(&msg("broker.Message")));
        assert!(!is_page(&msg("cluster.SnapshotChunk")));
    }

    #[test]
    fn cross_origin_requests_are_recognised() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        assert_eq!(foreign_origin(&h), None, "no Origin: curl, SDKs");
        h.insert("origin", "http://127.0.0.1:8080".parse().unwrap());
        assert_eq!(foreign_origin(&h), None, "same origin");
        h.insert("origin", "https://evil.example".parse().unwrap());
        assert_eq!(foreign_origin(&h).as_deref(), Some("https://evil.example"));
    }

    #[test]
    fn names_the_field_with_the_wrong_type() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        let m = pool.get_message_by_name("store.ReadRequest").unwrap();
        let err = to_message(
            &m,
            &serde_json::json!({"key": "a", "options": {"prefix": "yes"}}),
        )
        .unwrap_err();
        assert!(err.contains("options.prefix"), "{err}");
        let err = to_message(&m, &serde_json::json!({"key": 5})).unwrap_err();
        assert!(err.contains("field key"), "{err}");
    }

    #[test]
    fn integers_out_of_range_are_refused_naming_the_field() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        let m = pool.get_message_by_name("store.ReadRequest").unwrap();
        let v: Value =
            serde_json::from_str(r#"{"key":"a","options":{"limit":18446744073709551616}}"#)
                .unwrap();
        let err = to_message(&m, &v).unwrap_err();
        assert!(
            err.contains("options.limit") && err.contains("out of range"),
            "{err}"
        );
        let v: Value =
            serde_json::from_str(r#"{"options":{"limit":18446744073709551615}}"#).unwrap();
        assert!(to_message(&m, &v).is_ok(), "u64::MAX fits");
        for bad in [
            r#"{"options":{"limit":-1}}"#,
            r#"{"options":{"limit":1e30}}"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(
                to_message(&m, &v).unwrap_err().contains("options.limit"),
                "{bad}"
            );
        }
        let w = pool.get_message_by_name("store.WriteRequest").unwrap();
        let v: Value =
            serde_json::from_str(r#"{"record":{"key":"k","expiry":9223372036854775808}}"#).unwrap();
        assert!(to_message(&w, &v).unwrap_err().contains("record.expiry"));
        let err = query_to_json(
            &m,
            &[("options.limit".into(), "18446744073709551616".into())],
        )
        .unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn query_strings_are_typed_by_the_message() {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap();
        let m = pool.get_message_by_name("store.ReadRequest").unwrap();
        let pairs = vec![
            ("key".to_string(), "12".to_string()),
            ("options.limit".to_string(), "3".to_string()),
            ("options.prefix".to_string(), "true".to_string()),
        ];
        let v = query_to_json(&m, &pairs).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"key": "12", "options": {"limit": 3, "prefix": true}})
        );
        assert!(to_message(&m, &v).is_ok());
        assert!(query_to_json(&m, &[("nope".into(), "1".into())]).is_err());
    }
}

/// Fuzzing, bounded for CI, of everything the gateway does with a stranger's request before
/// it reaches the gRPC service: the path, the query string or body, JSON → protobuf for every
/// public method (with field names and value types that fit and that do not), and decoding
/// of every answer message. No input may panic; bad input is an `Err` naming what is wrong.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn pool() -> DescriptorPool {
        static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET).unwrap())
            .clone()
    }

    /// Every method the gateway serves.
    fn methods() -> Vec<MethodDescriptor> {
        pool()
            .services()
            .filter(|s| PUBLIC_PACKAGES.contains(&s.package_name()))
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .collect()
    }

    /// Field names of the public messages (so that generated objects hit real fields, with
    /// values of any type), plus a few that exist nowhere.
    fn names() -> Vec<String> {
        let pool = pool();
        let mut out: Vec<String> = pool
            .all_messages()
            .flat_map(|m| m.fields().map(|f| f.name().to_string()).collect::<Vec<_>>())
            .collect();
        out.extend(["", "nope", "__proto__", "ключ", "a.b"].map(String::from));
        out.sort();
        out.dedup();
        out
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop::sample::select(vec![
                "18446744073709551616",
                "-9223372036854775809",
                "1e308",
                "-0",
                "0.5",
                "4294967296",
            ])
            .prop_map(|s| serde_json::from_str::<Value>(s).unwrap()),
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let names = names();
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            number(),
            ".{0,12}".prop_map(Value::from),
            // strings that look like numbers, base64, enums, durations
            prop::sample::select(vec![
                "1",
                "-1",
                "18446744073709551616",
                "aGVsbG8=",
                "!!",
                "1s",
                "NaN",
                "Infinity",
                "true"
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, move |inner| {
            let names = names.clone();
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(names), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// JSON of every shape against every public method's request message.
        #[test]
        fn json_to_protobuf_never_panics(which in any::<prop::sample::Index>(), v in json()) {
            let methods = methods();
            let m = &methods[which.index(methods.len())];
            if let Ok(msg) = to_message(&m.input(), &v) {
                // what converts encodes, and decodes back
                let bytes = msg.encode_to_vec();
                prop_assert!(DynamicMessage::decode(m.input(), bytes.as_slice()).is_ok());
            }
            // the same object as a body, and wrapped in an object
            let body = serde_json::to_vec(&v).unwrap();
            if let Ok(v) = request_json(&m.input(), &Method::POST, &Uri::from_static("/x"), &body) {
                let _ = to_message(&m.input(), &v);
            }
        }

        /// Raw bodies (random bytes, invalid UTF-8, truncated JSON) and query strings.
        #[test]
        fn bodies_and_queries_never_panic(
            which in any::<prop::sample::Index>(),
            body in prop::collection::vec(any::<u8>(), 0..200),
            query in "[a-z_.=&%0-9A-F+\\[\\]-]{0,40}",
        ) {
            let methods = methods();
            let m = &methods[which.index(methods.len())];
            let uri = Uri::from_static("/x");
            if let Ok(v) = request_json(&m.input(), &Method::POST, &uri, &body) {
                let _ = to_message(&m.input(), &v);
            }
            if let Ok(uri) = format!("/x?{query}").parse::<Uri>() {
                if let Ok(v) = request_json(&m.input(), &Method::GET, &uri, &[]) {
                    let _ = to_message(&m.input(), &v);
                }
            }
        }

        /// Any path resolves to a method or to an error.
        #[test]
        fn paths_never_panic(path in "(/[a-zA-Z0-9_.-]{0,10}){0,6}/?") {
            let pool = pool();
            if let Some((service, endpoint)) = resolve(&path) {
                let _ = find_method(&pool, &service, &endpoint);
            }
        }

        /// Answer messages the gateway decodes (unary, streamed, SSE): garbage is an error.
        #[test]
        fn answers_decode_or_fail(which in any::<prop::sample::Index>(), raw in prop::collection::vec(any::<u8>(), 0..200)) {
            let methods = methods();
            let m = &methods[which.index(methods.len())];
            let _ = DynamicMessage::decode(m.output(), raw.as_slice());
        }
    }

    /// Nesting deeper than serde_json's limit (128) is a 400-class error, not a stack overflow.
    #[test]
    fn deep_nesting_is_an_error() {
        let m = methods()
            .into_iter()
            .find(|m| m.full_name() == "store.Store.Write")
            .unwrap();
        for open in ["[", "{\"record\":"] {
            let body = open.repeat(100_000);
            let err = request_json(
                &m.input(),
                &Method::POST,
                &Uri::from_static("/x"),
                body.as_bytes(),
            )
            .unwrap_err();
            assert!(err.contains("not valid JSON"), "{err}");
        }
        // within the limit: converted or refused
        let nested = format!("{}1{}", "{\"record\":".repeat(100), "}".repeat(100));
        let v = request_json(
            &m.input(),
            &Method::POST,
            &Uri::from_static("/x"),
            nested.as_bytes(),
        )
        .unwrap();
        // (the inner `record`s are unknown fields of Record, ignored as Micro v3 does)
        let _ = to_message(&m.input(), &v);
    }
}
