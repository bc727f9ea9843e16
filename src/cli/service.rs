//! `goat service ...`: run (apply a file), status, scale, rollback,
//! promote, rm, endpoints.

use std::path::Path;

use goat_storage::model::{DeploymentState, Service};
use serde_json::{json, Value};

use super::args::{ServiceAction, ServiceArgs};
use super::commands::{client, print_json};
use super::error::CliError;
use super::table::render;
use crate::manager::services::{Endpoints, ServiceView};

/// A service file as the API's JSON: `.toml` files are converted.
pub fn read_spec(path: &Path) -> Result<Value, CliError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
        let value: toml::Value =
            toml::from_str(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
        serde_json::to_value(value).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
    } else {
        serde_json::from_str(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
    }
}

fn summary_row(s: &ServiceView) -> Vec<String> {
    let healthy = s.versions.iter().find(|v| v.version == s.current).map_or(0, |v| v.healthy);
    let deployment = match &s.deployment {
        Some(d) => format!("v{}→v{} {}", d.from, d.to, d.state.as_str()),
        None => "-".into(),
    };
    vec![
        s.name.clone(),
        format!("v{}", s.current),
        format!("{healthy}/{}", s.replicas),
        deployment,
        s.reason.clone().unwrap_or_default(),
    ]
}

fn show(s: &ServiceView) -> String {
    let mut out = render(&["SERVICE", "VERSION", "HEALTHY", "DEPLOYMENT", "REASON"], &[summary_row(s)]);
    let rows: Vec<Vec<String>> = s
        .versions
        .iter()
        .filter(|v| v.live > 0 || v.desired > 0)
        .map(|v| {
            [v.version, v.desired.into(), v.live.into(), v.placed.into(), v.running.into(), v.healthy.into()]
                .iter()
                .map(u64::to_string)
                .collect()
        })
        .collect();
    out.push('\n');
    out.push_str(&render(&["VERSION", "DESIRED", "LIVE", "PLACED", "RUNNING", "HEALTHY"], &rows));
    if let Some(reason) = s.deployment.as_ref().and_then(|d| d.reason.as_deref()) {
        out.push_str(&format!("\ndeployment: {reason}"));
    }
    out
}

pub async fn run(args: ServiceArgs) -> Result<(), CliError> {
    let c = client(&args.client)?;
    let json_out = args.client.json;
    let answer: ServiceView = match args.action {
        // The file goes as it is: the API reads it and names a wrong field.
        ServiceAction::Run { file } => c.post("/v1/services").json(&read_spec(&file)?).json_answer().await?,
        ServiceAction::Status { name: None, .. } => {
            let list: Vec<ServiceView> = c.get("/v1/services").json_answer().await?;
            if json_out {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list.iter().map(summary_row).collect();
            println!("{}", render(&["SERVICE", "VERSION", "HEALTHY", "DEPLOYMENT", "REASON"], &rows));
            return Ok(());
        }
        ServiceAction::Status { name: Some(name), watch } => loop {
            let s: ServiceView = c.get(format!("/v1/services/{name}")).json_answer().await?;
            if json_out {
                return print_json(&s);
            }
            if watch {
                // Clear the terminal and redraw.
                print!("\x1b[2J\x1b[H");
            }
            println!("{}", show(&s));
            let active = s
                .deployment
                .as_ref()
                .is_some_and(|d| matches!(d.state, DeploymentState::Running | DeploymentState::Reverting));
            if !watch || !active {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        },
        ServiceAction::Scale { name, replicas } => {
            c.post(format!("/v1/services/{name}/scale")).json(&json!({ "replicas": replicas })).json_answer().await?
        }
        ServiceAction::Rollback { name } => c.post(format!("/v1/services/{name}/rollback")).json_answer().await?,
        ServiceAction::Promote { name } => c.post(format!("/v1/services/{name}/promote")).json_answer().await?,
        ServiceAction::Rm { name } => {
            let gone: Service = c.delete(format!("/v1/services/{name}")).json_answer().await?;
            if json_out {
                return print_json(&gone);
            }
            println!("removed service {name}; its copies are stopping");
            return Ok(());
        }
        ServiceAction::Endpoints { name } => {
            let e: Endpoints = c.get(format!("/v1/services/{name}/endpoints")).json_answer().await?;
            if json_out {
                return print_json(&e);
            }
            let rows: Vec<Vec<String>> = e
                .endpoints
                .iter()
                .map(|e| {
                    vec![
                        e.task.to_string().chars().take(8).collect(),
                        e.node.clone(),
                        format!("{}:{}", e.address, e.port),
                        format!("v{}", e.version),
                    ]
                })
                .collect();
            println!("{}", render(&["TASK", "NODE", "ADDRESS", "VERSION"], &rows));
            return Ok(());
        }
    };
    if json_out {
        return print_json(&answer);
    }
    println!("{}", show(&answer));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_files_give_the_same_spec() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("web.toml");
        std::fs::write(
            &toml_path,
            "name = \"web\"\nreplicas = 3\n[template]\nimage = \"goat-echo:latest\"\n[update]\nmax_parallel = 2\n",
        )
        .unwrap();
        let json_path = dir.path().join("web.json");
        std::fs::write(
            &json_path,
            r#"{"name":"web","replicas":3,"template":{"image":"goat-echo:latest"},"update":{"max_parallel":2}}"#,
        )
        .unwrap();
        assert_eq!(read_spec(&toml_path).unwrap(), read_spec(&json_path).unwrap());
        assert_eq!(read_spec(&toml_path).unwrap()["update"]["max_parallel"], 2);
    }
}
