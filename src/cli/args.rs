//! The operator commands' arguments (clap).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use goat_storage::Millis;

/// How to reach the cluster; shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Managers to talk to, HOST:PORT[,HOST:PORT...]; when one does not
    /// answer, the next is tried.
    #[arg(long, env = "GOAT_ADDR", value_delimiter = ',', default_value = "127.0.0.1:7101", global = true)]
    pub addr: Vec<String>,
    /// Print JSON (for scripts) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Timeout of each request to a manager.
    #[arg(long, default_value = "10s", value_parser = Millis::parse, global = true)]
    pub timeout: Millis,
    /// The token sent as `Authorization: Bearer`: an API token
    /// (`goat token create`) or the cluster token.
    #[arg(long, env = "GOAT_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// With TLS: the cluster's CA certificate (PEM), to verify managers.
    #[arg(long, env = "GOAT_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// With TLS: a client certificate signed by the CA (PEM).
    #[arg(long, env = "GOAT_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// With TLS: the key of --tls-cert (PEM).
    #[arg(long, env = "GOAT_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
}

impl ClientArgs {
    /// The TLS material given, if any (all three or none).
    pub fn tls(&self) -> Result<Option<goat_raft::tls::Tls>, super::error::CliError> {
        goat_raft::tls::TlsArgs {
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
        }
        .load()
        .map_err(|e| super::error::CliError::usage(format!("{e:#}")))
    }
}

/// The operator's subcommands, flattened into `goat`'s.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Run a local cluster in the foreground: three managers, one worker and
    /// the echo task (Ctrl-C stops everything).
    Dev(DevArgs),
    /// Submit a task (from a JSON file or flags); --wait follows it.
    Run(RunArgs),
    /// List tasks, or show one task and its history.
    Status(StatusArgs),
    /// Stop a task.
    Stop(StopArgs),
    /// List the worker nodes.
    Nodes(NodesArgs),
    /// Act on one worker node.
    Node(NodeArgs),
    /// List the managers (the Raft group), or change it.
    Members(MembersArgs),
    /// Save the cluster state to a file, or restore it from one.
    Snapshot(SnapshotArgs),
    /// Create, list or revoke API tokens (needs an admin token).
    Token(TokenArgs),
    /// Write a CA and per-node certificates for a TLS deployment.
    Tls(TlsArgs),
    /// Plan for a failure before it happens.
    Plan(PlanArgs),
    /// Replicated services: run a file, status, scale, rollback, promote,
    /// rm, endpoints.
    Service(ServiceArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: PlanAction,
}

