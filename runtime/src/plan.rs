//! From a Kubernetes container (in its pod) and its image to a [`ContainerPlan`]: the
//! command (`command`/`args` over the image's entrypoint/cmd, as the kubelet), the
//! environment (image env, then the container's, with `$(VAR)` references expanded and
//! downward-API `fieldRef`s filled in), the user (`securityContext` over the image's
//! `User`, names looked up in the image's `/etc/passwd`), limits, and security
//! settings. Every refusal names the field of the pod spec.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, SecurityContext};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::Capability;

use crate::quantity;
use crate::spec::{ContainerPlan, Resources, SeccompProfile, SharedNamespaces};

/// A field of the pod spec that cannot be run as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PlanError {
    /// The field's path (`spec.containers[0].resources.limits.memory`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Who a pod is, as containers see it through the downward API.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PodIdentity {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid (unique on the node).
    pub uid: String,
}

/// The pod-level facts a container plan needs.
#[derive(Debug, Clone)]
pub struct PodContext<'a> {
    /// The pod.
    pub identity: &'a PodIdentity,
    /// Its spec.
    pub spec: &'a PodSpec,
    /// Labels and annotations (for `fieldRef`s).
    pub labels: &'a BTreeMap<String, String>,
    /// Annotations.
    pub annotations: &'a BTreeMap<String, String>,
    /// The node's name.
    pub node_name: &'a str,
    /// The pod's IP, once it has one.
    pub pod_ip: &'a str,
    /// The node's IP.
    pub host_ip: &'a str,
    /// The sandbox's namespaces.
    pub namespaces: &'a SharedNamespaces,
    /// The pods's hostname.
    pub hostname: &'a str,
    /// The node's default `pids.max` per container.
    pub pids_limit: Option<i64>,
}

