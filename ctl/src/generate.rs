//! `cairnctl gen config` and `cairnctl validate`: offline work on configs.

use std::path::Path;

use anyhow::{Context as _, bail};
use cairn_api::bundle::{NodeSpec, Secrets};
use cairn_api::client_config::{ClientConfig, Context};
use cairn_api::machine_config::{MachineConfig, MachineType, check_hostname};
use cairn_api::pki::Role;

use crate::settings;

/// Writes `controlplane.yaml`, `worker.yaml` and `cairnconfig` for a new cluster.
pub fn config(
    cluster_name: &str,
    endpoint: &str,
    output_dir: &Path,
    force: bool,
    install_disk: Option<String>,
) -> anyhow::Result<()> {
    if let Err(why) = check_hostname(cluster_name) {
        bail!("cluster name {cluster_name:?} {why}");
    }
    let host = endpoint
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .map(|authority| crate::client::split_target(authority).0)
        .filter(|h| !h.is_empty())
        .with_context(|| format!("endpoint {endpoint:?} is not like https://10.5.0.2:6443"))?;
    let files = ["controlplane.yaml", "worker.yaml", "cairnconfig"].map(|f| output_dir.join(f));
    if !force && let Some(existing) = files.iter().find(|f| f.exists()) {
        bail!("{} exists; pass --force to overwrite", existing.display());
    }
    std::fs::create_dir_all(output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    let secrets = Secrets::generate(cluster_name)?;
    for (file, machine_type, hostname) in [
        (&files[0], MachineType::Controlplane, "controlplane-1"),
        (&files[1], MachineType::Worker, "worker-1"),
    ] {
        let config = secrets.machine_config(&NodeSpec {
            machine_type,
            hostname: hostname.to_owned(),
            addresses: Vec::new(),
            endpoint: endpoint.to_owned(),
            control_planes: vec![host.clone()],
            install_disk: install_disk.clone(),
        })?;
        let text = config
            .to_yaml()
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
        write_private(file, &text)?;
    }
    let admin = secrets.client("admin", Role::Admin)?;
    let mut client = ClientConfig::default();
    client.merge(
        cluster_name,
        Context {
            endpoints: vec![host],
            nodes: Vec::new(),
            ca: secrets.ca.cert_pem().to_owned(),
            crt: admin.cert_pem,
            key: admin.key_pem,
        },
    );
    settings::save(&files[2], &client)?;
    for file in &files {
        println!("wrote {}", file.display());
    }
    println!("use it with: export CAIRNCONFIG={}", files[2].display());
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Checks a config file offline; `Ok(false)` when it has problems (printed).
pub fn validate(file: &Path) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match MachineConfig::from_yaml(&text) {
        Ok(_) => {
            println!("{}: valid", file.display());
            Ok(true)
        }
        Err(err) => {
            println!("{}: invalid", file.display());
            for problem in err.problems() {
                println!("  - {problem}");
            }
            Ok(false)
        }
    }
}

/// Writes a client file whose certificate carries `role`, signed by the CA in `ca_from`;
/// its endpoints come from `-e/--endpoints`.
pub fn client(
    name: &str,
    role: &str,
    ca_from: &Path,
    output: &Path,
    endpoints: Vec<String>,
) -> anyhow::Result<()> {
    let role = Role::from_organization(role)
        .with_context(|| format!("role {role:?} is not os:admin, os:operator or os:reader"))?;
    let text = std::fs::read_to_string(ca_from)
        .with_context(|| format!("reading {}", ca_from.display()))?;
    let config = MachineConfig::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", ca_from.display()))?;
    let certs = &config.machine.certs;
    let key = certs.ca.key.as_deref().with_context(|| {
        format!(
            "{} has no machine.certs.ca.key (use a control-plane config)",
            ca_from.display()
        )
    })?;
    let ca = cairn_api::pki::Ca::from_pem(&certs.ca.crt, key)?;
    let cluster = config
        .cluster
        .as_ref()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "cairn".into());
    let secrets = Secrets::from_parts(&cluster, ca, "");
    let issued = secrets.client(name, role)?;
    let mut client = ClientConfig::default();
    client.merge(
        &format!("{cluster}-{name}"),
        Context {
            endpoints,
            nodes: Vec::new(),
            ca: certs.ca.crt.clone(),
            crt: issued.cert_pem,
            key: issued.key_pem,
        },
    );
    settings::save(output, &client)?;
    println!("wrote {} ({role} for {name})", output.display());
    Ok(())
}
