//! `deckhand ctl`: talks to any node's admin API.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Status;

use super::auth::AUTHORIZATION;
use super::view;
use crate::proto::admin::admin_client::AdminClient;
use crate::proto::admin::{
    AddNodeRequest, DrainRequest, MembersRequest, MembershipResponse, RebalanceRequest,
    RemoveNodeRequest, ShardsRequest, StatusRequest, TaskRequest, TasksRequest,
    TransferLeaderRequest,
};

/// Default admin address when neither `--addr` nor `DECKHAND_ADDR` is given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7201";

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{addr:?} is not a valid admin address (expected host:port): {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("cannot reach the deckhand admin API at {addr}: {reason} (is the node running?)")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} answered {code}: {message}")]
    Rpc {
        addr: String,
        code: tonic::Code,
        message: String,
    },
    #[error("cannot encode output: {0}")]
    Output(#[from] serde_json::Error),
    #[error("the admin token must be printable ASCII without line breaks")]
    BadToken,
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// How `ctl` connects: TLS and the admin token, both optional.
#[derive(Clone, Default)]
pub struct CtlOptions {
    /// Sent as `authorization: Bearer <token>` with every request.
    pub token: Option<String>,
    /// TLS (with a client certificate, for clusters running mTLS).
    pub tls: Option<ClientTlsConfig>,
    /// Per-request deadline; membership changes wait for a learner to catch up.
    pub timeout: Option<Duration>,
}

/// Adds the admin token to every request.
#[derive(Clone)]
pub struct TokenInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, h.clone());
        }
        Ok(request)
    }
}

type Client = AdminClient<InterceptedService<Channel, TokenInterceptor>>;

/// A connected admin client.
pub struct Ctl {
    addr: String,
    client: Client,
}

impl Ctl {
    pub async fn connect(addr: &str) -> Result<Self, CtlError> {
        Self::connect_with(addr, CtlOptions::default()).await
    }

