//! The one way to start Goat's own processes on this machine: the command
//! line of a `goat manager` and of a `goat worker`, the `--peers` flag of a
//! cluster on loopback, a free port, and where the `goat` binary is.
//!
//! `goat dev`, the benchmarks (`goat-bench`) and the test harness
//! ([`crate::testing`]) all start their managers and workers through these
//! builders, so a flag added to `goat manager` is passed the same way
//! everywhere. Each caller still owns its child processes (a process
//! group for `goat dev`, SIGKILL-on-drop for the tests): only the command
//! line and its plumbing are shared.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A free port on loopback: bound, then released for a child to take.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `--peers` of managers `1..=addrs.len()` at `addrs`: `1=A,2=B,...`.
pub fn peers_flag<S: AsRef<str>>(addrs: &[S]) -> String {
    addrs.iter().enumerate().map(|(i, a)| format!("{}={}", i + 1, a.as_ref())).collect::<Vec<_>>().join(",")
}

/// The `goat` binary to start: `GOAT_BIN`; else the running executable if
/// it is `goat` itself (`goat dev`); else a `goat` beside it
/// (`target/release/goat-bench` → `target/release/goat`); else one in the
/// parent directory (an integration test runs from `target/debug/deps/`,
/// and cargo builds `target/debug/goat` for it).
pub fn goat_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("GOAT_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == "goat") {
        return Ok(exe);
    }
    let beside = exe.with_file_name("goat");
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(parent) = exe.parent().and_then(Path::parent).map(|d| d.join("goat")).filter(|p| p.is_file()) {
        return Ok(parent);
    }
    anyhow::bail!("no goat binary beside {} (build it, or set GOAT_BIN)", exe.display())
}

/// The command line of one `goat manager`.
#[derive(Debug, Clone)]
pub struct ManagerLaunch {
    pub id: u64,
    /// `HOST:PORT` of its API (and Raft).
    pub listen: String,
    /// `--peers`; `None` starts a manager that waits to be added.
    pub peers: Option<String>,
    pub token: String,
    pub data_dir: PathBuf,
    /// Further flags (`--node-down-after 1h`, TLS files, ...).
    pub extra: Vec<String>,
}

impl ManagerLaunch {
    /// The arguments after the binary's name.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = strings(&["manager", "--id", &self.id.to_string(), "--listen", &self.listen]);
        if let Some(peers) = &self.peers {
            argv.extend(strings(&["--peers", peers]));
        }
        argv.extend(strings(&["--token", &self.token, "--data-dir"]));
        argv.push(self.data_dir.to_string_lossy().into_owned());
        argv.extend(self.extra.iter().cloned());
        argv
    }
}

/// The command line of one `goat worker`.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    pub name: String,
    /// The managers' `HOST:PORT`s.
    pub managers: Vec<String>,
    pub token: String,
    pub data_dir: PathBuf,
    /// `--docker-socket`; `None` uses the worker's default.
    pub docker_socket: Option<String>,
    pub extra: Vec<String>,
}

impl WorkerLaunch {
    /// The arguments after the binary's name.
    pub fn argv(&self) -> Vec<String> {
        let managers = self.managers.join(",");
        let mut argv = strings(&["worker", "--name", &self.name, "--managers", &managers, "--token", &self.token]);
        if let Some(socket) = &self.docker_socket {
            argv.extend(strings(&["--docker-socket", socket]));
        }
        argv.push("--data-dir".to_string());
        argv.push(self.data_dir.to_string_lossy().into_owned());
        argv.extend(self.extra.iter().cloned());
        argv
    }
}

/// `binary ARGV...` with stdin and stdout closed, stderr appended to `log`
/// (its directory created), and `RUST_LOG` set: how every launcher runs a
/// Goat process. The caller adds what is its own (a process group, an
/// environment) and spawns it.
pub fn command(binary: &Path, argv: &[String], log: &Path, rust_log: &str) -> std::io::Result<Command> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut command = Command::new(binary);
    command.args(argv).env("RUST_LOG", rust_log).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    Ok(command)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manager_and_worker_command_lines() {
        let m = ManagerLaunch {
            id: 2,
            listen: "127.0.0.1:7102".into(),
            peers: Some(peers_flag(&["127.0.0.1:7101", "127.0.0.1:7102"])),
            token: "t".into(),
            data_dir: "/d/m2".into(),
            extra: vec!["--node-down-after".into(), "1h".into()],
        };
        assert_eq!(
            m.argv().join(" "),
            "manager --id 2 --listen 127.0.0.1:7102 --peers 1=127.0.0.1:7101,2=127.0.0.1:7102 --token t \
             --data-dir /d/m2 --node-down-after 1h"
        );
        let w = WorkerLaunch {
            name: "w1".into(),
            managers: vec!["a:1".into(), "b:2".into()],
            token: "t".into(),
            data_dir: "/d/w1".into(),
            docker_socket: Some("/s".into()),
            extra: vec![],
        };
        assert_eq!(
            w.argv().join(" "),
            "worker --name w1 --managers a:1,b:2 --token t --docker-socket /s --data-dir /d/w1"
        );
    }
}
