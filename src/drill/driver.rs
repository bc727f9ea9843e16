//! How a drill causes failures: one driver per kind of deployment.
//!
//! - `compose`: the containers of a compose project (deploy/up.sh), through
//!   the `docker` CLI: `kill`, `start`, `pause`/`unpause`, `network
//!   disconnect`/`connect`, and for one-way cuts `iptables` in the
//!   container's network namespace (`nsenter -t PID -n`, root on the host).
//! - `procs`: processes on this machine, as `goat dev` starts them (it
//!   writes `deployment.json` in its data directory: pids, command lines,
//!   logs): signals (`SIGKILL`, `SIGSTOP`/`SIGCONT`, `SIGTERM`), the same
//!   command line to start one again, and `iptables` on the loopback
//!   interface for one-way cuts (root).
//! - `ssh`: machines running the systemd units of deploy/systemd, through
//!   `ssh HOST sudo ...`: `systemctl kill --signal=...`, `systemctl
//!   start`/`stop`, and `iptables` rules (tagged with a comment) for
//!   partitions, removed afterwards.
//!
//! Every rule or pause a driver makes is remembered and undone by
//! [`Driver::cleanup`], also when a round fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A member of the deployment a failure hits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Member {
    Manager(u64),
    /// A worker by its node name.
    Worker(String),
}

/// The comment on every iptables rule a drill adds.
pub const RULE_TAG: &str = "goat-drill";

/// The managers' API (and Raft) port inside a compose deployment.
const COMPOSE_PORT: u16 = 7101;

/// `--driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    Compose,
    Procs,
    Ssh,
}

/// What `goat dev` writes to `DATA_DIR/deployment.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcsFile {
    /// The goat binary the processes run.
    pub exe: PathBuf,
    pub token: String,
    pub managers: Vec<Proc>,
    pub workers: Vec<Proc>,
}

/// One process of a `goat dev` deployment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Proc {
    /// `manager1`, `worker`.
    pub name: String,
    /// Manager id (0 for a worker).
    #[serde(default)]
    pub id: u64,
    /// A manager's API address; a worker's node name.
    pub addr: String,
    pub pid: u32,
    /// Arguments after the binary.
    pub argv: Vec<String>,
    pub log: PathBuf,
}

impl ProcsFile {
    pub const NAME: &'static str = "deployment.json";

    pub fn read(dir: &Path) -> anyhow::Result<ProcsFile> {
        let path = dir.join(Self::NAME);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (written by `goat dev --data-dir DIR`)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(Self::NAME);
        let tmp = dir.join(format!("{}.tmp", Self::NAME));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    fn find_mut(&mut self, member: &Member) -> Option<&mut Proc> {
        match member {
            Member::Manager(id) => self.managers.iter_mut().find(|p| p.id == *id),
            Member::Worker(name) => self.workers.iter_mut().find(|p| p.addr == *name),
        }
    }
}

/// An undo action, remembered until done.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    /// A command to run (argv) to remove a rule.
    Command(Vec<String>),
    /// A member to resume (SIGCONT / unpause).
    Resume(Member),
}

pub struct Driver {
    pub kind: DriverKind,
    inner: Inner,
    undo: Mutex<Vec<Undo>>,
}

enum Inner {
    Compose { project: String },
    Procs { dir: PathBuf, file: Mutex<ProcsFile>, spawned: Mutex<Vec<tokio::process::Child>> },
    Ssh(SshHosts),
}

/// `--ssh-host ID=[USER@]HOST` for managers, `--ssh-worker NODE=[USER@]HOST`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SshHosts {
    pub managers: BTreeMap<u64, String>,
    pub workers: BTreeMap<String, String>,
    /// The managers' Raft/API port on their machines.
    pub port: u16,
    /// Extra `ssh` options (`-i KEY`, `-p PORT`...), split on spaces.
    pub options: Vec<String>,
}