    pub async fn connect_with(addr: &str, options: CtlOptions) -> Result<Self, CtlError> {
        let bad = |reason: String| CtlError::BadAddress {
            addr: addr.to_string(),
            reason,
        };
        let header = match &options.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| CtlError::BadToken)?,
            ),
            None => None,
        };
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(options.timeout.unwrap_or(Duration::from_secs(10)));
        if let Some(tls) = options.tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(root_cause(&e)))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CtlError::Unreachable {
                addr: addr.to_string(),
                reason: root_cause(&e),
            })?;
        Ok(Self {
            addr: addr.to_string(),
            client: AdminClient::with_interceptor(channel, TokenInterceptor { header }),
        })
    }

    fn rpc_error(&self, status: tonic::Status) -> CtlError {
        if status.code() == tonic::Code::Unavailable {
            return CtlError::Unreachable {
                addr: self.addr.clone(),
                reason: status.message().to_string(),
            };
        }
        CtlError::Rpc {
            addr: self.addr.clone(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    pub async fn status(&mut self, json: bool) -> Result<String, CtlError> {
        let resp = self
            .client
            .status(StatusRequest {})
            .await
            .map_err(|s| self.rpc_error(s))?
            .into_inner();
        Ok(if json {
            serde_json::to_string_pretty(&view::StatusView::from(&resp))?
        } else {
            view::status_text(&resp)
        })
    }

    pub async fn members(&mut self, json: bool) -> Result<String, CtlError> {
        let resp = self
            .client
            .members(MembersRequest {})
            .await
            .map_err(|s| self.rpc_error(s))?
            .into_inner();
        Ok(if json {
            serde_json::to_string_pretty(&view::members_json(&resp))?
        } else {
            view::members_text(&resp)
        })
    }
}

/// The innermost error message: tonic's outer "transport error" says little.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl Ctl {
    pub async fn shards(&mut self, json: bool) -> Result<String, CtlError> {
        let resp = self
            .client
            .shards(ShardsRequest {})
            .await
            .map_err(|s| self.rpc_error(s))?
            .into_inner();
        Ok(if json {
            serde_json::to_string_pretty(&view::shards_json(&resp))?
        } else {
            view::shards_text(&resp)
        })
    }

    /// Drains (or undrains) `node`.
    pub async fn drain(
        &mut self,
        node: u64,
        drained: bool,
        json: bool,
    ) -> Result<String, CtlError> {
        let request = DrainRequest { node_id: node };
        let resp = if drained {
            self.client.drain(request).await
        } else {
            self.client.undrain(request).await
        }
        .map_err(|s| self.rpc_error(s))?
        .into_inner();
        let verb = if drained { "drained" } else { "undrained" };
        Ok(if json {
            serde_json::json!({ "node": node, "drained": drained, "shards_owned": resp.shards_owned }).to_string()
        } else if drained {
            format!(
                "node {node} {verb}; its {} shard(s) are moving to other nodes",
                resp.shards_owned
            )
        } else {
            format!("node {node} {verb}; it will receive shards at the next rebalance")
        })
    }

    pub async fn rebalance(&mut self, json: bool) -> Result<String, CtlError> {
        let resp = self
            .client
            .rebalance(RebalanceRequest {})
            .await
            .map_err(|s| self.rpc_error(s))?
            .into_inner();
        Ok(if json {
            serde_json::json!({ "moves": resp.moves }).to_string()
        } else {
            format!("{} shard move(s) committed", resp.moves)
        })
    }
}

/// What `ctl` can do to a task.
#[derive(Debug, Clone, Copy)]
pub enum TaskAction {
    Pause,
    Resume,
    Trigger,
}

impl Ctl {
    pub async fn tasks(&mut self, json: bool) -> Result<String, CtlError> {
        let resp = self
            .client
            .tasks(TasksRequest {})
            .await
            .map_err(|s| self.rpc_error(s))?
            .into_inner();
        Ok(if json {
            serde_json::to_string_pretty(&view::tasks_json(&resp))?
        } else {
            view::tasks_text(&resp)
        })
    }

    pub async fn task(
        &mut self,
        action: TaskAction,
        task: &str,
        json: bool,
    ) -> Result<String, CtlError> {
        let request = TaskRequest {
            task: task.to_string(),
        };
        let resp = match action {
            TaskAction::Pause => self.client.pause_task(request).await,
            TaskAction::Resume => self.client.resume_task(request).await,
            TaskAction::Trigger => self.client.trigger_task(request).await,
        }
        .map_err(|s| self.rpc_error(s))?
        .into_inner();
        let verb = match action {
            TaskAction::Pause => "paused",
            TaskAction::Resume => "resumed",
            TaskAction::Trigger => "triggered",
        };
        Ok(if json {
            serde_json::json!({ "task": resp.task, "enabled": resp.enabled, "action": verb })
                .to_string()
        } else {
            format!(
                "{} {verb} ({})",
                resp.task,
                if resp.enabled { "enabled" } else { "paused" }
            )
        })
    }
}

impl Ctl {
    /// Adds a node (learner, catch-up, voter); prints the new membership.
    pub async fn add_node(
        &mut self,
        node: u64,
        raft_addr: &str,
        admin_addr: &str,
        json: bool,
    ) -> Result<String, CtlError> {
        let resp = self
            .client
            .add_node(AddNodeRequest {
                node_id: node,
                raft_addr: raft_addr.to_string(),
                admin_addr: admin_addr.to_string(),
            })
            .await
            .map_err(|s| self.rpc_error(s))?
            .into_inner();
        membership_output(&format!("node {node} added as a voter"), resp, json)
    }

    /// Removes a node; prints the new membership.
    pub async fn remove_node(
        &mut self,
        node: u64,
        force: bool,
        json: bool,
    ) -> Result<String, CtlError> {
        let resp = self
            .client
            .remove_node(RemoveNodeRequest {
                node_id: node,
                force,
            })
            .await
            .map_err(|s| self.rpc_error(s))?
            .into_inner();
        membership_output(
            &format!("node {node} removed; its id can never rejoin"),
            resp,
            json,
        )
    }

    pub async fn transfer_leader(&mut self, node: u64, json: bool) -> Result<String, CtlError> {
        let resp = self
            .client
            .transfer_leader(TransferLeaderRequest { node_id: node })
            .await
            .map_err(|s| self.rpc_error(s))?
            .into_inner();
        Ok(if json {
            serde_json::json!({ "leader_id": resp.leader_id }).to_string()
        } else {
            format!("node {} leads", resp.leader_id)
        })
    }
}

fn membership_output(
    headline: &str,
    resp: MembershipResponse,
    json: bool,
) -> Result<String, CtlError> {
    let members = crate::proto::admin::MembersResponse {
        members: resp.members,
        leader_id: None,
    };
    Ok(if json {
        serde_json::to_string_pretty(&view::members_json(&members))?
    } else {
        format!("{headline}\n{}", view::members_text(&members))
    })
}
