//! A manager's settings: `goat manager`'s command line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use goat_raft::NodeId;
use goat_storage::model::Strategy;
use goat_storage::Millis;
use openraft::BasicNode;

/// `goat manager`: run one manager.
#[derive(Debug, Clone, clap::Args)]
pub struct ManagerArgs {
    /// This manager's id in the Raft group (a positive integer).
    #[arg(long, env = "GOAT_ID")]
    pub id: NodeId,
    /// Address to listen on for the API and Raft.
    #[arg(long, env = "GOAT_LISTEN", default_value = "127.0.0.1:7101")]
    pub listen: SocketAddr,
    /// Address other managers and workers use to reach this one (default:
    /// --listen).
    #[arg(long, env = "GOAT_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where the manager keeps its data.
    #[arg(long, env = "GOAT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The initial members: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT` (a
    /// single-manager cluster lists only itself). The lowest id bootstraps a
    /// new cluster; others wait to be contacted. Omit it to start a manager
    /// that will be added with `POST /v1/cluster/members`.
    #[arg(long, env = "GOAT_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// The cluster token: the bootstrap secret, with every right. Members
    /// and workers send it on every internal request.
    #[arg(long, env = "GOAT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// A previous cluster token, still accepted (never sent) while the
    /// cluster's processes are restarted one by one with a new --token.
    #[arg(long, env = "GOAT_PREVIOUS_TOKEN", hide_env_values = true)]
    pub previous_token: Option<String>,
    #[command(flatten)]
    pub tls: goat_raft::tls::TlsArgs,
    /// Take a snapshot (and purge the log behind it) every this many entries.
    #[arg(long, env = "GOAT_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// How long a forwarded write or a read waits for a leader before 503.
    #[arg(long, env = "GOAT_LEADER_WAIT", default_value = "5s", value_parser = Millis::parse)]
    pub leader_wait: Millis,
    /// How to rank nodes for tasks that do not choose: bin-pack, spread or epvm.
    #[arg(long, env = "GOAT_SCHEDULER", default_value = "bin-pack", value_parser = parse_strategy)]
    pub scheduler: Strategy,
    /// A node that has not sent a heartbeat for this long is marked down.
    #[arg(long, env = "GOAT_NODE_DOWN_AFTER", default_value = "10s", value_parser = Millis::parse)]
    pub node_down_after: Millis,
    /// How often the leader sends heartbeats. At most half of
    /// --election-timeout; each costs one small request per follower.
    #[arg(long, env = "GOAT_RAFT_HEARTBEAT", default_value_t = Millis(goat_raft::timing::DEFAULT_HEARTBEAT_MS), value_parser = Millis::parse)]
    pub raft_heartbeat: Millis,
    /// How long a follower hears no leader before it asks for a pre-vote and
    /// stands (randomized up to 1.5 times it): the failover's main cost.
    #[arg(long, env = "GOAT_ELECTION_TIMEOUT", default_value_t = Millis(goat_raft::timing::DEFAULT_ELECTION_TIMEOUT_MS), value_parser = Millis::parse)]
    pub election_timeout: Millis,
    /// The time limit of one log replication round trip (the follower's
    /// fsync included): an append slower than this is retried.
    #[arg(long, env = "GOAT_RAFT_RPC_TIMEOUT", default_value_t = Millis(goat_raft::timing::DEFAULT_RPC_TIMEOUT_MS), value_parser = Millis::parse)]
    pub raft_rpc_timeout: Millis,
    /// Event streams (`GET /v1/events`) this manager serves at once, at
    /// most; past that, 503 with Retry-After.
    #[arg(long, env = "GOAT_MAX_STREAMS", default_value_t = 256)]
    pub max_streams: usize,
    /// Assignment long polls this manager holds open at once, at most
    /// (one per worker; relayed ones count); past that, 503 with
    /// Retry-After.
    #[arg(long, env = "GOAT_MAX_POLLS", default_value_t = 4096)]
    pub max_polls: usize,
    /// A completed or failed task (one that will not be rescheduled) is
    /// removed this long after it finished.
    #[arg(long, env = "GOAT_TASK_RETENTION", default_value = "24h", value_parser = Millis::parse)]
    pub task_retention: Millis,
}

