//! The commands that talk to nodes. Each runs against every target node at once;
//! results are labelled per node, and one failing node does not hide the others.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use cairn_api::machine_api::{
    Ack, ApplyMode, ApplyRequest, ApplyResponse, Health, ImageInfo, KubeconfigResponse, KvList,
    KvPut, NetworkStatus, Persistence, PodInfo, ServiceInfo, StoreMembers, VersionInfo, paths,
};
use cairn_api::machine_config::MachineConfig;
use cairn_api::remote_command::ExecRequest;
use futures::future::join_all;

use crate::cli::{
    Command, GetCommand, Global, ImageCommand, MembersCommand, Output, ServiceCommand, StoreCommand,
};
use crate::client::{ClientError, NodeClient};
use crate::output::{Table, print};
use crate::settings;

/// Where `cairnctl kubeconfig` writes by default: `$KUBECONFIG` (its first file),
/// else `~/.kube/config`.
fn default_kubeconfig_path() -> anyhow::Result<std::path::PathBuf> {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .as_ref()
        .and_then(|v| std::env::split_paths(v).next())
        .filter(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").context("HOME is not set: give the kubeconfig's path")?;
    Ok(std::path::Path::new(&home).join(".kube/config"))
}

/// Asks the first node for an admin kubeconfig and writes it (0600) or prints it.
async fn kubeconfig(
    clients: &[NodeClient],
    path: Option<std::path::PathBuf>,
    force: bool,
) -> anyhow::Result<bool> {
    let client = clients.first().context("no node to ask")?;
    let path = match path {
        Some(path) => path,
        None => default_kubeconfig_path()?,
    };
    if path.as_os_str() != "-" && path.exists() && !force {
        bail!(
            "{} exists; pass --force to replace it, or give another path",
            path.display()
        );
    }
    let answer: KubeconfigResponse = client
        .post(paths::KUBECONFIG, &serde_json::json!({}))
        .await
        .with_context(|| format!("{}: cannot get a kubeconfig", client.node()))?;
    if path.as_os_str() == "-" {
        print!("{}", answer.kubeconfig);
        return Ok(true);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    settings::write_private(&path, answer.kubeconfig.as_bytes())?;
    eprintln!(
        "wrote an admin kubeconfig for {} to {}",
        answer.server,
        path.display()
    );
    Ok(true)
}

/// Runs a node command; returns whether every node succeeded.
pub async fn run(global: &Global, command: Command) -> anyhow::Result<bool> {
    if let Command::ApplyConfig {
        insecure: true,
        file,
        mode,
        timeout,
    } = &command
    {
        let targets = settings::targets(global, None)
            .context("--insecure needs -n/--nodes (the node in maintenance mode)")?;
        let clients = targets
            .iter()
            .map(|t| NodeClient::insecure(t))
            .collect::<Result<Vec<_>, _>>()?;
        return apply(global, &clients, file, mode, *timeout).await;
    }
    let clients = context_clients(global)?;
    match command {
        Command::Version => version(global.output, &clients).await,
        Command::Health => health(global.output, &clients).await,
        Command::Services => services(global.output, &clients).await,
        Command::Service(ServiceCommand::Restart { name }) => {
            let path = format!("/v1/services/{name}/restart");
            acks(&clients, &path).await
        }
        Command::Logs {
            service,
            follow,
            tail,
        } => {
            let mut path = format!("/v1/services/{service}/logs?follow={follow}");
            if let Some(tail) = tail {
                path.push_str(&format!("&tail={tail}"));
            }
            streams(&clients, &path).await
        }
        Command::Image(ImageCommand::Import { file }) => {
            import_image(global.output, &clients, &file).await
        }
        Command::Image(ImageCommand::Ls) => images(global.output, &clients).await,
        Command::Image(ImageCommand::Rm { name }) => {
            let path = format!("{}?name={}", paths::IMAGES, query_escape(&name));
            let (results, ok) = each(&clients, |c| c.delete::<Ack>(&path)).await;
            for (node, ack) in results {
                println!("{node}: {}", ack.message);
            }
            Ok(ok)
        }
        Command::Pods => pods(global.output, &clients).await,
        Command::PodLogs {
            pod,
            container,
            follow,
            tail,
            previous,
            timestamps,
            since_seconds,
            limit_bytes,
        } => {
            let (namespace, name) = pod.split_once('/').unwrap_or(("default", pod.as_str()));
            let (_, container) = locate_pod(&clients, namespace, name, container).await?;
            let mut path = format!(
                "{}/{namespace}/{name}/containers/{container}/logs?follow={follow}&previous={previous}&timestamps={timestamps}",
                paths::PODS
            );
            for (key, value) in [
                ("tail", tail.map(|t| t as u64)),
                ("sinceSeconds", since_seconds),
                ("limitBytes", limit_bytes),
            ] {
                if let Some(value) = value {
                    path.push_str(&format!("&{key}={value}"));
                }
            }
            streams(&clients, &path).await
        }
        Command::Dmesg { follow } => {
            streams(&clients, &format!("{}?follow={follow}", paths::DMESG)).await
        }
        Command::Get(GetCommand::Machineconfig) => machine_config(&clients).await,
        Command::Get(GetCommand::Links) => {
            network(global.output, &clients, NetworkPart::Links).await
        }
        Command::Get(GetCommand::Addresses) => {
            network(global.output, &clients, NetworkPart::Addresses).await
        }
        Command::Get(GetCommand::Routes) => {
            network(global.output, &clients, NetworkPart::Routes).await
        }
        Command::ApplyConfig {
            file,
            mode,
            timeout,
            ..
        } => apply(global, &clients, &file, &mode, timeout).await,
        Command::ConfirmConfig => acks(&clients, paths::CONFIRM).await,
        Command::Reboot => acks(&clients, paths::REBOOT).await,
        Command::Shutdown => acks(&clients, paths::SHUTDOWN).await,
        Command::Bootstrap => acks(&clients, paths::STORE_BOOTSTRAP).await,
        Command::Kubeconfig { path, force } => kubeconfig(&clients, path, force).await,
        Command::Members { action: None } => members(global.output, &clients).await,
        Command::Members {
            action: Some(MembersCommand::Remove { id }),
        } => acks(&clients, &format!("/v1/store/members/{id}/remove")).await,
        Command::Store(StoreCommand::Get { key, prefix }) => {
            let parameter = if prefix { "prefix" } else { "key" };
            let path = format!("{}?{parameter}={}", paths::STORE_KV, encode_query(&key));
            kv(global.output, &clients, |c| {
                let path = path.clone();
                async move { c.get::<KvList>(&path).await }
            })
            .await
        }
        Command::Store(StoreCommand::Put { key, value }) => {
            let put = KvPut { key, value };
            kv(global.output, &clients, |c| {
                let put = put.clone();
                async move { c.post::<_, KvList>(paths::STORE_KV, &put).await }
            })
            .await
        }
        Command::Gen(_) | Command::Validate { .. } | Command::Cluster(_) | Command::Exec { .. } => {
            bail!("not a node command")
        }
    }
}

/// Clients for the target nodes, with the current context's credentials.
fn context_clients(global: &Global) -> anyhow::Result<Vec<NodeClient>> {
    let (_, context) = settings::context(global)?;
    let targets = settings::targets(global, Some(&context))?;
    Ok(targets
        .iter()
        .map(|t| NodeClient::new(t, &context))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Calls every node at once; prints failures on stderr; returns the successes.
async fn each<'a, T, F, Fut>(clients: &'a [NodeClient], call: F) -> (Vec<(&'a str, T)>, bool)
where
    F: Fn(&'a NodeClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let results = join_all(clients.iter().map(|c| async { (c.node(), call(c).await) })).await;
    let mut ok = Vec::new();
    let mut all_ok = true;
    for (node, result) in results {
        match result {
            Ok(value) => ok.push((node, value)),
            Err(err) => {
                all_ok = false;
                eprintln!("error: {err}");
            }
        }
    }
    (ok, all_ok)
}

fn by_node<T: Clone>(results: &[(&str, T)]) -> BTreeMap<String, T> {
    results
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.clone()))
        .collect()
}

async fn version(format: Output, clients: &[NodeClient]) -> anyhow::Result<bool> {
    let (results, ok) = each(clients, |c| c.get::<VersionInfo>(paths::VERSION)).await;
    print(format, &by_node(&results), || {
        let mut table = Table::new(&["NODE", "VERSION", "KERNEL", "HOSTNAME", "MODE"]);
        for (node, v) in &results {
            table.row(vec![
                (*node).to_owned(),
                v.version.clone(),
                v.kernel.clone(),
                v.hostname.clone(),
                if v.maintenance {
                    "maintenance"
                } else {
                    "configured"
                }
                .to_owned(),
            ]);
        }
        table.render()
    })?;
    Ok(ok)
}

async fn health(format: Output, clients: &[NodeClient]) -> anyhow::Result<bool> {
    let (results, ok) = each(clients, |c| c.get::<Health>(paths::HEALTH)).await;
    print(format, &by_node(&results), || {
        let mut out = Vec::new();
        for (node, h) in &results {
            let persistence = match &h.persistence {
                Persistence::Ephemeral => "ephemeral (no install disk)".to_owned(),
                Persistence::Disk { device, mount } => format!("{device} on {mount}"),
            };
            let mut text = format!("NODE {node}\nSTAGE {}", h.stage);
            if let Some(reason) = &h.reason {
                text.push_str(&format!(" ({reason})"));
            }
            text.push_str(&format!("\nSTATE {persistence}"));
            if h.staged_config {
                text.push_str("\nSTAGED a config waits for the next boot");
            }
            if let Some(secs) = h.try_rollback_in_secs {
                text.push_str(&format!("\nTRY rolls back in {secs} s unless confirmed"));
            }
            let mut phases = Table::new(&["PHASE", "STATE", "MS", "DETAIL"]);
            for p in &h.phases {
                phases.row(vec![
                    p.name.clone(),
                    p.state.clone(),
                    p.elapsed_ms
                        .map(|ms| format!("{ms:.1}"))
                        .unwrap_or_default(),
                    p.detail.clone().unwrap_or_default(),
                ]);
            }
            text.push_str("\n\n");
            text.push_str(&phases.render());
            text.push_str("\n\n");
            text.push_str(&service_table(&[(node, h.services.clone())]));
            out.push(text);
        }
        out.join("\n\n")
    })?;
    Ok(ok)
}

fn service_table(results: &[(&str, Vec<ServiceInfo>)]) -> String {
    let mut table = Table::new(&["NODE", "SERVICE", "STATE", "RESTARTS", "LAST EXIT"]);
    for (node, services) in results {
        for s in services {
            table.row(vec![
                (*node).to_owned(),
                s.name.clone(),
                s.state.clone(),
                s.restarts.to_string(),
                s.last_exit.clone().unwrap_or_default(),
            ]);
        }
    }
    table.render()
}

async fn services(format: Output, clients: &[NodeClient]) -> anyhow::Result<bool> {
    let (results, ok) = each(clients, |c| c.get::<Vec<ServiceInfo>>(paths::SERVICES)).await;
    print(format, &by_node(&results), || service_table(&results))?;
    Ok(ok)
}

/// Escapes a query value (image names hold `/`, `:` and `@`).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The archive to send for `file`: the file itself, or a directory (an OCI layout)
/// packed as a tar.
fn archive(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if meta.is_file() {
        return std::fs::read(file).with_context(|| format!("cannot read {}", file.display()));
    }
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", file)
        .with_context(|| format!("cannot pack {}", file.display()))?;
    builder.into_inner().context("cannot pack the layout")
}

async fn import_image(
    format: Output,
    clients: &[NodeClient],
    file: &std::path::Path,
) -> anyhow::Result<bool> {
    let bytes = archive(file)?;
    let (results, ok) = each(clients, |c| {
        c.post_bytes::<Vec<ImageInfo>>(paths::IMAGES, bytes.clone(), "application/x-tar")
    })
    .await;
    print(format, &by_node(&results), || image_table(&results))?;
    Ok(ok)
}

fn image_table(results: &[(&str, Vec<ImageInfo>)]) -> String {
    let mut table = Table::new(&["NODE", "IMAGE", "DIGEST", "SIZE"]);
    for (node, images) in results {
        for image in images {
            table.row(vec![
                (*node).to_owned(),
                image.name.clone(),
                image.digest.chars().take(19).collect(),
                format!("{:.1} MiB", image.size as f64 / (1 << 20) as f64),
            ]);
        }
    }
    table.render()
}

async fn images(format: Output, clients: &[NodeClient]) -> anyhow::Result<bool> {
    let (results, ok) = each(clients, |c| c.get::<Vec<ImageInfo>>(paths::IMAGES)).await;
    print(format, &by_node(&results), || image_table(&results))?;
    Ok(ok)
}

fn pod_table(results: &[(&str, Vec<PodInfo>)]) -> String {
    let mut table = Table::new(&[
        "NODE",
        "NAMESPACE",
        "POD",
        "PHASE",
        "IP",
        "CONTAINER",
        "STATE",
        "READY",
        "RESTARTS",
    ]);
    for (node, pods) in results {
        for pod in pods {
            for container in &pod.containers {
                let state = match (&container.reason, container.exit_code) {
                    (Some(reason), Some(code)) => {
                        format!("{} ({reason}, exit {code})", container.state)
                    }
                    (Some(reason), None) => format!("{} ({reason})", container.state),
                    (None, Some(code)) => format!("{} (exit {code})", container.state),
                    (None, None) => container.state.clone(),
                };
                table.row(vec![
                    (*node).to_owned(),
                    pod.namespace.clone(),
                    pod.name.clone(),
                    pod.phase.clone(),
                    pod.pod_ip.clone().unwrap_or_else(|| "-".into()),
                    if container.init {
                        format!("{} (init)", container.name)
                    } else {
                        container.name.clone()
                    },
                    state,
                    container.ready.to_string(),
                    container.restart_count.to_string(),
                ]);
            }
        }
    }
    table.render()
}

async fn pods(format: Output, clients: &[NodeClient]) -> anyhow::Result<bool> {
    let (results, ok) = each(clients, |c| c.get::<Vec<PodInfo>>(paths::PODS)).await;
    print(format, &by_node(&results), || pod_table(&results))?;
    Ok(ok)
}

/// The first of `clients` whose node runs pod `namespace/name`, with the container
/// meant: `container` when given, else the pod's only app container.
async fn locate_pod<'a>(
    clients: &'a [NodeClient],
    namespace: &str,
    name: &str,
    container: Option<String>,
) -> anyhow::Result<(&'a NodeClient, String)> {
    let mut unreachable = Vec::new();
    for client in clients {
        let pods = match client.get::<Vec<PodInfo>>(paths::PODS).await {
            Ok(pods) => pods,
            Err(err) => {
                unreachable.push(err.to_string());
                continue;
            }
        };
        let Some(pod) = pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
        else {
            continue;
        };
        if let Some(container) = container {
            return Ok((client, container));
        }
        let apps: Vec<&str> = pod
            .containers
            .iter()
            .filter(|c| !c.init)
            .map(|c| c.name.as_str())
            .collect();
        return match apps.as_slice() {
            [only] => Ok((client, (*only).to_owned())),
            many => bail!(
                "pod {namespace}/{name} has several containers ({}): choose one with -c",
                many.join(", ")
            ),
        };
    }
    if unreachable.is_empty() {
        bail!("no pod {namespace}/{name} on the chosen nodes")
    }
    bail!(
        "no pod {namespace}/{name} on the nodes that answered; not asked: {}",
        unreachable.join("; ")
    )
}

/// `cairnctl exec`: runs the command on the node holding the pod; its exit code.
pub async fn exec(
    global: &Global,
    pod: &str,
    container: Option<String>,
    request: &ExecRequest,
) -> anyhow::Result<i32> {
    let clients = context_clients(global)?;
    let (namespace, name) = pod.split_once('/').unwrap_or(("default", pod));
    let (client, container) = locate_pod(&clients, namespace, name, container).await?;
    crate::exec::exec_here(client, namespace, name, &container, request).await
}

async fn acks(clients: &[NodeClient], path: &str) -> anyhow::Result<bool> {
    let empty = serde_json::json!({});
    let (results, ok) = each(clients, |c| c.post::<_, Ack>(path, &empty)).await;
    for (node, ack) in results {
        println!("{node}: {}", ack.message);
    }
    Ok(ok)
}

async fn streams(clients: &[NodeClient], path: &str) -> anyhow::Result<bool> {
    let label = clients.len() > 1;
    let (_, ok) = each(clients, |c| async move {
        c.stream(path, |line| {
            if label {
                println!("{}: {line}", c.node());
            } else {
                println!("{line}");
            }
        })
        .await
    })
    .await;
    Ok(ok)
}

/// Which part of the network status `cairnctl get` shows.
#[derive(Debug, Clone, Copy)]
pub enum NetworkPart {
    /// Links.
    Links,
    /// Addresses.
    Addresses,
    /// Routes.
    Routes,
}

fn yes(flag: bool) -> String {
    if flag { "yes".into() } else { "-".into() }
}

fn network_table(part: NetworkPart, results: &[(&str, NetworkStatus)]) -> String {
    let mut table = match part {
        NetworkPart::Links => Table::new(&[
            "NODE",
            "LINK",
            "KIND",
            "CONTROLLER",
            "MAC",
            "MTU",
            "UP",
            "CARRIER",
            "CONFIGURED",
        ]),
        NetworkPart::Addresses => Table::new(&["NODE", "LINK", "ADDRESS", "CONFIGURED"]),
        NetworkPart::Routes => Table::new(&["NODE", "TO", "VIA", "LINK", "PROTOCOL", "CONFIGURED"]),
    };
    let mut problems = Vec::new();
    for (node, status) in results {
        match part {
            NetworkPart::Links => {
                for link in &status.links {
                    table.row(vec![
                        (*node).to_owned(),
                        link.name.clone(),
                        link.kind.clone().unwrap_or_else(|| "-".into()),
                        link.controller.clone().unwrap_or_else(|| "-".into()),
                        link.mac.clone().unwrap_or_else(|| "-".into()),
                        link.mtu.map_or_else(|| "-".into(), |m| m.to_string()),
                        yes(link.up),
                        yes(link.carrier),
                        yes(link.configured),
                    ]);
                }
            }
            NetworkPart::Addresses => {
                for address in &status.addresses {
                    table.row(vec![
                        (*node).to_owned(),
                        address.link.clone(),
                        address.address.clone(),
                        yes(address.configured),
                    ]);
                }
            }
            NetworkPart::Routes => {
                for route in &status.routes {
                    table.row(vec![
                        (*node).to_owned(),
                        route.to.clone(),
                        route.via.clone().unwrap_or_else(|| "-".into()),
                        route.link.clone().unwrap_or_else(|| "-".into()),
                        route.protocol.clone(),
                        yes(route.configured),
                    ]);
                }
            }
        }
        problems.extend(status.problems.iter().map(|p| format!("{node}: {p}")));
    }
    let mut text = table.render();
    for problem in problems {
        text.push_str(&format!("\nproblem: {problem}"));
    }
    text
}

async fn network(
    format: Output,
    clients: &[NodeClient],
    part: NetworkPart,
) -> anyhow::Result<bool> {
    let (results, ok) = each(clients, |c| c.get::<NetworkStatus>(paths::NETWORK)).await;
    print(format, &by_node(&results), || network_table(part, &results))?;
    Ok(ok)
}

async fn machine_config(clients: &[NodeClient]) -> anyhow::Result<bool> {
    let (results, ok) = each(clients, |c| c.get_text(paths::MACHINE_CONFIG)).await;
    let several = results.len() > 1;
    for (node, text) in results {
        if several {
            println!("--- # {node}");
        }
        print!("{text}");
    }
    Ok(ok)
}

async fn apply(
    global: &Global,
    clients: &[NodeClient],
    file: &std::path::Path,
    mode: &str,
    timeout: Option<u64>,
) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mode: ApplyMode = mode.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    if let Err(err) = MachineConfig::from_yaml(&text) {
        let list: String = err
            .problems()
            .iter()
            .map(|p| format!("\n  - {p}"))
            .collect();
        bail!("{} is invalid; nothing was sent:{list}", file.display());
    }
    let request = ApplyRequest {
        config: text,
        mode,
        try_timeout_secs: timeout,
    };
    let (results, ok) = each(clients, |c| {
        c.post::<_, ApplyResponse>(paths::MACHINE_CONFIG, &request)
    })
    .await;
    print(global.output, &by_node(&results), || {
        let mut table = Table::new(&["NODE", "OUTCOME", "LIVE", "NEEDS REBOOT", "ROLLBACK IN"]);
        for (node, answer) in &results {
            table.row(vec![
                (*node).to_owned(),
                serde_json::to_value(answer.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                answer.changes.live.join(", "),
                answer.changes.needs_reboot.join(", "),
                answer
                    .rollback_in_secs
                    .map(|s| format!("{s} s"))
                    .unwrap_or_default(),
            ]);
        }
        table.render()
    })?;
    Ok(ok)
}

async fn members(format: Output, clients: &[NodeClient]) -> anyhow::Result<bool> {
    let (results, ok) = each(clients, |c| c.get::<StoreMembers>(paths::STORE_MEMBERS)).await;
    print(format, &by_node(&results), || {
        let mut table = Table::new(&[
            "NODE", "ID", "ADDRESS", "ROLE", "LEADER", "TERM", "APPLIED", "MATCHED",
        ]);
        for (node, view) in &results {
            for member in &view.members {
                let role = if member.voter { "voter" } else { "learner" };
                let this = if member.id == view.this {
                    format!("{} (this)", member.id)
                } else {
                    member.id.to_string()
                };
                table.row(vec![
                    (*node).to_owned(),
                    this,
                    member.addr.clone(),
                    role.to_owned(),
                    if view.leader == Some(member.id) {
                        "yes"
                    } else {
                        ""
                    }
                    .to_owned(),
                    view.term.to_string(),
                    if member.id == view.this {
                        view.applied.map(|a| a.to_string()).unwrap_or_default()
                    } else {
                        String::new()
                    },
                    member.matched.map(|m| m.to_string()).unwrap_or_default(),
                ]);
            }
        }
        table.render()
    })?;
    Ok(ok)
}

async fn kv<'a, F, Fut>(format: Output, clients: &'a [NodeClient], call: F) -> anyhow::Result<bool>
where
    F: Fn(&'a NodeClient) -> Fut,
    Fut: std::future::Future<Output = Result<KvList, ClientError>>,
{
    let (results, ok) = each(clients, call).await;
    print(format, &by_node(&results), || {
        let mut table = Table::new(&["NODE", "KEY", "VALUE", "REVISION"]);
        for (node, list) in &results {
            for entry in &list.entries {
                table.row(vec![
                    (*node).to_owned(),
                    entry.key.clone(),
                    entry.value.clone(),
                    entry.mod_revision.to_string(),
                ]);
            }
        }
        table.render()
    })?;
    Ok(ok)
}

/// Percent-encodes a query value.
fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::machine_api::{AddressInfo, LinkInfo, RouteInfo};

    fn status() -> NetworkStatus {
        NetworkStatus {
            links: vec![LinkInfo {
                name: "eth0".into(),
                index: 2,
                mac: Some("52:54:00:00:00:01".into()),
                mtu: Some(1500),
                up: true,
                carrier: false,
                kind: None,
                controller: Some("bond0".into()),
                configured: true,
            }],
            addresses: vec![AddressInfo {
                link: "eth0".into(),
                address: "10.5.0.2/24".into(),
                configured: true,
            }],
            routes: vec![RouteInfo {
                to: "10.244.1.0/24".into(),
                via: Some("10.5.0.3".into()),
                link: Some("eth0".into()),
                protocol: "cairn".into(),
                configured: false,
            }],
            problems: vec!["machine.network.interfaces[1] (eth9): no link matches".into()],
            passes: 3,
            repairs: 1,
        }
    }

    #[test]
    fn network_tables_show_each_part_and_the_problems() {
        let results = [("node-1", status())];
        let links = network_table(NetworkPart::Links, &results);
        assert!(links.contains("52:54:00:00:00:01"), "{links}");
        assert!(links.lines().nth(1).unwrap().split_whitespace().eq([
            "node-1",
            "eth0",
            "-",
            "bond0",
            "52:54:00:00:00:01",
            "1500",
            "yes",
            "-",
            "yes"
        ]));
        let addresses = network_table(NetworkPart::Addresses, &results);
        assert!(addresses.contains("10.5.0.2/24"), "{addresses}");
        let routes = network_table(NetworkPart::Routes, &results);
        assert!(
            routes.contains("10.244.1.0/24") && routes.contains("cairn"),
            "{routes}"
        );
        assert!(
            routes.ends_with(
                "\nproblem: node-1: machine.network.interfaces[1] (eth9): no link matches"
            ),
            "{routes}"
        );
    }
}
