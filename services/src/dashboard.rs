//! The web dashboard, served by every node at `/` (assets under `/ui/`), embedded in the
//! binary: three static files, plain HTML, CSS and JavaScript, no framework and no build step
//! (nothing for the Rust build to run, nothing to audit beyond ~500 lines, works offline).
//!
//! The page holds no privilege of its own: it calls the same HTTP API as `curl`, with the
//! signed-in account's token in the `micro-token` cookie (the gateway already accepts it), so
//! it shows exactly what that account may read. It only reads. Pages: cluster (members, roles,
//! indexes, lag, live), store browser, event streams (topics, groups and their lag, live
//! tail), registry, config, locks and elections, auth accounts and rules.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// The page may load only its own files and talk only to its own origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
}

/// A GET-only route: another method gets a 405 in Micro's JSON, before its body is read (so
/// it also says `Connection: close`, as every such early answer of the gateway does).
pub(crate) fn get_only<H, T>(handler: H) -> axum::routing::MethodRouter
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    get(handler).fallback(|| async {
        crate::gateway::error_closing(
            "micro.gateway",
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here",
        )
    })
}

/// `/`, `/ui/app.js`, `/ui/app.css`.
pub fn routes() -> axum::Router {
    axum::Router::new()
        .route(
            "/",
            get_only(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get_only(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get_only(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}
