//! A compose deployment owned by one test (deploy/up.sh: three managers
//! and two workers in containers on a private network, TLS between them),
//! on free host ports under a project name unique to the run, removed
//! (containers, task containers, networks, volumes, its image tag) when it
//! is dropped, even on failure. Used by tests/failover.rs; `goat drill
//! --driver compose` drives the same deployments from outside
//! ([`Deployment::drill`]).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use goat_storage::model::Task;

use super::cluster::{free_port, goat_bin};
use super::worker::ensure_images;
use crate::client::{Client, HealthView};
use crate::history::{self, Call, Recorder};
use crate::manager::verify::Verdict;

pub fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

/// A compose deployment owned by one test.
pub struct Deployment {
    pub project: String,
    pub ports: [u16; 3],
    pub token: String,
    /// Sends the token, over TLS with the deployment's client certificate
    /// (for the load's own requests and the echo app's port).
    pub http: reqwest::Client,
    /// The typed client of managers 1..=3 (index `id - 1`), same token and
    /// certificate.
    pub api: Client,
    /// `--node-down-after` of its managers.
    node_down_after: &'static str,
    /// Where deploy/up.sh writes this deployment's certificates.
    tls: tempfile::TempDir,
}

impl Deployment {
    pub fn certs(&self) -> std::path::PathBuf {
        self.tls.path().join("certs")
    }

    pub fn env(&self, command: &mut Command) {
        let certs = self.certs();
        command
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("GOAT_TOKEN", &self.token)
            .env("GOAT_TLS_HOME", self.tls.path())
            .env("GOAT_TLS_DIR", &certs)
            .env("GOAT_TLS_CA", certs.join("ca.crt"))
            .env("GOAT_TLS_CERT", certs.join("client.crt"))
            .env("GOAT_TLS_KEY", certs.join("client.key"))
            .env("GOAT_API_PORT1", self.ports[0].to_string())
            .env("GOAT_API_PORT2", self.ports[1].to_string())
            .env("GOAT_API_PORT3", self.ports[2].to_string())
            .env("GOAT_RESTART", "no")
            .env("GOAT_NODE_DOWN_AFTER", self.node_down_after)
            .env("GOAT_SKIP_BUILD", "1")
            .env("GOAT_IMAGE", self.image());
    }

    /// This deployment's own tag of the image under test: `goat:latest` is
    /// tagged once the suite has built it, so a rebuild of `goat:latest`
    /// meanwhile (another worktree's tests) cannot change what runs here.
    pub fn image(&self) -> String {
        format!("goat-failover:{}", self.project)
    }

    pub fn start(case: &str) -> Deployment {
        Deployment::start_with(case, "3s")
    }

    pub fn start_with(case: &str, node_down_after: &'static str) -> Deployment {
        ensure_images();
        let suffix: u32 = rand::random();
        let mut deployment = Deployment {
            project: format!("goatft{}{case}{:06x}", std::process::id() % 1000, suffix & 0xffffff),
            ports: [free_port(), free_port(), free_port()],
            token: format!("failover-{suffix:x}"),
            http: reqwest::Client::new(),
            api: Client::builder(&["127.0.0.1:1"]).build().expect("a placeholder client"),
            tls: tempfile::tempdir().expect("a directory for the certificates"),
            node_down_after,
        };
        let built = std::env::var("GOAT_IMAGE").unwrap_or_else(|_| "goat:latest".into());
        docker(&["tag", &built, &deployment.image()]);
        let mut up = Command::new("bash");
        up.arg(format!("{}/deploy/up.sh", root()));
        deployment.env(&mut up);
        let status = up.stdout(Stdio::null()).status().expect("run deploy/up.sh");
        assert!(status.success(), "deploy/up.sh failed for project {}", deployment.project);
        // up.sh made the certificates: talk TLS with the client's.
        let read = |name: &str| std::fs::read(deployment.certs().join(name)).expect("a TLS file from up.sh");
        let ca = reqwest::Certificate::from_pem(&read("ca.crt")).expect("CA");
        let identity =
            reqwest::Identity::from_pem(&[read("client.crt"), read("client.key")].concat()).expect("identity");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", deployment.token).parse().expect("header"));
        deployment.http = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .default_headers(headers)
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        let tls = goat_raft::tls::TlsArgs {
            tls_cert: Some(deployment.certs().join("client.crt")),
            tls_key: Some(deployment.certs().join("client.key")),
            tls_ca: Some(deployment.certs().join("ca.crt")),
        }
        .load()
        .expect("the deployment's client certificate");
        let addrs: Vec<String> = (1..=3).map(|id| deployment.addr(id)).collect();
        deployment.api = Client::builder(&addrs)
            .token(Some(deployment.token.clone()))
            .tls(tls.as_ref())
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        deployment
    }

    /// Manager `id`'s index in [`Deployment::api`] (for `.on(index)`).
    pub fn index(&self, id: u64) -> usize {
        id as usize - 1
    }