/// A manager's settings, as [`run`](super::run) takes them (tests and
/// `goat dev` build one directly; the command line builds [`ManagerArgs`]).
/// The listening socket is not here: `run` takes a bound listener.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub id: NodeId,
    /// The address others reach this manager at (default: the listener's).
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    /// `ID=HOST:PORT` entries, as `--peers`.
    pub peers: Vec<String>,
    pub token: String,
    /// Also accepted as the cluster token (`--previous-token`).
    pub previous_token: Option<String>,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`.
    pub tls: goat_raft::tls::TlsArgs,
    pub snapshot_every: u64,
    pub leader_wait: Millis,
    pub scheduler: Strategy,
    pub node_down_after: Millis,
    pub raft_heartbeat: Millis,
    pub election_timeout: Millis,
    pub raft_rpc_timeout: Millis,
    pub max_streams: usize,
    pub max_polls: usize,
    pub task_retention: Millis,
}

impl ManagerConfig {
    /// The Raft timing of `--raft-heartbeat`, `--election-timeout` and
    /// `--raft-rpc-timeout`.
    pub fn timing(&self) -> goat_raft::timing::Timing {
        goat_raft::timing::Timing {
            heartbeat: self.raft_heartbeat.as_duration(),
            election_timeout: self.election_timeout.as_duration(),
            rpc_timeout: self.raft_rpc_timeout.as_duration(),
        }
    }

    /// The defaults of `goat manager`, for manager `id` with `data_dir`.
    pub fn new(id: NodeId, data_dir: PathBuf, token: impl Into<String>) -> ManagerConfig {
        ManagerConfig {
            id,
            advertise: None,
            data_dir,
            peers: Vec::new(),
            token: token.into(),
            previous_token: None,
            tls: goat_raft::tls::TlsArgs::default(),
            snapshot_every: 10_000,
            leader_wait: Millis(5_000),
            scheduler: Strategy::BinPack,
            node_down_after: Millis(10_000),
            raft_heartbeat: Millis(goat_raft::timing::DEFAULT_HEARTBEAT_MS),
            election_timeout: Millis(goat_raft::timing::DEFAULT_ELECTION_TIMEOUT_MS),
            raft_rpc_timeout: Millis(goat_raft::timing::DEFAULT_RPC_TIMEOUT_MS),
            max_streams: 256,
            max_polls: 4096,
            task_retention: Millis(24 * 3_600_000),
        }
    }
}

impl From<ManagerArgs> for ManagerConfig {
    fn from(a: ManagerArgs) -> ManagerConfig {
        ManagerConfig {
            id: a.id,
            advertise: a.advertise,
            data_dir: a.data_dir,
            peers: a.peers,
            token: a.token,
            previous_token: a.previous_token,
            tls: a.tls,
            snapshot_every: a.snapshot_every,
            leader_wait: a.leader_wait,
            scheduler: a.scheduler,
            node_down_after: a.node_down_after,
            raft_heartbeat: a.raft_heartbeat,
            election_timeout: a.election_timeout,
            raft_rpc_timeout: a.raft_rpc_timeout,
            max_streams: a.max_streams,
            max_polls: a.max_polls,
            task_retention: a.task_retention,
        }
    }
}

/// Parses `--scheduler` with the same names as a task's `strategy`.
fn parse_strategy(name: &str) -> Result<Strategy, String> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| format!("unknown strategy {name:?}: use bin-pack, spread or epvm"))
}

/// Parses `--peers` entries `ID=HOST:PORT`.
pub fn parse_peers(peers: &[String]) -> anyhow::Result<BTreeMap<NodeId, BasicNode>> {
    let mut members = BTreeMap::new();
    for peer in peers.iter().filter(|p| !p.trim().is_empty()) {
        let (id, addr) = peer.split_once('=').with_context(|| format!("--peers entry {peer:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id.trim().parse().with_context(|| format!("--peers entry {peer:?}: id is not a number"))?;
        if id == 0 {
            bail!("--peers entry {peer:?}: ids start at 1");
        }
        if members.insert(id, BasicNode { addr: addr.trim().to_string() }).is_some() {
            bail!("--peers lists id {id} twice");
        }
    }
    Ok(members)
}