/// `field` of the container at `path`.
fn at(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

fn refuse(field: String, reason: impl ToString) -> PlanError {
    PlanError {
        field,
        reason: reason.to_string(),
    }
}

/// The command line: Kubernetes' `command` replaces the image's entrypoint (and drops
/// its cmd), `args` replaces the cmd.
pub fn command_line(container: &Container, image: &ImageConfiguration) -> Vec<String> {
    let config = image.config().as_ref();
    let entrypoint = config
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let cmd = config.and_then(|c| c.cmd().clone()).unwrap_or_default();
    match (&container.command, &container.args) {
        (Some(command), Some(args)) => command.iter().chain(args).cloned().collect(),
        (Some(command), None) => command.clone(),
        (None, Some(args)) => entrypoint.into_iter().chain(args.iter().cloned()).collect(),
        (None, None) => entrypoint.into_iter().chain(cmd).collect(),
    }
}

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`; unknown references stay as
/// written (Kubernetes' rules).
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API `fieldRef`.
fn field_value(ctx: &PodContext<'_>, field_path: &str) -> Option<String> {
    let quoted = |key: &str| {
        key.trim_end_matches(['\'', ']'])
            .trim_start_matches(['[', '\''])
            .to_owned()
    };
    Some(match field_path {
        "metadata.name" => ctx.identity.name.clone(),
        "metadata.namespace" => ctx.identity.namespace.clone(),
        "metadata.uid" => ctx.identity.uid.clone(),
        "spec.nodeName" => ctx.node_name.to_owned(),
        "spec.serviceAccountName" => ctx.spec.service_account_name.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.to_owned(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.to_owned(),
        other => {
            if let Some(key) = other.strip_prefix("metadata.labels") {
                ctx.labels.get(&quoted(key)).cloned().unwrap_or_default()
            } else if let Some(key) = other.strip_prefix("metadata.annotations") {
                ctx.annotations
                    .get(&quoted(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// The value of a downward-API `resourceFieldRef` of `container`.
fn resource_value(container: &Container, resource: &str, divisor: Option<&str>) -> Option<i64> {
    let resources = container.resources.as_ref();
    let (kind, name) = resource.split_once('.')?;
    let map = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return None,
    };
    let text = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    let divisor = divisor.unwrap_or("1");
    let is_cpu = name == "cpu";
    // Unset limits read as the node's capacity; unknown here, so report nothing.
    let value = value_of(&text?, is_cpu)?;
    let divisor = value_or_one(value_of(divisor, is_cpu));
    Some((value + divisor - 1) / divisor)
}

fn value_of(text: &str, is_cpu: bool) -> Option<i64> {
    if is_cpu {
        quantity::milli_value(text).ok()
    } else {
        quantity::value(text).ok()
    }
}

fn value_or_one(value: Option<i64>) -> i64 {
    value.filter(|v| *v > 0).unwrap_or(1)
}

/// The environment: the image's, then the container's in order, each value expanded
/// against the container's variables defined before it.
fn environment(
    ctx: &PodContext<'_>,
    container: &Container,
    image: &ImageConfiguration,
    path: &str,
) -> Result<(Vec<String>, BTreeMap<String, String>), PlanError> {
    let mut ordered: Vec<(String, String)> = Vec::new();
    let set = |ordered: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(slot) = ordered.iter_mut().find(|(n, _)| *n == name) {
            slot.1 = value;
        } else {
            ordered.push((name, value));
        }
    };
    for pair in image
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default()
    {
        let (name, value) = pair.split_once('=').unwrap_or((&pair, ""));
        set(&mut ordered, name.to_owned(), value.to_owned());
    }
    if !ordered.iter().any(|(n, _)| n == "PATH") {
        set(
            &mut ordered,
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    set(&mut ordered, "HOSTNAME".into(), ctx.hostname.to_owned());
    // Only the container's own variables are visible to `$(…)`.
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    for (index, var) in container.env.iter().flatten().enumerate() {
        let field = format!("{path}.env[{index}]");
        let value = env_value(ctx, container, var, &defined, &field)?;
        defined.insert(var.name.clone(), value.clone());
        set(&mut ordered, var.name.clone(), value);
    }
    let env = ordered
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    Ok((env, defined))
}

fn env_value(
    ctx: &PodContext<'_>,
    container: &Container,
    var: &EnvVar,
    defined: &BTreeMap<String, String>,
    field: &str,
) -> Result<String, PlanError> {
    if let Some(value) = &var.value {
        return Ok(expand(value, defined));
    }
    let Some(source) = &var.value_from else {
        return Ok(String::new());
    };
    if let Some(field_ref) = &source.field_ref {
        return field_value(ctx, &field_ref.field_path).ok_or_else(|| {
            refuse(
                format!("{field}.valueFrom.fieldRef.fieldPath"),
                format!(
                    "{:?} is not a field the downward API offers",
                    field_ref.field_path
                ),
            )
        });
    }
    if let Some(resource_ref) = &source.resource_field_ref {
        let divisor = resource_ref.divisor.as_ref().map(|q| q.0.as_str());
        return Ok(resource_value(container, &resource_ref.resource, divisor)
            .map(|v| v.to_string())
            .unwrap_or_default());
    }
    Err(refuse(
        format!("{field}.valueFrom"),
        "configMapKeyRef and secretKeyRef must be resolved by the node agent before the \
         runtime sees the pod",
    ))
}

/// The user and groups: the container's securityContext over the pod's, over the
/// image's `User` (`uid`, `uid:gid`, or names from the image's files).
fn user(
    ctx: &PodContext<'_>,
    security: Option<&SecurityContext>,
    image: &ImageConfiguration,
    lowers: &[PathBuf],
    path: &str,
) -> Result<(u32, u32, Vec<u32>), PlanError> {
    let pod = ctx.spec.security_context.as_ref();
    let run_as_user = security
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.and_then(|p| p.run_as_user));
    let run_as_group = security
        .and_then(|s| s.run_as_group)
        .or_else(|| pod.and_then(|p| p.run_as_group));
    let image_user = image
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default();
    let (image_uid, image_gid) = if image_user.is_empty() {
        (0, None)
    } else {
        let (name, group) = image_user
            .split_once(':')
            .map_or((image_user.as_str(), None), |(u, g)| (u, Some(g)));
        let (uid, primary) = match name.parse::<u32>() {
            Ok(uid) => (uid, lookup_primary_group(lowers, uid)),
            Err(_) => lookup_user(lowers, name).ok_or_else(|| {
                refuse(
                    format!("{path}.image"),
                    format!("the image's user {name:?} is not in its /etc/passwd"),
                )
            })?,
        };
        let gid = match group {
            Some(group) => Some(match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => lookup_group(lowers, group).ok_or_else(|| {
                    refuse(
                        format!("{path}.image"),
                        format!("the image's group {group:?} is not in its /etc/group"),
                    )
                })?,
            }),
            None => primary,
        };
        (uid, gid)
    };
    let uid = match run_as_user {
        Some(uid) => u32::try_from(uid)
            .map_err(|_| refuse(at(path, "securityContext.runAsUser"), "must be 0 … 2^32-1"))?,
        None => image_uid,
    };
    if security
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod.and_then(|p| p.run_as_non_root))
        == Some(true)
        && uid == 0
    {
        return Err(refuse(
            at(path, "securityContext.runAsNonRoot"),
            "the container would run as root (uid 0)",
        ));
    }
    let gid = match run_as_group {
        Some(gid) => u32::try_from(gid)
            .map_err(|_| refuse(at(path, "securityContext.runAsGroup"), "must be 0 … 2^32-1"))?,
        None => image_gid.unwrap_or(0),
    };
    let mut groups: Vec<u32> = pod
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    if let Some(fs_group) = pod
        .and_then(|p| p.fs_group)
        .and_then(|g| u32::try_from(g).ok())
    {
        groups.push(fs_group);
    }
    Ok((uid, gid, groups))
}

/// The topmost copy of `file` (like `etc/passwd`) among the image's layers.
fn image_file(lowers: &[PathBuf], file: &str) -> Option<String> {
    lowers
        .iter()
        .rev()
        .find_map(|dir| std::fs::read_to_string(dir.join(file)).ok())
}

fn lookup_user(lowers: &[PathBuf], name: &str) -> Option<(u32, Option<u32>)> {
    image_file(lowers, "etc/passwd")?.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok())))
            .flatten()
    })
}

fn lookup_primary_group(lowers: &[PathBuf], uid: u32) -> Option<u32> {
    image_file(lowers, "etc/passwd")?.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[2].parse() == Ok(uid))
            .then(|| fields[3].parse().ok())
            .flatten()
    })
}

fn lookup_group(lowers: &[PathBuf], name: &str) -> Option<u32> {
    image_file(lowers, "etc/group")?.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 2 && fields[0] == name)
            .then(|| fields[2].parse().ok())
            .flatten()
    })
}

/// A Kubernetes capability name (`NET_ADMIN` or `CAP_NET_ADMIN`).
fn capability(name: &str, field: String) -> Result<Capability, PlanError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse::<Capability>()
        .map_err(|_| refuse(field, format!("{name:?} is not a Linux capability")))
}

/// The limits of a container from its `resources`.
fn resources(container: &Container, path: &str, pids: Option<i64>) -> Result<Resources, PlanError> {
    let mut out = Resources {
        pids,
        ..Resources::default()
    };
    let Some(resources) = &container.resources else {
        return Ok(out);
    };
    let quantity_at = |kind: &str, name: &str, q: &str, cpu: bool| {
        let field = format!("{path}.resources.{kind}.{name}");
        if cpu {
            quantity::milli_value(q).map_err(|e| refuse(field, e))
        } else {
            quantity::value(q).map_err(|e| refuse(field, e))
        }
    };
    if let Some(limits) = &resources.limits {
        if let Some(memory) = limits.get("memory") {
            out.memory_bytes = Some(quantity_at("limits", "memory", &memory.0, false)?);
        }
        if let Some(cpu) = limits.get("cpu") {
            out.cpu_limit_millis = Some(quantity_at("limits", "cpu", &cpu.0, true)?);
        }
    }
    let requests = resources.requests.as_ref();
    // A request defaults to the limit, as the API server would have set it.
    match requests.and_then(|r| r.get("cpu")) {
        Some(cpu) => out.cpu_request_millis = Some(quantity_at("requests", "cpu", &cpu.0, true)?),
        None => out.cpu_request_millis = out.cpu_limit_millis,
    }
    Ok(out)
}

/// Plans `container`, found at `path` of the pod (`spec.containers[0]`).
#[allow(clippy::too_many_arguments)]
pub fn plan_container(
    ctx: &PodContext<'_>,
    container: &Container,
    path: &str,
    image: &ImageConfiguration,
    lowers: &[PathBuf],
    cgroup: String,
    mounts: Vec<crate::spec::BindMount>,
) -> Result<ContainerPlan, PlanError> {
    let (env, defined) = environment(ctx, container, image, path)?;
    let args: Vec<String> = command_line(container, image)
        .iter()
        .map(|arg| expand(arg, &defined))
        .collect();
    if args.is_empty() {
        return Err(refuse(
            at(path, "command"),
            "neither the container nor its image says what to run",
        ));
    }
    let security = container.security_context.as_ref();
    let (uid, gid, additional_gids) = user(ctx, security, image, lowers, path)?;
    let cwd = container
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| {
            image
                .config()
                .as_ref()
                .and_then(|c| c.working_dir().clone())
                .filter(|d| !d.is_empty())
        })
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(refuse(at(path, "workingDir"), "must be an absolute path"));
    }
    let capabilities = security.and_then(|s| s.capabilities.as_ref());
    let mut add = Vec::new();
    for (i, name) in capabilities
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        add.push(capability(
            name,
            format!("{path}.securityContext.capabilities.add[{i}]"),
        )?);
    }
    let mut drop = Vec::new();
    let mut drop_all = false;
    for (i, name) in capabilities
        .and_then(|c| c.drop.clone())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if name.eq_ignore_ascii_case("ALL") {
            drop_all = true;
        } else {
            drop.push(capability(
                name,
                format!("{path}.securityContext.capabilities.drop[{i}]"),
            )?);
        }
    }
    let seccomp_type = security
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| {
            ctx.spec
                .security_context
                .as_ref()
                .and_then(|p| p.seccomp_profile.as_ref())
        })
        .map(|p| p.type_.as_str());
    let seccomp = match seccomp_type {
        None | Some("RuntimeDefault") => SeccompProfile::RuntimeDefault,
        Some("Unconfined") => SeccompProfile::Unconfined,
        Some(other) => {
            return Err(refuse(
                at(path, "securityContext.seccompProfile.type"),
                format!("{other:?} is not supported (RuntimeDefault or Unconfined)"),
            ));
        }
    };
    Ok(ContainerPlan {
        args,
        env,
        cwd,
        uid,
        gid,
        additional_gids,
        hostname: ctx.hostname.to_owned(),
        namespaces: ctx.namespaces.clone(),
        cgroup,
        resources: resources(container, path, ctx.pids_limit)?,
        readonly_root: security
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        privileged: security.and_then(|s| s.privileged).unwrap_or(false),
        add_capabilities: add,
        drop_capabilities: drop,
        drop_all_capabilities: drop_all,
        // Secure by default: `no_new_privs` unless escalation is asked for by name.
        no_new_privileges: security.and_then(|s| s.allow_privilege_escalation) != Some(true),
        seccomp,
        mounts,
        oom_score_adj: None,
        cgroup_namespace: false,
    })
}

/// Where `path` leads inside `root`, refusing `..` components (for `subPath`).
pub fn contained(root: &Path, path: &str, field: String) -> Result<PathBuf, PlanError> {
    let relative = Path::new(path);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(refuse(field, "must be a relative path without `..`"));
    }
    Ok(root.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{ConfigBuilder, ImageConfigurationBuilder};

    fn image(entrypoint: &[&str], cmd: &[&str], user: &str) -> ImageConfiguration {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ImageConfigurationBuilder::default()
            .config(
                ConfigBuilder::default()
                    .entrypoint(strings(entrypoint))
                    .cmd(strings(cmd))
                    .env(vec!["PATH=/bin".to_owned(), "FROM_IMAGE=1".to_owned()])
                    .user(user.to_owned())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn container(json: &str) -> Container {
        serde_json::from_str(json).unwrap()
    }

    fn context<'a>(
        identity: &'a PodIdentity,
        spec: &'a PodSpec,
        labels: &'a BTreeMap<String, String>,
        namespaces: &'a SharedNamespaces,
    ) -> PodContext<'a> {
        PodContext {
            identity,
            spec,
            labels,
            annotations: labels,
            node_name: "node-a",
            pod_ip: "",
            host_ip: "",
            namespaces,
            hostname: "web-0",
            pids_limit: Some(1024),
        }
    }

    fn plan(c: &Container, img: &ImageConfiguration) -> Result<ContainerPlan, PlanError> {
        let identity = PodIdentity {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "u1".into(),
        };
        let spec = PodSpec::default();
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let namespaces = SharedNamespaces {
            net: Some("/n".into()),
            ipc: Some("/i".into()),
            uts: Some("/u".into()),
        };
        let ctx = context(&identity, &spec, &labels, &namespaces);
        plan_container(
            &ctx,
            c,
            "spec.containers[0]",
            img,
            &[],
            "/cairn/p/c".into(),
            vec![],
        )
    }

    #[test]
    fn command_and_args_replace_entrypoint_and_cmd_as_in_kubernetes() {
        let img = image(&["/entry"], &["default"], "");
        let c = |json: &str| container(json);
        assert_eq!(
            command_line(&c(r#"{"name":"a"}"#), &img),
            ["/entry", "default"]
        );
        assert_eq!(
            command_line(&c(r#"{"name":"a","args":["x"]}"#), &img),
            ["/entry", "x"]
        );
        assert_eq!(
            command_line(&c(r#"{"name":"a","command":["/sh"]}"#), &img),
            ["/sh"]
        );
        assert_eq!(
            command_line(
                &c(r#"{"name":"a","command":["/sh"],"args":["-c","x"]}"#),
                &img
            ),
            ["/sh", "-c", "x"]
        );
    }

    #[test]
    fn env_references_expand_and_downward_fields_are_filled() {
        let img = image(&["/bin/sh"], &[], "");
        let c = container(
            r#"{"name":"a","command":["echo","$(GREETING)","$$(GREETING)","$(UNKNOWN)"],
               "env":[{"name":"WHO","valueFrom":{"fieldRef":{"fieldPath":"metadata.name"}}},
                      {"name":"GREETING","value":"hello $(WHO)"},
                      {"name":"APP","valueFrom":{"fieldRef":{"fieldPath":"metadata.labels['app']"}}},
                      {"name":"MEM","valueFrom":{"resourceFieldRef":{"resource":"limits.memory","divisor":"1Mi"}}}],
               "resources":{"limits":{"memory":"64Mi","cpu":"500m"}}}"#,
        );
        let plan = plan(&c, &img).unwrap();
        assert_eq!(
            plan.args,
            ["echo", "hello web-0", "$(GREETING)", "$(UNKNOWN)"]
        );
        for wanted in [
            "WHO=web-0",
            "GREETING=hello web-0",
            "APP=web",
            "MEM=64",
            "FROM_IMAGE=1",
        ] {
            assert!(
                plan.env.contains(&wanted.to_owned()),
                "{wanted} in {:?}",
                plan.env
            );
        }
        assert_eq!(plan.resources.memory_bytes, Some(64 << 20));
        assert_eq!(plan.resources.cpu_limit_millis, Some(500));
        assert_eq!(
            plan.resources.cpu_request_millis,
            Some(500),
            "request defaults to limit"
        );
        assert_eq!(plan.resources.pids, Some(1024));
        assert!(
            plan.no_new_privileges,
            "no_new_privs unless escalation is asked for"
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let img = image(&["/bin/sh"], &[], "");
        let bad_memory = container(r#"{"name":"a","resources":{"limits":{"memory":"lots"}}}"#);
        let err = plan(&bad_memory, &img).unwrap_err();
        assert_eq!(err.field, "spec.containers[0].resources.limits.memory");
        let bad_cap =
            container(r#"{"name":"a","securityContext":{"capabilities":{"add":["FLY"]}}}"#);
        let err = plan(&bad_cap, &img).unwrap_err();
        assert_eq!(
            err.field,
            "spec.containers[0].securityContext.capabilities.add[0]"
        );
        let root = container(r#"{"name":"a","securityContext":{"runAsNonRoot":true}}"#);
        let err = plan(&root, &img).unwrap_err();
        assert_eq!(err.field, "spec.containers[0].securityContext.runAsNonRoot");
        let nothing = image(&[], &[], "");
        let err = plan(&container(r#"{"name":"a"}"#), &nothing).unwrap_err();
        assert_eq!(err.field, "spec.containers[0].command");
    }

    #[test]
    fn users_come_from_the_security_context_or_the_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\nweb:x:33:34::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let lowers = vec![dir.path().to_owned()];
        let identity = PodIdentity::default();
        let spec = PodSpec::default();
        let labels = BTreeMap::new();
        let namespaces = SharedNamespaces {
            net: Some("/n".into()),
            ipc: Some("/i".into()),
            uts: Some("/u".into()),
        };
        let ctx = context(&identity, &spec, &labels, &namespaces);
        let by_name = image(&["/x"], &[], "web");
        assert_eq!(
            user(&ctx, None, &by_name, &lowers, "c").unwrap(),
            (33, 34, vec![])
        );
        let with_group = image(&["/x"], &[], "web:staff");
        assert_eq!(
            user(&ctx, None, &with_group, &lowers, "c").unwrap(),
            (33, 50, vec![])
        );
        let unknown = image(&["/x"], &[], "nobody");
        assert!(user(&ctx, None, &unknown, &lowers, "c").is_err());
        let security: SecurityContext =
            serde_json::from_str(r#"{"runAsUser":1000,"runAsGroup":2000}"#).unwrap();
        assert_eq!(
            user(&ctx, Some(&security), &by_name, &lowers, "c").unwrap(),
            (1000, 2000, vec![])
        );
    }

    #[test]
    fn sub_paths_cannot_climb_out() {
        let root = Path::new("/vol");
        assert_eq!(
            contained(root, "a/b", "f".into()).unwrap(),
            Path::new("/vol/a/b")
        );
        assert!(contained(root, "../etc", "f".into()).is_err());
        assert!(contained(root, "/etc", "f".into()).is_err());
    }
}
