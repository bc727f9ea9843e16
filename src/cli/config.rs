//! `--config FILE` for `goat manager` and `goat worker`: every flag can also
//! come from a TOML file, with the precedence flag > `GOAT_*` environment
//! variable > file > default.
//!
//! It works on the command line before clap parses it: each key of the file
//! names a flag (`data-dir` or `data_dir` for `--data-dir`), and becomes
//! `--data-dir=VALUE` unless that flag is on the command line or its
//! environment variable is set. Arrays become comma-separated lists. A key
//! that names no flag of the subcommand is an error naming it.

use std::ffi::OsString;
use std::path::Path;

/// The subcommands a config file applies to.
const CONFIGURABLE: [&str; 2] = ["manager", "worker"];
/// Options of `goat` itself that take a value (before the subcommand).
const GLOBAL_WITH_VALUE: [&str; 2] = ["--log-format", "--config"];

/// Returns `argv` with the config file's settings added as flags; unchanged
/// if the subcommand is not configurable or no config file is given.
pub fn apply(argv: Vec<OsString>, cli: &clap::Command) -> Result<Vec<OsString>, String> {
    let args: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut i = 1;
    while i < args.len() && args[i].starts_with('-') {
        i += if GLOBAL_WITH_VALUE.contains(&args[i].as_str()) { 2 } else { 1 };
    }
    let Some(sub) = args.get(i).filter(|s| CONFIGURABLE.contains(&s.as_str())) else {
        return Ok(argv);
    };
    let from_flag = args.iter().enumerate().find_map(|(k, a)| {
        if a == "--config" {
            args.get(k + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_string)
        }
    });
    let Some(path) = from_flag.or_else(|| std::env::var("GOAT_CONFIG").ok().filter(|p| !p.is_empty())) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading the config file {path}: {e}"))?;
    let command = cli.find_subcommand(sub).ok_or_else(|| format!("no subcommand {sub}"))?;
    let flags = flags_from(Path::new(&path), &text, command, &args[i + 1..])?;
    let mut out = argv;
    for (k, flag) in flags.into_iter().enumerate() {
        out.insert(i + 1 + k, flag.into());
    }
    Ok(out)
}

/// The flags a config file adds for `command`, given the flags already on
/// the command line (`given`) and the environment.
fn flags_from(path: &Path, text: &str, command: &clap::Command, given: &[String]) -> Result<Vec<String>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && !["help", "version", "config"].contains(&long.as_str()))
            .ok_or_else(|| {
                format!(
                    "config file {}: unknown key `{key}` (goat {} has no --{long})",
                    path.display(),
                    command.get_name()
                )
            })?;
        let on_command_line = given.iter().any(|a| a == &format!("--{long}") || a.starts_with(&format!("--{long}=")));
        let in_env = arg.get_env().is_some_and(|var| std::env::var_os(var).is_some());
        if on_command_line || in_env {
            continue;
        }
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => {
                Err(format!("config file {}: key `{key}`: expected a string, number, boolean or array", path.display()))
            }
        };
        match value {
            toml::Value::Boolean(b) if !arg.get_action().takes_values() => {
                if *b {
                    flags.push(format!("--{long}"));
                }
            }
            toml::Value::Array(items) => {
                let items: Vec<String> = items.iter().map(scalar).collect::<Result<_, _>>()?;
                flags.push(format!("--{long}={}", items.join(",")));
            }
            other => flags.push(format!("--{long}={}", scalar(other)?)),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn command() -> clap::Command {
        clap::Command::new("manager")
            .arg(Arg::new("id").long("id"))
            .arg(Arg::new("data_dir").long("data-dir"))
            .arg(Arg::new("peers").long("peers").value_delimiter(','))
            .arg(Arg::new("listen").long("listen").env("GOAT_TEST_CONFIG_LISTEN"))
            .arg(Arg::new("verbose").long("verbose").action(ArgAction::SetTrue))
    }

    fn flags(text: &str, given: &[&str]) -> Result<Vec<String>, String> {
        let given: Vec<String> = given.iter().map(|s| s.to_string()).collect();
        flags_from(Path::new("goat.toml"), text, &command(), &given)
    }

    #[test]
    fn keys_become_flags_unless_given_on_the_command_line() {
        let text = "id = 2\ndata_dir = \"/var/lib/goat\"\npeers = [\"1=a:1\", \"2=b:2\"]\nverbose = true\n";
        let mut got = flags(text, &[]).unwrap();
        got.sort();
        assert_eq!(got, ["--data-dir=/var/lib/goat", "--id=2", "--peers=1=a:1,2=b:2", "--verbose"]);
        let got = flags(text, &["--id", "3", "--data-dir=/x"]).unwrap();
        assert!(!got.iter().any(|f| f.starts_with("--id") || f.starts_with("--data-dir")), "{got:?}");
        assert!(flags("verbose = false", &[]).unwrap().is_empty());
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        std::env::set_var("GOAT_TEST_CONFIG_LISTEN", "127.0.0.1:1");
        assert!(flags("listen = \"127.0.0.1:2\"", &[]).unwrap().is_empty());
        std::env::remove_var("GOAT_TEST_CONFIG_LISTEN");
        assert_eq!(flags("listen = \"127.0.0.1:2\"", &[]).unwrap(), ["--listen=127.0.0.1:2"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_the_key() {
        let e = flags("id = 1\ndata_dri = \"/x\"", &[]).unwrap_err();
        assert!(e.contains("`data_dri`"), "{e}");
        let e = flags("[id]\nx = 1", &[]).unwrap_err();
        assert!(e.contains("`id`"), "{e}");
        assert!(flags("id = ", &[]).is_err());
    }

    #[test]
    fn only_manager_and_worker_are_configured() {
        let cli = clap::Command::new("goat").subcommand(command()).subcommand(clap::Command::new("status"));
        let argv: Vec<OsString> = ["goat", "status", "--config", "/nonexistent"].iter().map(Into::into).collect();
        assert_eq!(apply(argv.clone(), &cli).unwrap(), argv);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "id = 7\n").unwrap();
        let argv: Vec<OsString> =
            vec!["goat".into(), "--config".into(), file.clone().into(), "manager".into(), "--listen=x".into()];
        let out = apply(argv, &cli).unwrap();
        assert_eq!(out[3], "manager");
        assert_eq!(out[4], "--id=7");
    }
}