/// Parses `1=admin@10.0.0.1` (or `goat-worker1=10.0.0.4`).
pub fn parse_host_pair(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("{text:?}: expected NAME=[USER@]HOST"))?;
    if k.is_empty() || v.is_empty() || v.contains(char::is_whitespace) {
        return Err(format!("{text:?}: expected NAME=[USER@]HOST"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The host part of `[USER@]HOST[:PORT]`.
fn host_of(target: &str) -> &str {
    let host = target.rsplit('@').next().unwrap_or(target);
    host.split(':').next().unwrap_or(host)
}

impl SshHosts {
    fn target(&self, member: &Member) -> anyhow::Result<&str> {
        match member {
            Member::Manager(id) => self.managers.get(id).map(String::as_str),
            Member::Worker(name) => self.workers.get(name).map(String::as_str),
        }
        .with_context(|| format!("no --ssh-host/--ssh-worker for {}", member_name(member)))
    }

    fn unit(member: &Member) -> &'static str {
        match member {
            Member::Manager(_) => "goat-manager.service",
            Member::Worker(_) => "goat-worker.service",
        }
    }

    /// `ssh [OPTIONS] -o BatchMode=yes TARGET sudo ARGS...`.
    pub fn ssh(&self, target: &str, remote: &[&str]) -> Vec<String> {
        let mut argv = vec!["ssh".to_string(), "-o".into(), "BatchMode=yes".into()];
        argv.extend(self.options.iter().cloned());
        argv.push(target.to_string());
        argv.push("sudo".into());
        argv.extend(remote.iter().map(|s| s.to_string()));
        argv
    }

    /// `systemctl kill --signal=SIG UNIT` on the member's machine.
    pub fn signal(&self, member: &Member, signal: &str) -> anyhow::Result<Vec<String>> {
        let unit = Self::unit(member);
        Ok(self.ssh(self.target(member)?, &["systemctl", "kill", &format!("--signal={signal}"), unit]))
    }

    /// `systemctl ACTION UNIT` (start, stop, restart).
    pub fn systemctl(&self, member: &Member, action: &str) -> anyhow::Result<Vec<String>> {
        Ok(self.ssh(self.target(member)?, &["systemctl", action, Self::unit(member)]))
    }

    /// The hosts of every other member (the victim's peers).
    fn peers(&self, member: &Member) -> Vec<String> {
        let mut peers: Vec<String> = self
            .managers
            .iter()
            .filter(|(id, _)| Member::Manager(**id) != *member)
            .map(|(_, t)| host_of(t).to_string())
            .chain(
                self.workers
                    .iter()
                    .filter(|(n, _)| Member::Worker(n.to_string()) != *member)
                    .map(|(_, t)| host_of(t).to_string()),
            )
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// The iptables commands (add, remove) that cut `member` off its peers:
    /// both ways (`one_way`: false), or only the peers' new connections to
    /// it (`one_way`: true: it still reaches them). Clients on other
    /// machines (this one) still reach it, as with compose's API network.
    pub fn cut(&self, member: &Member, one_way: bool) -> anyhow::Result<Vec<(Vec<String>, Vec<String>)>> {
        let target = self.target(member)?;
        let port = self.port.to_string();
        let mut out = Vec::new();
        for peer in self.peers(member) {
            let mut rules: Vec<Vec<&str>> = Vec::new();
            // Peers cannot open connections to it (nor answer on those).
            rules.push(vec!["INPUT", "-p", "tcp", "-s", &peer, "--dport", &port]);
            if !one_way {
                // Nor can it reach them, nor answer their connections.
                rules.push(vec!["OUTPUT", "-p", "tcp", "-d", &peer, "--dport", &port]);
                rules.push(vec!["OUTPUT", "-p", "tcp", "-d", &peer, "--sport", &port]);
                rules.push(vec!["INPUT", "-p", "tcp", "-s", &peer, "--sport", &port]);
            }
            for rule in rules {
                let mut add = vec!["iptables", "-I"];
                add.extend(&rule);
                add.extend(["-m", "comment", "--comment", RULE_TAG, "-j", "DROP"]);
                let mut del = vec!["iptables", "-D"];
                del.extend(&rule);
                del.extend(["-m", "comment", "--comment", RULE_TAG, "-j", "DROP"]);
                out.push((self.ssh(target, &add), self.ssh(target, &del)));
            }
        }
        Ok(out)
    }
}

pub fn member_name(member: &Member) -> String {
    match member {
        Member::Manager(id) => format!("manager{id}"),
        Member::Worker(name) => name.clone(),
    }
}

/// Runs a command; its stdout, or an error with its stderr.
pub async fn run(argv: &[String]) -> anyhow::Result<String> {
    let (program, args) = argv.split_first().context("an empty command")?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !output.status.success() {
        bail!("{}: {}", argv.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

pub async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec!["docker".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    run(&argv).await
}

/// The container of service `service` (`manager1`, `worker2`) in compose
/// project `project`, by compose's labels: the one lookup of the drill's
/// compose driver and of the test harness's compose deployments
/// (`goat::testing::compose`).
pub async fn compose_container(project: &str, service: &str) -> anyhow::Result<String> {
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ])
    .await?;
    ids.lines()
        .next()
        .map(str::to_string)
        .with_context(|| format!("no container for service {service} in compose project {project}"))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The loopback iptables rule (without -I/-D) that drops new connections
/// to a local port: a one-way cut of a process on this machine.
pub fn loopback_rule(port: u16) -> Vec<String> {
    strings(&[
        "INPUT",
        "-i",
        "lo",
        "-p",
        "tcp",
        "--dport",
        &port.to_string(),
        "-m",
        "comment",
        "--comment",
        RULE_TAG,
        "-j",
        "DROP",
    ])
}

fn with_op(op: &str, rule: &[String], prefix: &[String]) -> Vec<String> {
    let mut argv = prefix.to_vec();
    argv.push("iptables".into());
    argv.push(op.into());
    argv.extend(rule.iter().cloned());
    argv
}

fn signal_pid(pid: u32, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: sends a signal; no memory is shared.
    if unsafe { libc::kill(pid, signal) } != 0 {
        bail!("signalling pid {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Driver {
    pub fn compose(project: &str) -> Driver {
        Driver::new(DriverKind::Compose, Inner::Compose { project: project.to_string() })
    }

    pub fn procs(dir: &Path) -> anyhow::Result<Driver> {
        let file = ProcsFile::read(dir)?;
        Ok(Driver::new(
            DriverKind::Procs,
            Inner::Procs { dir: dir.to_path_buf(), file: Mutex::new(file), spawned: Mutex::new(Vec::new()) },
        ))
    }

    pub fn ssh(hosts: SshHosts) -> Driver {
        Driver::new(DriverKind::Ssh, Inner::Ssh(hosts))
    }

    fn new(kind: DriverKind, inner: Inner) -> Driver {
        Driver { kind, inner, undo: Mutex::new(Vec::new()) }
    }

    /// `goat dev`'s token, for the procs driver.
    pub fn token(&self) -> Option<String> {
        match &self.inner {
            Inner::Procs { file, .. } => Some(file.lock().token.clone()).filter(|t| !t.is_empty()),
            _ => None,
        }
    }

    /// The managers' API addresses the driver knows (procs).
    pub fn manager_addrs(&self) -> Option<Vec<String>> {
        match &self.inner {
            Inner::Procs { file, .. } => Some(file.lock().managers.iter().map(|p| p.addr.clone()).collect()),
            _ => None,
        }
    }

    fn remember(&self, undo: Undo) {
        self.undo.lock().push(undo);
    }

    fn forget(&self, undo: &Undo) {
        self.undo.lock().retain(|u| u != undo);
    }

    /// The worker member of a node name (compose: `PROJECT-SERVICE`).
    pub fn worker(&self, node: &str) -> anyhow::Result<Member> {
        if let Inner::Compose { project } = &self.inner {
            node.strip_prefix(&format!("{project}-"))
                .with_context(|| format!("node {node} is not a worker of compose project {project}"))?;
        }
        Ok(Member::Worker(node.to_string()))
    }

    /// How the report names a member (`manager2`, `worker1`).
    pub fn label(&self, member: &Member) -> String {
        match (&self.inner, member) {
            (Inner::Compose { project }, Member::Worker(node)) => {
                node.strip_prefix(&format!("{project}-")).unwrap_or(node).to_string()
            }
            _ => member_name(member),
        }
    }

    async fn container(&self, member: &Member) -> anyhow::Result<String> {
        let Inner::Compose { project } = &self.inner else { bail!("not a compose deployment") };
        compose_container(project, &self.label(member)).await
    }

    /// Checks the driver can reach every member named.
    pub async fn check(&self, managers: &[u64]) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Compose { .. } => {
                for id in managers {
                    self.container(&Member::Manager(*id)).await?;
                }
            }
            Inner::Procs { file, .. } => {
                let file = file.lock().clone();
                for id in managers {
                    if !file.managers.iter().any(|p| p.id == *id) {
                        bail!("manager {id} is not in the deployment file");
                    }
                }
            }
            Inner::Ssh(hosts) => {
                for id in managers {
                    hosts.target(&Member::Manager(*id))?;
                }
            }
        }
        Ok(())
    }

    fn proc_of(&self, member: &Member) -> anyhow::Result<Proc> {
        let Inner::Procs { file, .. } = &self.inner else { bail!("not a procs deployment") };
        let mut file = file.lock();
        file.find_mut(member).cloned().with_context(|| format!("{} is not in the deployment file", member_name(member)))
    }

    /// SIGKILL.
    pub async fn kill(&self, member: &Member) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Compose { .. } => docker(&["kill", &self.container(member).await?]).await.map(|_| ()),
            Inner::Procs { .. } => signal_pid(self.proc_of(member)?.pid, libc::SIGKILL),
            Inner::Ssh(hosts) => {
                run(&hosts.signal(member, "SIGKILL")?).await?;
                // The unit restarts on failure: hold it down until `start`.
                run(&hosts.systemctl(member, "stop")?).await.map(|_| ())
            }
        }
    }

    /// A clean stop (SIGTERM, waiting for the exit).
    pub async fn stop(&self, member: &Member) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Compose { .. } => docker(&["stop", "-t", "10", &self.container(member).await?]).await.map(|_| ()),
            Inner::Procs { .. } => {
                let pid = self.proc_of(member)?.pid;
                signal_pid(pid, libc::SIGTERM)?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && alive(pid) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if alive(pid) {
                    signal_pid(pid, libc::SIGKILL)?;
                }
                Ok(())
            }
            Inner::Ssh(hosts) => run(&hosts.systemctl(member, "stop")?).await.map(|_| ()),
        }
    }

    /// Starts a killed or stopped member again.
    pub async fn start(&self, member: &Member) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Compose { .. } => docker(&["start", &self.container(member).await?]).await.map(|_| ()),
            Inner::Procs { dir, file, spawned } => {
                let proc = self.proc_of(member)?;
                let exe = file.lock().exe.clone();
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&proc.log)
                    .with_context(|| format!("opening {}", proc.log.display()))?;
                let child = tokio::process::Command::new(&exe)
                    .args(&proc.argv)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .with_context(|| format!("starting {} again", proc.name))?;
                let pid = child.id().context("the new process has no pid")?;
                spawned.lock().push(child);
                let mut file = file.lock();
                if let Some(p) = file.find_mut(member) {
                    p.pid = pid;
                }
                // `goat dev` stops what the file names when it exits.
                file.write(dir)
            }
            Inner::Ssh(hosts) => run(&hosts.systemctl(member, "start")?).await.map(|_| ()),
        }
    }

    /// SIGSTOP (`docker pause`: the cgroup freezer).
    pub async fn pause(&self, member: &Member) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Compose { .. } => docker(&["pause", &self.container(member).await?]).await?,
            Inner::Procs { .. } => {
                signal_pid(self.proc_of(member)?.pid, libc::SIGSTOP)?;
                String::new()
            }
            Inner::Ssh(hosts) => run(&hosts.signal(member, "SIGSTOP")?).await?,
        };
        self.remember(Undo::Resume(member.clone()));
        Ok(())
    }

    pub async fn resume(&self, member: &Member) -> anyhow::Result<()> {
        match &self.inner {
            Inner::Compose { .. } => docker(&["unpause", &self.container(member).await?]).await?,
            Inner::Procs { .. } => {
                signal_pid(self.proc_of(member)?.pid, libc::SIGCONT)?;
                String::new()
            }
            Inner::Ssh(hosts) => run(&hosts.signal(member, "SIGCONT")?).await?,
        };
        self.forget(&Undo::Resume(member.clone()));
        Ok(())
    }

    /// Cuts a member off its peers: both ways, or (`one_way`) only their
    /// connections to it. Returns what undoes it ([`Driver::heal`]).
    pub async fn cut(&self, member: &Member, one_way: bool) -> anyhow::Result<Cut> {
        match &self.inner {
            Inner::Compose { project } => {
                let container = self.container(member).await?;
                let network = format!("{project}-net");
                if !one_way {
                    let aliases = disconnect(&network, &container).await?;
                    return Ok(Cut::Network { network, container, aliases });
                }
                // In the container's network namespace: the cluster
                // network's peers cannot open connections to its port.
                let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &container]).await?;
                let subnet =
                    docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", &network])
                        .await?;
                let subnet = subnet.split_whitespace().next().context("the cluster network has no subnet")?.to_string();
                let prefix = strings(&["nsenter", "-t", &pid, "-n"]);
                let rule = strings(&[
                    "INPUT",
                    "-s",
                    &subnet,
                    "-p",
                    "tcp",
                    "--dport",
                    &COMPOSE_PORT.to_string(),
                    "-m",
                    "comment",
                    "--comment",
                    RULE_TAG,
                    "-j",
                    "DROP",
                ]);
                self.rules(vec![(with_op("-I", &rule, &prefix), with_op("-D", &rule, &prefix))]).await
            }
            Inner::Procs { .. } => {
                if !one_way {
                    bail!(
                        "the procs driver cannot cut one process's loopback traffic both ways (its peers are on \
                         127.0.0.1 too): use asymmetric-partition, or the compose or ssh driver"
                    );
                }
                let proc = self.proc_of(member)?;
                let port: u16 = proc
                    .addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .with_context(|| format!("{}: no port in {}", proc.name, proc.addr))?;
                let rule = loopback_rule(port);
                self.rules(vec![(with_op("-I", &rule, &[]), with_op("-D", &rule, &[]))]).await
            }
            Inner::Ssh(hosts) => self.rules(hosts.cut(member, one_way)?).await,
        }
    }

    async fn rules(&self, pairs: Vec<(Vec<String>, Vec<String>)>) -> anyhow::Result<Cut> {
        let mut undo: Vec<Vec<String>> = Vec::new();
        for (add, del) in pairs {
            if let Err(e) = run(&add).await {
                for d in undo.iter().rev() {
                    let _ = run(d.as_slice()).await;
                    self.forget(&Undo::Command(d.clone()));
                }
                return Err(e);
            }
            self.remember(Undo::Command(del.clone()));
            undo.push(del);
        }
        Ok(Cut::Rules(undo))
    }

    pub async fn heal(&self, cut: Cut) -> anyhow::Result<()> {
        match cut {
            Cut::Network { network, container, aliases } => reconnect(&network, &container, &aliases).await,
            Cut::Rules(rules) => {
                let mut first_error = None;
                for del in rules.iter().rev() {
                    if let Err(e) = run(del).await {
                        first_error.get_or_insert(e);
                    }
                    self.forget(&Undo::Command(del.clone()));
                }
                first_error.map_or(Ok(()), Err)
            }
        }
    }

    /// Undoes every rule and pause still in place (after a failed round).
    pub async fn cleanup(&self) {
        let pending: Vec<Undo> = std::mem::take(&mut *self.undo.lock());
        for undo in pending.into_iter().rev() {
            let done = match &undo {
                Undo::Command(argv) => run(argv).await.map(|_| ()),
                Undo::Resume(member) => self.resume(member).await,
            };
            if let Err(e) = done {
                eprintln!("goat drill: cleaning up: {e:#}");
            }
        }
    }

    /// When the member's last death was recorded (compose: the engine's
    /// `State.FinishedAt`).
    pub async fn died_at(&self, member: &Member) -> Option<Instant> {
        let container = self.container(member).await.ok()?;
        let text = docker(&["inspect", "-f", "{{.State.FinishedAt}}", &container]).await.ok()?;
        goat_storage::duration::parse_rfc3339(&text).map(instant_of)
    }

    /// Removes every container worker `node` started (`docker rm -f` of
    /// the containers labelled `goat.node=NODE`): with a killed agent, what
    /// the loss of its machine does to the application. Returns how many.
    pub async fn remove_task_containers(&self, node: &str) -> anyhow::Result<usize> {
        let filter = format!("label=goat.node={node}");
        let listed = match &self.inner {
            Inner::Ssh(hosts) => {
                let target = hosts.target(&Member::Worker(node.to_string()))?;
                run(&hosts.ssh(target, &["sudo", "docker", "ps", "-aq", "--filter", &filter])).await?
            }
            _ => docker(&["ps", "-aq", "--filter", &filter]).await?,
        };
        let ids: Vec<&str> = listed.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let mut argv = vec!["rm", "-f"];
        argv.extend(ids.iter().copied());
        match &self.inner {
            Inner::Ssh(hosts) => {
                let target = hosts.target(&Member::Worker(node.to_string()))?;
                let mut remote = vec!["sudo", "docker"];
                remote.extend(argv.iter().copied());
                run(&hosts.ssh(target, &remote)).await?;
            }
            _ => {
                docker(&argv).await?;
            }
        }
        Ok(ids.len())
    }

    /// Running containers of each task (compose, procs: this machine's
    /// engine; ssh: each worker machine's). `None`: not countable.
    pub async fn copies(&self, ids: &[String]) -> anyhow::Result<BTreeMap<String, usize>> {
        let mut out = BTreeMap::new();
        for id in ids {
            let filter = format!("label=goat.task={id}");
            let count = match &self.inner {
                Inner::Ssh(hosts) => {
                    let mut n = 0;
                    for target in hosts.workers.values() {
                        let argv = hosts.ssh(target, &["docker", "ps", "-q", "--filter", &filter]);
                        n += run(&argv).await?.lines().filter(|l| !l.is_empty()).count();
                    }
                    n
                }
                _ => docker(&["ps", "-q", "--filter", &filter]).await?.lines().filter(|l| !l.is_empty()).count(),
            };
            out.insert(id.clone(), count);
        }
        Ok(out)
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (killed, not yet reaped by its parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// How to undo a cut.
pub enum Cut {
    Network { network: String, container: String, aliases: Vec<String> },
    Rules(Vec<Vec<String>>),
}

/// Cuts a container off a network; returns its aliases there, to
/// reconnect it under the same names.
async fn disconnect(network: &str, container: &str) -> anyhow::Result<Vec<String>> {
    let template = format!("{{{{json (index .NetworkSettings.Networks \"{network}\").Aliases}}}}");
    let aliases: Vec<String> =
        serde_json::from_str(&docker(&["inspect", "-f", &template, container]).await?).unwrap_or_default();
    docker(&["network", "disconnect", network, container]).await?;
    // Docker adds the short container id as an alias by itself.
    Ok(aliases.into_iter().filter(|a| !container.starts_with(a.as_str())).collect())
}

async fn reconnect(network: &str, container: &str, aliases: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["network", "connect"];
    for alias in aliases {
        args.push("--alias");
        args.push(alias);
    }
    args.push(network);
    args.push(container);
    docker(&args).await.map(|_| ())
}

/// The `Instant` of a wall-clock time in the recent past.
pub(crate) fn instant_of(wall: SystemTime) -> Instant {
    let (now, now_wall) = (Instant::now(), SystemTime::now());
    let ago = now_wall.duration_since(wall).unwrap_or_default();
    now.checked_sub(ago).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> SshHosts {
        SshHosts {
            managers: [(1, "admin@10.0.0.1".to_string()), (2, "admin@10.0.0.2".into()), (3, "10.0.0.3".into())]
                .into_iter()
                .collect(),
            workers: [("node-a".to_string(), "ops@10.0.0.4".to_string())].into_iter().collect(),
            port: 7101,
            options: vec!["-i".into(), "/keys/drill".into()],
        }
    }

    #[test]
    fn ssh_commands_run_the_units_through_sudo() {
        let h = hosts();
        assert_eq!(
            h.signal(&Member::Manager(2), "SIGKILL").unwrap().join(" "),
            "ssh -o BatchMode=yes -i /keys/drill admin@10.0.0.2 sudo systemctl kill --signal=SIGKILL goat-manager.service"
        );
        assert_eq!(
            h.systemctl(&Member::Worker("node-a".into()), "start").unwrap().join(" "),
            "ssh -o BatchMode=yes -i /keys/drill ops@10.0.0.4 sudo systemctl start goat-worker.service"
        );
        assert_eq!(
            h.signal(&Member::Manager(3), "SIGSTOP").unwrap().join(" "),
            "ssh -o BatchMode=yes -i /keys/drill 10.0.0.3 sudo systemctl kill --signal=SIGSTOP goat-manager.service"
        );
        assert!(h.signal(&Member::Manager(9), "SIGKILL").is_err(), "an unknown member");
    }

    #[test]
    fn ssh_partitions_are_tagged_rules_removed_by_their_mirror() {
        let h = hosts();
        let both = h.cut(&Member::Manager(1), false).unwrap();
        // Peers: managers 2 and 3 and the worker; four rules each.
        assert_eq!(both.len(), 12);
        let (add, del) = &both[0];
        assert_eq!(
            add.join(" "),
            "ssh -o BatchMode=yes -i /keys/drill admin@10.0.0.1 sudo iptables -I INPUT -p tcp -s 10.0.0.2 --dport 7101 -m comment --comment goat-drill -j DROP"
        );
        assert_eq!(del.join(" "), add.join(" ").replace(" -I ", " -D "));
        assert!(both.iter().all(|(a, _)| a.contains(&"admin@10.0.0.1".to_string())), "rules go on the victim");
        assert!(both.iter().any(|(a, _)| a.join(" ").contains("OUTPUT -p tcp -d 10.0.0.4 --dport 7101")));
        // One way: only the peers' connections to it are dropped.
        let one = h.cut(&Member::Manager(1), true).unwrap();
        assert_eq!(one.len(), 3);
        assert!(one.iter().all(|(a, _)| a.join(" ").contains(" -I INPUT ")));
    }

    #[test]
    fn host_pairs_parse() {
        assert_eq!(parse_host_pair("1=admin@10.0.0.1"), Ok(("1".into(), "admin@10.0.0.1".into())));
        assert!(parse_host_pair("10.0.0.1").is_err());
        assert!(parse_host_pair("1=").is_err());
        assert_eq!(host_of("admin@10.0.0.1:22"), "10.0.0.1");
        assert_eq!(host_of("h"), "h");
    }

    #[test]
    fn loopback_cuts_drop_new_connections_to_one_port() {
        let rule = loopback_rule(7102);
        assert_eq!(
            with_op("-I", &rule, &[]).join(" "),
            "iptables -I INPUT -i lo -p tcp --dport 7102 -m comment --comment goat-drill -j DROP"
        );
        assert_eq!(
            with_op("-D", &rule, &strings(&["nsenter", "-t", "42", "-n"])).join(" "),
            "nsenter -t 42 -n iptables -D INPUT -i lo -p tcp --dport 7102 -m comment --comment goat-drill -j DROP"
        );
    }

    #[test]
    fn the_deployment_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let file = ProcsFile {
            exe: "/bin/goat".into(),
            token: "t".into(),
            managers: vec![Proc {
                name: "manager1".into(),
                id: 1,
                addr: "127.0.0.1:7101".into(),
                pid: 5,
                ..Proc::default()
            }],
            workers: vec![],
        };
        file.write(dir.path()).unwrap();
        assert_eq!(ProcsFile::read(dir.path()).unwrap(), file);
        assert!(ProcsFile::read(&dir.path().join("nope")).is_err());
    }
}
