//! The sending side of Raft RPCs: `POST http://<peer>/raft/{vote,append,snapshot}`
//! (`https` with TLS) with bincode bodies and the cluster token, over one
//! pooled HTTP client that never goes through a proxy.
//!
//! The answer body is the bincode of the peer's `Result<Response, RaftError>`,
//! so a peer's Raft-level refusal reaches openraft as a `RemoteError`, while
//! a peer that cannot be reached is reported `Unreachable` (openraft backs
//! off before trying it again).

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode};
use crate::tls::{client_builder, scheme, Tls};
use crate::{bearer, NodeId, TypeConfig, TOKEN_HEADER};

/// Creates one [`PeerClient`] per peer; all share the connection pool.
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    token: String,
    scheme: &'static str,
}

impl Network {
    /// With `tls`, every RPC goes over HTTPS to a peer whose certificate the
    /// cluster's CA signed; the token is sent only after that handshake.
    pub fn new(token: &str, tls: Option<&Tls>) -> anyhow::Result<Network> {
        let http = client_builder(tls)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Network { http, token: bearer(token), scheme: scheme(tls) })
    }

    /// Asks the manager at `addr` for a pre-vote (`/raft/prevote`, see
    /// [`crate::timing`]), within `limit`.
    pub async fn prevote(
        &self,
        addr: &str,
        request: &crate::timing::PreVoteRequest,
        limit: Duration,
    ) -> anyhow::Result<crate::timing::PreVoteResponse> {
        let response = self
            .http
            .post(format!("{}://{addr}/raft/prevote", self.scheme))
            .header(TOKEN_HEADER, &self.token)
            .header("content-type", "application/octet-stream")
            .timeout(limit)
            .body(encode(request))
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            anyhow::bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(decode(&body)?)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            http: self.http.clone(),
            token: self.token.clone(),
            scheme: self.scheme,
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    http: reqwest::Client,
    token: String,
    scheme: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        route: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}://{}/raft/{route}", self.scheme, self.addr);
        let response = self
            .http
            .post(url)
            .header(TOKEN_HEADER, &self.token)
            .header("content-type", "application/octet-stream")
            .timeout(option.hard_ttl())
            .body(encode(request))
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let failure = Failure(format!("peer {} answered {status}: {text}", self.target));
            return Err(RPCError::Network(NetworkError::new(&failure)));
        }
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A dead peer is retried every 200 ms, so a restarted manager is
        // caught up soon after it comes back.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