#[derive(Debug, Subcommand)]
pub enum PlanAction {
    /// Would every task of NODE (default: the busiest node) find a place if
    /// it died now? Exit 6 if one would not.
    NodeLoss {
        /// The node assumed lost.
        node: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token; its secret is printed once.
    Create {
        /// read, submit or admin.
        #[arg(long)]
        role: String,
        /// A label, e.g. who or what uses it.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List the tokens (ids, names, roles; never secrets).
    List,
    /// Revoke a token by id.
    Revoke {
        /// The token's id, as `goat token list` shows it.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct TlsArgs {
    #[command(subcommand)]
    pub action: TlsAction,
}

#[derive(Debug, Subcommand)]
pub enum TlsAction {
    /// Write DIR/ca.crt (and its key), one NAME.crt/NAME.key per manager and
    /// worker, and client.crt/client.key for operators. Each certificate
    /// names its host (a DNS name or an IP), localhost and 127.0.0.1.
    Init {
        /// Where to write the files (created if missing).
        dir: PathBuf,
        /// Manager host names or IPs, comma-separated.
        #[arg(long, value_delimiter = ',')]
        managers: Vec<String>,
        /// Worker host names or IPs, comma-separated.
        #[arg(long, value_delimiter = ',')]
        workers: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A task spec in JSON, as `POST /v1/tasks` takes it (`-` reads stdin).
    #[arg(short = 'f', long = "file", conflicts_with_all = ["name", "image", "cpu", "memory", "ports", "env", "health_path", "health_port", "cmd"])]
    pub file: Option<PathBuf>,
    /// Task name (default: the image name without its tag).
    #[arg(long)]
    pub name: Option<String>,
    /// Image, e.g. goat-echo:latest.
    #[arg(long, required_unless_present = "file")]
    pub image: Option<String>,
    /// CPU reserved, in cores.
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Memory reserved and enforced (bytes, or with a K/M/G suffix).
    #[arg(long, value_parser = goat_worker::parse_bytes)]
    pub memory: Option<u64>,
    /// Publish a port: CONTAINER[:HOST] (without HOST the node picks one). Repeatable.
    #[arg(long = "port", value_parser = parse_port)]
    pub ports: Vec<(u16, Option<u16>)>,
    /// An environment variable KEY=VALUE. Repeatable.
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// HTTP health check path (probed on --health-port, default the first --port).
    #[arg(long)]
    pub health_path: Option<String>,
    /// Container port of the health check (TCP connect without --health-path).
    #[arg(long)]
    pub health_port: Option<u16>,
    /// Command and arguments, after `--`.
    #[arg(last = true)]
    pub cmd: Vec<String>,
    /// Follow the task until it runs (and is healthy, if it has a check).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "5m", value_parser = Millis::parse)]
    pub wait_timeout: Millis,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A task id, or a unique prefix of one: show its details and history.
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A task id, or a unique prefix of one.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: NodeAction,
}

#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Take no new tasks on this node and move its tasks elsewhere.
    Drain {
        /// The node's name.
        name: String,
    },
    /// End a drain: the node takes tasks again.
    Undrain {
        /// The node's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: Option<MembersAction>,
}

#[derive(Debug, Subcommand)]
pub enum MembersAction {
    /// Add a manager (started without --peers): learner first, then voter.
    Add {
        /// Its Raft id (a positive integer, unused so far).
        id: u64,
        /// The address it listens on, HOST:PORT.
        #[arg(id = "member_addr", value_name = "ADDR")]
        addr: String,
    },
    /// Remove a manager from the group.
    Remove {
        /// Its Raft id.
        id: u64,
    },
    /// Hand leadership over on purpose (no election timeout, writes wait
    /// instead of failing): to --to, or to the most up-to-date follower.
    TransferLeader {
        /// The manager to hand over to.
        #[arg(long)]
        to: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: SnapshotAction,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Save every task and node to FILE (JSON).
    Save {
        /// Where to write the backup (`-` for stdout).
        file: PathBuf,
    },
    /// Replace the cluster's state with FILE's (needs an admin token).
    Restore {
        /// A file written by `goat snapshot save`.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Where the managers and the worker keep their data and logs (default:
    /// a new temporary directory, removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The managers listen on 127.0.0.1 ports PORT_BASE, PORT_BASE+1 and
    /// PORT_BASE+2.
    #[arg(long, default_value_t = 7101)]
    pub port_base: u16,
    /// The host port the echo task is published on.
    #[arg(long, default_value_t = 7777)]
    pub echo_port: u16,
    /// The worker's node name (default: dev-PORT_BASE).
    #[arg(long)]
    pub worker_name: Option<String>,
    /// The cluster token (default: a random one, printed).
    #[arg(long, env = "GOAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `--port CONTAINER[:HOST]`.
pub fn parse_port(text: &str) -> Result<(u16, Option<u16>), String> {
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let bad = || format!("invalid port {text:?}: expected CONTAINER[:HOST], e.g. 7777 or 7777:8080");
    match text.split_once(':') {
        None => Ok((port(text).ok_or_else(bad)?, None)),
        Some((c, h)) => Ok((port(c).ok_or_else(bad)?, Some(port(h).ok_or_else(bad)?))),
    }
}

/// `--env KEY=VALUE`.
pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid --env {text:?}: expected KEY=VALUE")),
    }
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Apply a service file (JSON, or TOML if it ends in .toml): creates
    /// the service, or makes a new version if its template changed.
    Run {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List services, or show one: versions, counts, deployment.
    Status {
        name: Option<String>,
        /// Keep showing it (every second) until the deployment ends.
        #[arg(long)]
        watch: bool,
    },
    /// Change the replica count.
    Scale { name: String, replicas: u32 },
    /// Bring the previous version back.
    Rollback { name: String },
    /// Promote a deployment paused on its canaries.
    Promote { name: String },
    /// Remove the service and stop every copy.
    Rm { name: String },
    /// List the healthy copies (task, node, address, port).
    Endpoints { name: String },
}
