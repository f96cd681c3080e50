//! Step 5 of a node's start: its three servers (Raft and worker RPCs on
//! `raft_addr`, the admin API with health and reflection on `admin_addr`,
//! `/metrics` on `metrics_addr`), each stopped by the node's shutdown
//! signal. The admin server reports not-serving to health checkers first.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use super::metrics_http::{serve_metrics, MetricsSource};
use super::{Listeners, NodeError, Parts, Security, Tasks};
use crate::admin::service::AdminService;
use crate::config::NodeConfig;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::raft::service::RaftRpc;
use crate::shutdown::{Shutdown, ShutdownListener};
use crate::worker::service::WorkerRpc;

/// How often a server pings a connection that has been quiet.
const SERVER_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is closed.
const SERVER_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Step 5: the Raft and worker gRPC server, the admin server and the
/// metrics endpoint, each stopped by `shutdown`.
pub(super) async fn serve(
    config: &NodeConfig,
    parts: &Parts,
    security: Security,
    listeners: Listeners,
    shutdown: &Shutdown,
    raft_thread: &tokio::runtime::Handle,
) -> Result<Tasks, NodeError> {
    let raft_server = server_builder(security.tls.as_ref(), "raft_addr")?;
    let admin_server = server_builder(security.tls.as_ref(), "admin_addr")?;
    let raft_task = spawn_raft_server(
        raft_server,
        config,
        parts,
        security.senders,
        listeners.raft,
        shutdown.listener(),
        raft_thread,
    )?;
    let admin_service = AdminService::new(
        parts.raft.clone(),
        parts.state_machine.view(),
        config.cluster.name.clone(),
        parts.worker.clone(),
        parts.coordinator.clone(),
        parts.channels.clone(),
    )
    .with_auth(crate::admin::auth::Auth::new(security.admin_token));
    let admin_task = spawn_admin_server(
        admin_server,
        admin_service,
        listeners.admin,
        shutdown.listener(),
    )
    .await;
    let metrics_task = tokio::spawn(serve_metrics(
        listeners.metrics,
        MetricsSource {
            raft: parts.raft.clone(),
            state_machine: parts.state_machine.view(),
            worker: parts.worker.clone(),
            coordinator: parts.coordinator.clone(),
        },
        shutdown.listener(),
    ));
    Ok(vec![
        ("raft server", raft_task),
        ("admin server", admin_task),
        ("metrics server", metrics_task),
    ])
}

/// The internal server: Raft RPCs and the workers' heartbeats, both
/// checking that a sender is who its certificate says. It runs on the Raft
/// thread (`raft_thread`), with its listener moved there.
fn spawn_raft_server(
    server: Server,
    config: &NodeConfig,
    parts: &Parts,
    senders: crate::tls::SenderCheck,
    listener: TcpListener,
    mut stop: ShutdownListener,
    raft_thread: &tokio::runtime::Handle,
) -> Result<JoinHandle<()>, NodeError> {
    // A tokio listener belongs to the runtime it was registered with; it is
    // registered again with the Raft thread's.
    let addr = listener
        .local_addr()
        .map_or_else(|_| config.raft_addr.clone(), |a| a.to_string());
    let bind_error = |source| NodeError::Bind {
        key: "raft_addr",
        addr: addr.clone(),
        source,
    };
    let listener = listener.into_std().map_err(bind_error)?;
    let listener = {
        let _raft_thread = raft_thread.enter();
        TcpListener::from_std(listener).map_err(bind_error)?
    };
    let raft_service = RaftRpc::new(
        parts.raft.clone(),
        config.node_id,
        config.cluster.name.clone(),
        parts.state_machine.view(),
        senders.clone(),
        stop.clone(),
    )
    .into_server();
    let worker_service = WorkerRpc::new(
        parts.coordinator.clone(),
        senders,
        tokio::runtime::Handle::current(),
    )
    .into_server();
    let incoming = TcpListenerStream::new(listener);
    Ok(raft_thread.spawn(async move {
        let result = server
            .layer(crate::admin::grpc_errors::DecodeErrorLayer)
            .add_service(raft_service)
            .add_service(worker_service)
            .serve_with_incoming_shutdown(incoming, async move { stop.recv().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "raft server failed");
        }
    }))
}

/// A server builder, with mutual TLS when the node has certificates.
fn server_builder(tls: Option<&crate::tls::Tls>, key: &'static str) -> Result<Server, NodeError> {
    // Pings find a peer that vanished without closing its connection (a
    // powered-off host, a dropped route), so that its long-lived streams
    // (`raft::append_stream`) and their tasks end.
    let builder = Server::builder()
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT));
    match tls {
        Some(tls) => builder
            .tls_config(tls.server.clone())
            .map_err(|e| NodeError::Tls {
                key,
                message: format!("TLS setup failed: {e}"),
            }),
        None => Ok(builder),
    }
}
async fn spawn_admin_server(
    server: Server,
    admin: AdminService,
    listener: TcpListener,
    mut stop: ShutdownListener,
) -> JoinHandle<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<crate::proto::admin::admin_server::AdminServer<AdminService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1();
    let reflection_v1alpha = reflection().build_v1alpha();
    let incoming = TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let (reflection_v1, reflection_v1alpha) = match (reflection_v1, reflection_v1alpha) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot build reflection service");
                return;
            }
        };
        let result = server
            .layer(crate::admin::grpc_errors::DecodeErrorLayer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(admin.into_server())
            .serve_with_incoming_shutdown(incoming, async move {
                stop.recv().await;
                // Tell health checkers first, so load balancers stop sending.
                health_reporter
                    .set_not_serving::<crate::proto::admin::admin_server::AdminServer<AdminService>>()
                    .await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin server failed");
        }
    })
}