    pub fn compose(&self, args: &[&str]) {
        let mut command = Command::new("docker-compose");
        if Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success()) {
            command = Command::new("docker");
            command.arg("compose");
        }
        command.args(["--file", &format!("{}/deploy/compose/docker-compose.yml", root()), "--project-name"]);
        command.arg(&self.project).args(args);
        self.env(&mut command);
        let status = command.stdout(Stdio::null()).stderr(Stdio::null()).status().expect("compose");
        assert!(status.success(), "compose {args:?} failed");
    }

    /// The container of compose service `service` (`manager1`, `worker2`).
    pub async fn container(&self, service: &str) -> String {
        crate::drill::compose_container(&self.project, service).await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub fn addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[id as usize - 1])
    }

    pub fn url(&self, id: u64) -> String {
        format!("https://{}", self.addr(id))
    }

    /// Every task as manager `id` holds it.
    pub async fn tasks(&self, id: u64) -> Vec<Task> {
        self.api.get("/v1/tasks").on(self.index(id)).json_answer().await.expect("GET tasks")
    }

    pub fn managers_flag(&self) -> String {
        (1..=3).map(|id| self.addr(id)).collect::<Vec<_>>().join(",")
    }

    /// `goat drill ... --json` against this deployment; its history (kept
    /// with `--history`) is checked again here and must be linearizable.
    /// The report stays JSON: it is the drill's output format for other
    /// programs (`drill::Report` is written, never read, by Goat), and the
    /// tests check its keys as such a program would.
    pub fn drill(&self, scenario: &str, extra: &[&str]) -> crate::drill::Report {
        let file = tempfile::NamedTempFile::new().expect("history file");
        let mut drill = Command::new(goat_bin());
        self.env(&mut drill);
        let out = drill
            .args(["drill", scenario, "--json", "--project", &self.project, "--managers", &self.managers_flag()])
            .arg("--history")
            .arg(file.path())
            .args(extra)
            .env("GOAT_TOKEN", &self.token)
            .stderr(Stdio::inherit())
            .output()
            .expect("run goat drill");
        let report: crate::drill::Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("drill {scenario}: no JSON report ({e}): {}", String::from_utf8_lossy(&out.stdout))
        });
        let mut brief = report.clone();
        if let Some(history) = brief.history.as_mut() {
            history.violation = None;
        }
        println!("drill {scenario}: {}", serde_json::to_string(&brief).unwrap_or_default());
        let text = std::fs::read_to_string(file.path()).expect("the drill wrote its history");
        let ops = history::from_json_lines(&text).expect("the history parses");
        let verdict = history::check(&ops);
        println!("drill {scenario}: {}", verdict.summary());
        assert!(verdict.operations > 0, "the drill recorded nothing");
        assert!(verdict.linearizable, "drill {scenario}: {}", verdict.summary());
        assert_eq!(
            report.history.as_ref().map(|h| h.operations),
            Some(verdict.operations),
            "the drill checked the same history"
        );
        report
    }

    /// A linearizable list of every task through each manager of `on`,
    /// recorded; then the whole history is checked and must be
    /// linearizable.
    pub async fn check_history(&self, recorder: &Recorder, on: &[u64]) {
        for id in on {
            let pending = recorder.begin(&format!("final@manager{id}"), Call::List);
            let answer = self.api.get("/v1/tasks").on(self.index(*id)).timeout(Duration::from_secs(60)).send().await;
            match answer {
                Ok(r) if r.status == 200 => {
                    let tasks: Vec<Task> = r.json().expect("tasks");
                    pending.listed(tasks.iter().map(|t| (t.id.to_string(), history::seen_of(t))).collect());
                }
                _ => pending.unknown(),
            }
        }
        let verdict = history::check(&recorder.operations());
        println!("{}", verdict.summary());
        assert!(verdict.operations > 0, "nothing recorded");
        assert!(verdict.linearizable, "{}", verdict.summary());
    }

    pub async fn health(&self, id: u64) -> Option<HealthView> {
        self.api.health_of(self.index(id), Duration::from_secs(1)).await.ok()
    }

    /// Waits until the managers `among` agree on a leader among them
    /// ([`Client::wait_leader`]).
    pub async fn leader(&self, among: &[u64], timeout: Duration) -> u64 {
        let indices: Vec<usize> = among.iter().map(|id| self.index(*id)).collect();
        self.api.wait_leader(&indices, Duration::from_secs(1), timeout).await.expect("an agreed leader")
    }

    pub async fn task_ids(&self, id: u64) -> BTreeSet<String> {
        let request = self.api.get("/v1/tasks?stale=true").on(self.index(id));
        let tasks: Vec<Task> = request.json_answer().await.expect("GET tasks");
        tasks.iter().map(|t| t.id.to_string()).collect()
    }

    /// Waits until every manager holds the same state.
    pub async fn verify(&self, via: u64) -> Verdict {
        let request = self.api.get("/v1/cluster/verify?wait=60s").on(self.index(via));
        let verdict: Verdict = request.timeout(Duration::from_secs(70)).json_answer().await.expect("verify");
        assert!(verdict.consistent, "managers disagree: {verdict:?}");
        assert!(verdict.converged, "managers did not converge: {verdict:?}");
        verdict
    }

    /// Every acknowledged task is held by every manager in `on`.
    pub async fn assert_all_present(&self, acked: &[String], on: &[u64]) {
        for id in on {
            let held = self.task_ids(*id).await;
            let missing: Vec<&String> = acked.iter().filter(|t| !held.contains(*t)).collect();
            assert!(missing.is_empty(), "manager {id} lacks {} acknowledged tasks: {missing:?}", missing.len());
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let mut down = Command::new("bash");
        down.args([&format!("{}/deploy/down.sh", root()), "--volumes"]);
        self.env(&mut down);
        let _ = down.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ =
            Command::new("docker").args(["rmi", &self.image()]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
