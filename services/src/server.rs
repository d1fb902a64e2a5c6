//! Assembles a node with its gRPC and HTTP front ends and runs them until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use micro_cluster::{Node, NodeConfig};
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::grpc::cluster::ClusterService;
use crate::grpc::store::StoreService;

pub struct ServerConfig {
    pub node: NodeConfig,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Serve every request without credentials (loopback listeners only).
    pub auth_disabled: bool,
    /// The CLI config directory the first admin's credentials are written to.
    pub config_dir: std::path::PathBuf,
    /// How `micro run` services are built, placed and logged.
    pub runtime: crate::runtime::Config,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for {what} on {addr}: {e}; pick another address with --{what}"
        )
    })
}

/// Runs a node until `shutdown` resolves, then stops it gracefully.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Claim the client ports first so a clash fails before the node joins anything.
    let grpc_listener = bind(cfg.grpc, "grpc").await?;
    let http_listener = bind(cfg.http, "http").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let mut node_cfg = cfg.node;
    node_cfg.grpc_addr = grpc_addr.to_string();
    node_cfg.http_addr = http_addr.to_string();
    if cfg.auth_disabled {
        for (what, addr) in [("grpc", grpc_addr), ("http", http_addr)] {
            if !addr.ip().is_loopback() {
                anyhow::bail!(
                    "--auth-disabled needs loopback listeners, but --{what} is {addr}: anyone who can reach it would own the cluster"
                );
            }
        }
        tracing::warn!(
            "AUTH IS DISABLED (--auth-disabled): every request on {grpc_addr} and {http_addr} acts as an admin"
        );
        eprintln!("micro: WARNING: auth is disabled; every local request acts as an admin");
    }
    let node = Node::start(node_cfg.clone()).await?;
    crate::metrics::start(&node);
    let authn = crate::auth::Authenticator::new(node.clone(), cfg.auth_disabled);
    let upstreams = crate::upstream::Upstreams::new(node.clone());
    let mut cli_addr = grpc_addr;
    if cli_addr.ip().is_unspecified() {
        cli_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    tokio::spawn(crate::auth::bootstrap::run(
        node.clone(),
        crate::auth::bootstrap::Local {
            config_dir: cfg.config_dir.clone(),
            server: cli_addr.to_string(),
        },
    ));

    let (runtime_stop, runtime_stopping) = tokio::sync::watch::channel(false);
    let runtime_grace = cfg.runtime.stop_grace;
    let (runtime, runtime_done) = crate::runtime::Runtime::start(
        node.clone(),
        cfg.runtime.clone(),
        cli_addr.to_string(),
        runtime_stopping,
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let grpc = {
        // The builder's tcp_nodelay does not apply to an incoming stream we hand it: set it on
        // the accepted sockets, or Nagle + delayed ACKs add ~40 ms to small responses.
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let svc_store = StoreService::server(node.clone());
        let svc_cluster = ClusterService::server(node.clone());
        let svc_broker = crate::grpc::broker::BrokerService::server(node.clone());
        let (svc_stream, svc_events_store) =
            crate::grpc::events::EventsService::servers(node.clone());
        let svc_lease = crate::grpc::lease::LeaseService::server(node.clone());
        let svc_registry = crate::grpc::registry::RegistryService::server(node.clone());
        let svc_config = crate::grpc::config::ConfigService::server(node.clone());
        let svc_sync = crate::grpc::sync::SyncService::server(node.clone());
        let svc_runtime = crate::grpc::runtime::RuntimeService::server(&runtime);
        let (svc_auth, svc_accounts, svc_rules) =
            crate::grpc::auth::AuthService::servers(node.clone(), authn.clone());
        let (reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(crate::health::report(node.clone(), reporter));
        let svc_health = crate::health::HealthRoute {
            own: health,
            proxy: crate::upstream::Proxy(upstreams.clone()),
        };
        let front_errors = crate::grpc::front_errors::FrontErrors::new();
        let auth_layer = crate::auth::AuthLayer::new(authn.clone());
        let routes = tonic::service::Routes::new(svc_store)
            .add_service(svc_cluster)
            .add_service(svc_broker)
            .add_service(svc_stream)
            .add_service(svc_events_store)
            .add_service(svc_lease)
            .add_service(svc_registry)
            .add_service(svc_config)
            .add_service(svc_sync)
            .add_service(svc_runtime)
            .add_service(svc_auth)
            .add_service(svc_accounts)
            .add_service(svc_rules)
            .add_service(svc_health);
        // Calls for services this node does not host go to their registered nodes.
        let routes = tonic::service::Routes::from(
            routes
                .into_axum_router()
                .fallback_service(crate::upstream::Proxy(upstreams.clone())),
        );
        let stop = wait(stop_rx.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .layer(crate::observe::GrpcObserve)
                .layer(front_errors)
                .layer(auth_layer)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, stop)
                .await
                .map_err(anyhow::Error::from)
        })
    };
    let http = {
        let router = Gateway::new(grpc_addr, authn.clone(), upstreams.clone())?
            .router()
            .merge(crate::health::routes(node.clone()))
            .merge(crate::dashboard::routes())
            .layer(axum::middleware::from_fn(crate::observe::http));
        let stop = wait(stop_rx.clone());
        tokio::spawn(async move {
            use axum::serve::ListenerExt;
            let listener = http_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
                .map_err(anyhow::Error::from)
        })
    };

    eprintln!(
        "micro node {} is up: grpc {grpc_addr}, http {http_addr}, peer {}, data {}",
        node_cfg.node_id,
        node_cfg.peer_addr,
        node_cfg.data_dir.display()
    );
    shutdown.await;
    eprintln!("micro node {}: shutting down", node_cfg.node_id);
    // Instances stop first, while this node still serves them: they deregister through it.
    let _ = runtime_stop.send(true);
    let _ = tokio::time::timeout(runtime_grace + Duration::from_secs(2), runtime_done).await;
    let _ = stop_tx.send(true);
    node.shutdown().await;
    // Clients holding connections open would keep a graceful shutdown waiting: give them a
    // moment to finish in-flight calls, then close.
    for (name, mut task) in [("grpc", grpc), ("http", http)] {
        match tokio::time::timeout(std::time::Duration::from_secs(2), &mut task).await {
            Ok(Ok(Err(e))) => tracing::warn!("{name} server: {e}"),
            Ok(_) => {}
            Err(_) => task.abort(),
        }
    }
    Ok(())
}
