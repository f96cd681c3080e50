//! `deckhand ctl`: talks to any node's admin API.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::view;
use crate::proto::admin::admin_client::AdminClient;
use crate::proto::admin::{
    DrainRequest, MembersRequest, RebalanceRequest, ShardsRequest, StatusRequest, TaskRequest,
    TasksRequest,
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
}

/// A connected admin client.
pub struct Ctl {
    addr: String,
    client: AdminClient<Channel>,
}

impl Ctl {
    pub async fn connect(addr: &str) -> Result<Self, CtlError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| CtlError::BadAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CtlError::Unreachable {
                addr: addr.to_string(),
                reason: root_cause(&e),
            })?;
        Ok(Self {
            addr: addr.to_string(),
            client: AdminClient::new(channel),
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
