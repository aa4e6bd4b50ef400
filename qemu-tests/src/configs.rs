//! Machine configs and client credentials for test clusters, made the way
//! `cairnctl gen config` makes them.

use cairn_api::MachineConfig;
use cairn_api::bundle::{NodeSpec, Secrets};
use cairn_api::client_config::Context;
use cairn_api::machine_config::{InterfaceConfig, MachineType};
use cairn_api::pki::Role;

/// New secrets for a test cluster.
pub fn secrets() -> Secrets {
    // Generation only fails if the system has no randomness; a test cannot go on then.
    match Secrets::generate("test") {
        Ok(secrets) => secrets,
        Err(err) => panic!("cannot generate test secrets: {err}"),
    }
}

/// A control-plane config with `address` on eth0 (the segment); with `management`,
/// eth1 (the management NIC) takes DHCP; with `disk`, `/dev/vda` is the install disk.
pub fn node(
    secrets: &Secrets,
    hostname: &str,
    address: &str,
    management: bool,
    disk: bool,
) -> MachineConfig {
    let spec = NodeSpec {
        machine_type: MachineType::Controlplane,
        hostname: hostname.to_owned(),
        addresses: vec![address.to_owned()],
        endpoint: "https://10.5.0.2:6443".into(),
        control_planes: vec!["10.5.0.2".into()],
        install_disk: disk.then(|| "/dev/vda".to_owned()),
    };
    let mut config = match secrets.machine_config(&spec) {
        Ok(config) => config,
        Err(err) => panic!("cannot make a test config: {err}"),
    };
    if management {
        config.machine.network.interfaces.push(InterfaceConfig {
            name: Some("eth1".into()),
            dhcp: true,
            ..Default::default()
        });
    }
    config
}

/// A worker's config, `hostname` with `address` (a CIDR) on eth0 and the management
/// NIC on DHCP, joining the cluster whose control planes are at `control_planes`.
pub fn worker(
    secrets: &Secrets,
    hostname: &str,
    address: &str,
    control_planes: &[&str],
) -> MachineConfig {
    let spec = NodeSpec {
        machine_type: MachineType::Worker,
        hostname: hostname.to_owned(),
        addresses: vec![address.to_owned()],
        endpoint: format!(
            "https://{}:6443",
            control_planes.first().copied().unwrap_or("10.5.0.2")
        ),
        control_planes: control_planes.iter().map(|a| (*a).to_owned()).collect(),
        install_disk: None,
    };
    let mut config = match secrets.machine_config(&spec) {
        Ok(config) => config,
        Err(err) => panic!("cannot make a test worker config: {err}"),
    };
    config.machine.network.interfaces.push(InterfaceConfig {
        name: Some("eth1".into()),
        dhcp: true,
        ..Default::default()
    });
    config
}

/// Control-plane configs for VMs at `addresses` (`cp-1`, `cp-2`, … with the address
/// on eth0 and the management NIC on DHCP), each naming all of them as the cluster's
/// control planes.
pub fn control_planes(secrets: &Secrets, addresses: &[&str]) -> Vec<MachineConfig> {
    addresses
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let mut config = node(
                secrets,
                &format!("cp-{}", i + 1),
                &format!("{address}/24"),
                true,
                false,
            );
            if let Some(cluster) = config.cluster.as_mut() {
                cluster.control_planes = addresses.iter().map(|a| (*a).to_owned()).collect();
            }
            config
        })
        .collect()
}

/// The config as YAML.
pub fn yaml(config: &MachineConfig) -> String {
    match config.to_yaml() {
        Ok(text) => text,
        Err(err) => panic!("cannot render a test config: {err}"),
    }
}

/// Client credentials with `role`.
pub fn client(secrets: &Secrets, role: Role) -> Context {
    let cert = match secrets.client(&format!("test-{role}"), role) {
        Ok(cert) => cert,
        Err(err) => panic!("cannot issue a test client certificate: {err}"),
    };
    Context {
        endpoints: Vec::new(),
        nodes: Vec::new(),
        ca: secrets.ca.cert_pem().to_owned(),
        crt: cert.cert_pem,
        key: cert.key_pem,
    }
}
