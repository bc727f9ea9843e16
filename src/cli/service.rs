//! `goat service ...`: run (apply a file), status, scale, rollback,
//! promote, rm, endpoints.

use std::path::Path;

use serde_json::{json, Value};

use super::args::{ServiceAction, ServiceArgs};
use super::commands::{client, print_json};
use super::error::CliError;
use super::table::render;

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

fn summary_row(s: &Value) -> Vec<String> {
    let current = s["current"].as_u64().unwrap_or(0);
    let versions = s["versions"].as_array().cloned().unwrap_or_default();
    let cur = versions.iter().find(|v| v["version"].as_u64() == Some(current)).cloned().unwrap_or(json!({}));
    let deployment = match s["deployment"].as_object() {
        Some(d) => format!(
            "v{}→v{} {}",
            d.get("from").and_then(Value::as_u64).unwrap_or(0),
            d.get("to").and_then(Value::as_u64).unwrap_or(0),
            d.get("state").and_then(Value::as_str).unwrap_or("")
        ),
        None => "-".into(),
    };
    vec![
        s["name"].as_str().unwrap_or("").to_string(),
        format!("v{current}"),
        format!("{}/{}", cur["healthy"].as_u64().unwrap_or(0), s["replicas"].as_u64().unwrap_or(0)),
        deployment,
        s["reason"].as_str().unwrap_or("").to_string(),
    ]
}

fn show(s: &Value) -> String {
    let mut out = render(&["SERVICE", "VERSION", "HEALTHY", "DEPLOYMENT", "REASON"], &[summary_row(s)]);
    let rows: Vec<Vec<String>> = s["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["live"].as_u64().unwrap_or(0) > 0 || v["desired"].as_u64().unwrap_or(0) > 0)
        .map(|v| {
            ["version", "desired", "live", "placed", "running", "healthy"]
                .iter()
                .map(|k| v[*k].as_u64().unwrap_or(0).to_string())
                .collect()
        })
        .collect();
    out.push('\n');
    out.push_str(&render(&["VERSION", "DESIRED", "LIVE", "PLACED", "RUNNING", "HEALTHY"], &rows));
    if let Some(reason) = s["deployment"]["reason"].as_str() {
        out.push_str(&format!("\ndeployment: {reason}"));
    }
    out
}

pub async fn run(args: ServiceArgs) -> Result<(), CliError> {
    let c = client(&args.client)?;
    let json_out = args.client.json;
    let answer = match args.action {
        ServiceAction::Run { file } => {
            let spec = read_spec(&file)?;
            c.post("/v1/services").json(&spec).json_answer::<Value>().await?
        }
        ServiceAction::Status { name: None, .. } => {
            let list: Value = c.get("/v1/services").json_answer().await?;
            if json_out {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list.as_array().into_iter().flatten().map(summary_row).collect();
            println!("{}", render(&["SERVICE", "VERSION", "HEALTHY", "DEPLOYMENT", "REASON"], &rows));
            return Ok(());
        }
        ServiceAction::Status { name: Some(name), watch } => {
            loop {
                let s: Value = c.get(format!("/v1/services/{name}")).json_answer().await?;
                if json_out {
                    return print_json(&s);
                }
                if watch {
                    // Clear the terminal and redraw.
                    print!("\x1b[2J\x1b[H");
                }
                println!("{}", show(&s));
                let active = s["deployment"]["state"].as_str().is_some_and(|st| st == "running" || st == "reverting");
                if !watch || !active {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        ServiceAction::Scale { name, replicas } => {
            c.post(format!("/v1/services/{name}/scale"))
                .json(&json!({ "replicas": replicas }))
                .json_answer::<Value>()
                .await?
        }
        ServiceAction::Rollback { name } => c
            .post(format!("/v1/services/{name}/rollback"))
            .send()
            .await?
            .json_or_empty::<Value>()?
            .unwrap_or(Value::Null),
        ServiceAction::Promote { name } => c
            .post(format!("/v1/services/{name}/promote"))
            .send()
            .await?
            .json_or_empty::<Value>()?
            .unwrap_or(Value::Null),
        ServiceAction::Rm { name } => {
            let gone =
                c.delete(format!("/v1/services/{name}")).send().await?.json_or_empty::<Value>()?.unwrap_or(Value::Null);
            if json_out {
                return print_json(&gone);
            }
            println!("removed service {name}; its copies are stopping");
            return Ok(());
        }
        ServiceAction::Endpoints { name } => {
            let e: Value = c.get(format!("/v1/services/{name}/endpoints")).json_answer().await?;
            if json_out {
                return print_json(&e);
            }
            let rows: Vec<Vec<String>> = e["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    vec![
                        e["task"].as_str().unwrap_or("").chars().take(8).collect(),
                        e["node"].as_str().unwrap_or("").to_string(),
                        format!("{}:{}", e["address"].as_str().unwrap_or(""), e["port"].as_u64().unwrap_or(0)),
                        format!("v{}", e["version"].as_u64().unwrap_or(0)),
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
