//! `goat tls init DIR --managers m1,m2,m3 --workers w1,w2`: a private CA
//! and one certificate per process, for a TLS deployment (rcgen).
//!
//! Every certificate is signed by the CA, is good for both ends of a
//! connection (server and client authentication: a manager is a server to
//! its clients and a client of its peers), and names its host — a DNS name,
//! or an IP address given as such — plus `localhost` and `127.0.0.1`, so
//! that a process can be reached on its own machine. `client.crt` is for
//! operators (the CLI, curl): the managers ask every client for a
//! certificate signed by the CA.
//!
//! The CA's key (`ca.key`) signs certificates; keep it off the cluster's
//! machines once the certificates are made. Keys are written mode 0600.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

use super::args::{TlsAction, TlsArgs};
use super::error::CliError;

/// Runs `goat tls ...`.
pub async fn run(args: TlsArgs) -> Result<(), CliError> {
    match args.action {
        TlsAction::Init { dir, managers, workers } => {
            let written = init(&dir, &managers, &workers)?;
            println!("wrote a CA and {} certificates to {}:", written.len(), dir.display());
            for name in &written {
                println!("  {name}.crt {name}.key");
            }
            println!(
                "\nStart each manager and worker with --tls-ca {d}/ca.crt --tls-cert {d}/NAME.crt --tls-key {d}/NAME.key,\n\
                 and the CLI with GOAT_TLS_CA={d}/ca.crt GOAT_TLS_CERT={d}/client.crt GOAT_TLS_KEY={d}/client.key.\n\
                 Keep {d}/ca.key away from the cluster's machines.",
                d = dir.display()
            );
            Ok(())
        }
    }
}

fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':')
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), CliError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = secret;
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| CliError::other(format!("writing {}: {e}", path.display())))
}

fn tls_error(e: rcgen::Error) -> CliError {
    CliError::other(format!("making a certificate: {e}"))
}

/// Writes the CA and the certificates; returns the names written.
pub fn init(dir: &Path, managers: &[String], workers: &[String]) -> Result<Vec<String>, CliError> {
    let mut hosts: Vec<String> = managers.iter().chain(workers).map(|h| h.trim().to_string()).collect();
    hosts.retain(|h| !h.is_empty());
    if hosts.is_empty() {
        return Err(CliError::usage("name at least one host: --managers m1,m2,m3 [--workers w1,w2]"));
    }
    if let Some(bad) = hosts.iter().find(|h| !valid_host(h) || *h == "ca" || *h == "client") {
        return Err(CliError::usage(format!("{bad:?} is not a usable host name (letters, digits, '-', '.')")));
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = hosts.iter().find(|h| !seen.insert(h.as_str())) {
        return Err(CliError::usage(format!("{twice} is named twice")));
    }
    std::fs::create_dir_all(dir).map_err(|e| CliError::other(format!("creating {}: {e}", dir.display())))?;
    if dir.join("ca.crt").exists() {
        return Err(CliError::usage(format!(
            "{} holds a CA already: pick another directory (or remove it to start over)",
            dir.display()
        )));
    }

    let ca_key = KeyPair::generate().map_err(tls_error)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
    ca.distinguished_name.push(DnType::CommonName, "Goat cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key).map_err(tls_error)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    write(&dir.join("ca.crt"), &ca_cert.pem(), false)?;

    hosts.push("client".to_string());
    for host in &hosts {
        let mut names = vec![host.clone(), "localhost".to_string(), "127.0.0.1".to_string()];
        names.dedup();
        if host == "client" {
            names = vec!["client".to_string()];
        }
        let key = KeyPair::generate().map_err(tls_error)?;
        let mut params = CertificateParams::new(names).map_err(tls_error)?;
        params.distinguished_name.push(DnType::CommonName, host.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(tls_error)?;
        write(&dir.join(format!("{host}.key")), &key.serialize_pem(), true)?;
        write(&dir.join(format!("{host}.crt")), &cert.pem(), false)?;
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_certificates_the_tls_module_loads() {
        let dir = tempfile::tempdir().unwrap();
        let written = init(dir.path(), &["m1".into(), "10.0.0.2".into()], &["w1".into()]).unwrap();
        assert_eq!(written, ["m1", "10.0.0.2", "w1", "client"]);
        for name in &written {
            let args = goat_raft::tls::TlsArgs {
                tls_cert: Some(dir.path().join(format!("{name}.crt"))),
                tls_key: Some(dir.path().join(format!("{name}.key"))),
                tls_ca: Some(dir.path().join("ca.crt")),
            };
            assert!(args.load().unwrap().is_some(), "{name}");
        }
        assert!(init(dir.path(), &["m1".into()], &[]).is_err(), "an existing CA is not overwritten");
        assert!(init(&dir.path().join("x"), &["a/b".into()], &[]).is_err());
    }
}
