//! The simulated network between managers (and to workers and the client):
//! openraft's `RaftNetworkFactory`/`RaftNetwork` over direct calls into the
//! target's `Raft`, with the fault model of [`Links`] applied to each leg
//! (request and answer separately) of every call.

use std::sync::Arc;
use std::time::Duration;

use goat_raft::{NodeId, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

use super::world::World;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SimNetError(pub String);

/// One manager's Raft transport.
pub struct SimNetwork {
    pub world: Arc<World>,
    pub from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimPeer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> SimPeer {
        SimPeer { world: self.world.clone(), from: self.from, to: target }
    }
}

pub struct SimPeer {
    world: Arc<World>,
    from: NodeId,
    to: NodeId,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl SimPeer {
    /// Sends `request` to the target's Raft with `call`, through the faults:
    /// a lost leg waits out the RPC's time limit (as a real timeout would);
    /// a duplicated request is delivered a second time later (its answer
    /// ignored).
    async fn rpc<Req, Resp, E, F, Fut>(
        &self,
        kind: &'static str,
        request: Req,
        option: &RPCOption,
        call: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(goat_raft::Raft, Req) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = Result<Resp, RaftError<NodeId, E>>> + Send + 'static,
    {
        let w = &self.world;
        let lost =
            || RPCError::Network(NetworkError::new(&SimNetError(format!("{kind} {}->{} lost", self.from, self.to))));
        if !w.leg(self.from, self.to, kind).await {
            tokio::time::sleep(option.hard_ttl()).await;
            return Err(lost());
        }
        let Some(raft) = w.raft_of(self.to) else {
            return Err(RPCError::Unreachable(Unreachable::new(&SimNetError(format!("{} is down", self.to)))));
        };
        if w.duplicate() {
            let (w2, from, to, req, call2) = (w.clone(), self.from, self.to, request.clone(), call.clone());
            tokio::spawn(async move {
                if w2.leg(from, to, "dup").await {
                    if let Some(raft) = w2.raft_of(to) {
                        w2.trace(format!("dup {kind} {from}->{to} delivered"));
                        let _ = call2(raft, req).await;
                    }
                }
            });
        }
        let answer = call(raft, request).await;
        if !w.leg(self.to, self.from, kind).await {
            tokio::time::sleep(option.hard_ttl() / 2).await;
            return Err(lost());
        }
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("append", rpc, &option, |raft, rpc| async move { raft.append_entries(rpc).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc("snapshot", rpc, &option, |raft, rpc| async move { raft.install_snapshot(rpc).await }).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc("vote", rpc, &option, |raft, rpc| async move { raft.vote(rpc).await }).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // As the production transport.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
