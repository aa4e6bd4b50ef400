//! Pod volumes on the node, under `<pod>/volumes/<name>`: `emptyDir` (on disk, or a
//! tmpfs for `medium: Memory`), `hostPath` (with its `type` checks), `configMap`,
//! `secret` (always on a tmpfs, never on disk), `downwardAPI` and `projected`
//! (configMap, secret, downwardAPI and service-account-token sources), plus the
//! containers' `volumeMounts` (with `subPath`) as bind mounts. The contents of
//! config maps and secrets come from the caller (the node agent reads them from the
//! API); the runtime never talks to the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, PodSpec, Secret, Volume,
};
use nix::mount::{MntFlags, MsFlags};

use crate::plan::{PlanError, PodContext, contained};
use crate::quantity;
use crate::sandbox::is_mount_point;
use crate::spec::BindMount;

/// What the node agent resolved for a pod's volumes.
#[derive(Debug, Clone, Default)]
pub struct PodSources {
    /// Config maps of the pod's namespace, by name.
    pub config_maps: BTreeMap<String, ConfigMap>,
    /// Secrets of the pod's namespace, by name.
    pub secrets: BTreeMap<String, Secret>,
    /// The pod's service-account token, for projected token sources.
    pub service_account_token: Option<String>,
}

/// Reads a pod's sources again before its setup is retried, so that a config map or
/// secret created after the pod (or a token that has run out) is seen, as the
/// kubelet's volume manager reads them again on every attempt.
pub trait SourceReader: Send + Sync {
    /// The pod's sources as the API has them now; the error says why they could not
    /// be read (the previous sources are kept).
    fn read(&self) -> Pin<Box<dyn Future<Output = Result<PodSources, String>> + Send + '_>>;
}

/// A shared [`SourceReader`], as a [`crate::runtime::PodRequest`] carries it.
#[derive(Clone)]
pub struct SourceRefresh(pub Arc<dyn SourceReader>);

impl std::fmt::Debug for SourceRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceRefresh")
    }
}

/// The names of the config maps `spec`'s volumes project (`configMap` volumes and
/// `projected` config map sources).
pub fn referenced_config_maps(spec: &PodSpec) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for volume in spec.volumes.iter().flatten() {
        if let Some(source) = &volume.config_map {
            names.insert(source.name.clone());
        }
        let projected = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in projected.into_iter().flatten() {
            if let Some(map) = &source.config_map {
                names.insert(map.name.clone());
            }
        }
    }
    names
}

/// A pod volume prepared on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    /// Where it is on the node.
    pub path: PathBuf,
    /// Whether containers always get it read-only (config maps, secrets, …).
    pub always_readonly: bool,
}

fn refuse(field: String, reason: impl ToString) -> PlanError {
    PlanError {
        field,
        reason: reason.to_string(),
    }
}

fn io(field: &str, what: &str, path: &Path, err: impl std::fmt::Display) -> PlanError {
    refuse(
        field.to_owned(),
        format!("{what} {}: {err}", path.display()),
    )
}

/// Mounts a tmpfs on `dir` unless one is there already.
fn tmpfs(dir: &Path, size: Option<i64>, field: &str) -> Result<(), PlanError> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let options = match size {
        Some(bytes) => format!("mode=0755,size={bytes}"),
        None => "mode=0755".to_owned(),
    };
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|err| io(field, "mounting a tmpfs on", dir, err))
}

/// Writes the files of a volume (`path` → bytes, mode) into `dir`, removing files of
/// an earlier version that are gone.
fn write_files(dir: &Path, files: &[(String, Vec<u8>, u32)], field: &str) -> Result<(), PlanError> {
    for (relative, bytes, mode) in files {
        let path = contained(dir, relative, format!("{field}.items"))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(field, "creating", parent, e))?;
        }
        let staged = path.with_extension("cairn-partial");
        std::fs::write(&staged, bytes).map_err(|e| io(field, "writing", &staged, e))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(*mode))
            .map_err(|e| io(field, "setting the mode of", &staged, e))?;
        std::fs::rename(&staged, &path).map_err(|e| io(field, "renaming", &staged, e))?;
    }
    Ok(())
}

/// The files a config map or secret projects: every key, or the listed `items`.
fn key_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
    field: &str,
) -> Result<Vec<(String, Vec<u8>, u32)>, PlanError> {
    match items {
        None => Ok(data
            .iter()
            .map(|(key, bytes)| (key.clone(), bytes.clone(), default_mode))
            .collect()),
        Some(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let bytes = data.get(&item.key).ok_or_else(|| {
                    refuse(
                        format!("{field}.items[{i}].key"),
                        format!("{what} has no key {:?}", item.key),
                    )
                })?;
                let mode = item.mode.map_or(default_mode, |m| m as u32);
                Ok((item.path.clone(), bytes.clone(), mode))
            })
            .collect(),
    }
}

fn config_map_data(map: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = map
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (key, bytes) in map.binary_data.iter().flatten() {
        data.insert(key.clone(), bytes.0.clone());
    }
    data
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (key, text) in secret.string_data.iter().flatten() {
        data.insert(key.clone(), text.clone().into_bytes());
    }
    data
}

/// The files of downward-API items.
fn downward_files(
    ctx: &PodContext<'_>,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    field: &str,
) -> Result<Vec<(String, Vec<u8>, u32)>, PlanError> {
    let mut files = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mode = item.mode.map_or(default_mode, |m| m as u32);
        let value = if let Some(field_ref) = &item.field_ref {
            match field_ref.field_path.as_str() {
                "metadata.labels" => format_map(ctx.labels),
                "metadata.annotations" => format_map(ctx.annotations),
                "metadata.name" => ctx.identity.name.clone(),
                "metadata.namespace" => ctx.identity.namespace.clone(),
                "metadata.uid" => ctx.identity.uid.clone(),
                other => {
                    return Err(refuse(
                        format!("{field}.items[{i}].fieldRef.fieldPath"),
                        format!("{other:?} is not offered in downward-API volumes"),
                    ));
                }
            }
        } else {
            return Err(refuse(
                format!("{field}.items[{i}]"),
                "only fieldRef items are supported in downward-API volumes",
            ));
        };
        files.push((item.path.clone(), value.into_bytes(), mode));
    }
    Ok(files)
}

/// `key="value"` lines, as the kubelet writes labels and annotations.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect::<String>()
}

/// Prepares (or refreshes) every volume of the pod under `root`
/// (`<pod>/volumes`).
pub fn prepare(
    root: &Path,
    ctx: &PodContext<'_>,
    sources: &PodSources,
) -> Result<BTreeMap<String, PreparedVolume>, PlanError> {
    let mut prepared = BTreeMap::new();
    for (index, volume) in ctx.spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{index}]");
        let volume_dir = contained(root, &volume.name, format!("{field}.name"))?;
        prepared.insert(
            volume.name.clone(),
            prepare_one(&volume_dir, volume, ctx, sources, &field)?,
        );
    }
    Ok(prepared)
}

fn prepare_one(
    dir: &Path,
    volume: &Volume,
    ctx: &PodContext<'_>,
    sources: &PodSources,
    field: &str,
) -> Result<PreparedVolume, PlanError> {
    let make_dir = || std::fs::create_dir_all(dir).map_err(|e| io(field, "creating", dir, e));
    let local = |always_readonly| PreparedVolume {
        path: dir.to_owned(),
        always_readonly,
    };
    if let Some(empty) = &volume.empty_dir {
        make_dir()?;
        if empty.medium.as_deref() == Some("Memory") {
            let size = empty
                .size_limit
                .as_ref()
                .map(|q| quantity::value(&q.0))
                .transpose()
                .map_err(|e| refuse(format!("{field}.emptyDir.sizeLimit"), e))?;
            tmpfs(dir, size, field)?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| io(field, "setting the mode of", dir, e))?;
        return Ok(local(false));
    }
    if let Some(host) = &volume.host_path {
        return host_path(&host.path, host.type_.as_deref().unwrap_or(""), field);
    }
    if let Some(source) = &volume.config_map {
        make_dir()?;
        let field = format!("{field}.configMap");
        let default_mode = source.default_mode.map_or(0o644, |m| m as u32);
        match sources.config_maps.get(&source.name) {
            Some(map) => write_files(
                dir,
                &key_files(
                    &config_map_data(map),
                    source.items.as_ref(),
                    default_mode,
                    &format!("config map {:?}", source.name),
                    &field,
                )?,
                &field,
            )?,
            None if source.optional == Some(true) => {}
            None => {
                return Err(refuse(
                    format!("{field}.name"),
                    format!("config map {:?} not found", source.name),
                ));
            }
        }
        return Ok(local(true));
    }
    if let Some(source) = &volume.secret {
        make_dir()?;
        let field = format!("{field}.secret");
        // Secrets never touch the disk.
        tmpfs(dir, None, &field)?;
        let name = source.secret_name.clone().unwrap_or_default();
        let default_mode = source.default_mode.map_or(0o644, |m| m as u32);
        match sources.secrets.get(&name) {
            Some(secret) => write_files(
                dir,
                &key_files(
                    &secret_data(secret),
                    source.items.as_ref(),
                    default_mode,
                    &format!("secret {name:?}"),
                    &field,
                )?,
                &field,
            )?,
            None if source.optional == Some(true) => {}
            None => {
                return Err(refuse(
                    format!("{field}.secretName"),
                    format!("secret {name:?} not found"),
                ));
            }
        }
        return Ok(local(true));
    }
    if let Some(source) = &volume.downward_api {
        make_dir()?;
        let field = format!("{field}.downwardAPI");
        let default_mode = source.default_mode.map_or(0o644, |m| m as u32);
        let files = downward_files(
            ctx,
            source.items.as_deref().unwrap_or_default(),
            default_mode,
            &field,
        )?;
        write_files(dir, &files, &field)?;
        return Ok(local(true));
    }
    if let Some(projected) = &volume.projected {
        make_dir()?;
        let field = format!("{field}.projected");
        // May hold secrets and tokens: memory only.
        tmpfs(dir, None, &field)?;
        let default_mode = projected.default_mode.map_or(0o644, |m| m as u32);
        let mut files = Vec::new();
        for (i, source) in projected.sources.iter().flatten().enumerate() {
            let field = format!("{field}.sources[{i}]");
            if let Some(map) = &source.config_map {
                match sources.config_maps.get(&map.name) {
                    Some(found) => files.extend(key_files(
                        &config_map_data(found),
                        map.items.as_ref(),
                        default_mode,
                        &format!("config map {:?}", map.name),
                        &format!("{field}.configMap"),
                    )?),
                    None if map.optional == Some(true) => {}
                    None => {
                        return Err(refuse(
                            format!("{field}.configMap.name"),
                            format!("config map {:?} not found", map.name),
                        ));
                    }
                }
            } else if let Some(secret) = &source.secret {
                match sources.secrets.get(&secret.name) {
                    Some(found) => files.extend(key_files(
                        &secret_data(found),
                        secret.items.as_ref(),
                        default_mode,
                        &format!("secret {:?}", secret.name),
                        &format!("{field}.secret"),
                    )?),
                    None if secret.optional == Some(true) => {}
                    None => {
                        return Err(refuse(
                            format!("{field}.secret.name"),
                            format!("secret {:?} not found", secret.name),
                        ));
                    }
                }
            } else if let Some(downward) = &source.downward_api {
                files.extend(downward_files(
                    ctx,
                    downward.items.as_deref().unwrap_or_default(),
                    default_mode,
                    &format!("{field}.downwardAPI"),
                )?);
            } else if let Some(token) = &source.service_account_token {
                let value = sources.service_account_token.clone().ok_or_else(|| {
                    refuse(
                        format!("{field}.serviceAccountToken"),
                        "no service-account token was issued for this pod",
                    )
                })?;
                files.push((token.path.clone(), value.into_bytes(), default_mode));
            } else {
                return Err(refuse(field, "no supported projection source"));
            }
        }
        write_files(dir, &files, &field)?;
        return Ok(local(true));
    }
    Err(refuse(
        field.to_owned(),
        "volume type not supported on Cairn nodes (emptyDir, hostPath, configMap, secret, \
         downwardAPI and projected are)",
    ))
}

/// Checks (or creates) a `hostPath` as its `type` says.
fn host_path(path: &str, kind: &str, field: &str) -> Result<PreparedVolume, PlanError> {
    let host = PathBuf::from(path);
    let field_type = format!("{field}.hostPath.type");
    if !host.is_absolute() {
        return Err(refuse(format!("{field}.hostPath.path"), "must be absolute"));
    }
    let meta = std::fs::metadata(&host);
    use std::os::unix::fs::FileTypeExt;
    let problem = match kind {
        "" => None,
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(&host)
                    .map_err(|e| io(&field_type, "creating", &host, e))?;
                std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| io(&field_type, "setting the mode of", &host, e))?;
                None
            } else {
                (!host.is_dir()).then_some("exists but is not a directory")
            }
        }
        "Directory" => (!host.is_dir()).then_some("is not an existing directory"),
        "FileOrCreate" => {
            if meta.is_err() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&host)
                    .map_err(|e| io(&field_type, "creating", &host, e))?;
                None
            } else {
                (!host.is_file()).then_some("exists but is not a file")
            }
        }
        "File" => (!host.is_file()).then_some("is not an existing file"),
        "Socket" => {
            (!meta.as_ref().is_ok_and(|m| m.file_type().is_socket())).then_some("is not a socket")
        }
        "CharDevice" => (!meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()))
            .then_some("is not a character device"),
        "BlockDevice" => (!meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()))
            .then_some("is not a block device"),
        other => {
            return Err(refuse(
                field_type,
                format!("{other:?} is not a hostPath type"),
            ));
        }
    };
    if let Some(problem) = problem {
        return Err(refuse(field_type, format!("{path} {problem}")));
    }
    Ok(PreparedVolume {
        path: host,
        always_readonly: false,
    })
}

/// The volumes of `spec` as already prepared under `root` (after a runtime restart,
/// when the config maps and secrets are not at hand): paths only, nothing written.
pub fn existing(
    root: &Path,
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> Result<BTreeMap<String, PreparedVolume>, PlanError> {
    let mut found = BTreeMap::new();
    for (index, volume) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{index}]");
        let prepared = match &volume.host_path {
            Some(host) => PreparedVolume {
                path: PathBuf::from(&host.path),
                always_readonly: false,
            },
            None => {
                let path = contained(root, &volume.name, format!("{field}.name"))?;
                if !path.is_dir() {
                    return Err(refuse(field, "was never prepared on this node"));
                }
                PreparedVolume {
                    path,
                    always_readonly: volume.empty_dir.is_none(),
                }
            }
        };
        found.insert(volume.name.clone(), prepared);
    }
    Ok(found)
}

/// The bind mounts of `container`'s `volumeMounts` (at `path` in the pod spec).
pub fn container_mounts(
    container: &Container,
    path: &str,
    volumes: &BTreeMap<String, PreparedVolume>,
) -> Result<Vec<BindMount>, PlanError> {
    let mut mounts = Vec::new();
    for (i, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let field = format!("{path}.volumeMounts[{i}]");
        let volume = volumes.get(&mount.name).ok_or_else(|| {
            refuse(
                format!("{field}.name"),
                format!("the pod has no volume {:?}", mount.name),
            )
        })?;
        if !mount.mount_path.starts_with('/') {
            return Err(refuse(format!("{field}.mountPath"), "must be absolute"));
        }
        let source = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let source = contained(&volume.path, sub, format!("{field}.subPath"))?;
                if !source.exists() {
                    std::fs::create_dir_all(&source)
                        .map_err(|e| io(&field, "creating", &source, e))?;
                }
                source
            }
            None => volume.path.clone(),
        };
        mounts.push(BindMount {
            source,
            destination: PathBuf::from(&mount.mount_path),
            readonly: volume.always_readonly || mount.read_only == Some(true),
        });
    }
    Ok(mounts)
}

/// Unmounts the tmpfs volumes under `root` and removes the pod's volume directories
/// (never a `hostPath`'s contents: those are not under `root`).
pub fn remove(root: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if is_mount_point(&path) {
            nix::mount::umount2(&path, MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
        }
    }
    std::fs::remove_dir_all(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PodIdentity;
    use crate::spec::SharedNamespaces;
    use k8s_openapi::api::core::v1::PodSpec;

    fn with_context<T>(spec: &PodSpec, f: impl FnOnce(&PodContext<'_>) -> T) -> T {
        let identity = PodIdentity {
            namespace: "ns".into(),
            name: "web".into(),
            uid: "u".into(),
        };
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let namespaces = SharedNamespaces {
            net: Some("/n".into()),
            ipc: Some("/i".into()),
            uts: Some("/u".into()),
        };
        f(&PodContext {
            identity: &identity,
            spec,
            labels: &labels,
            annotations: &labels,
            node_name: "n",
            pod_ip: "",
            host_ip: "",
            namespaces: &namespaces,
            hostname: "web",
            pids_limit: None,
        })
    }

    #[test]
    fn config_maps_downward_api_and_empty_dirs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let spec: PodSpec = serde_json::from_str(
            r#"{"containers":[],"volumes":[
                {"name":"conf","configMap":{"name":"settings","items":[{"key":"a","path":"sub/a.txt","mode":384}]}},
                {"name":"all","configMap":{"name":"settings"}},
                {"name":"info","downwardAPI":{"items":[{"path":"labels","fieldRef":{"fieldPath":"metadata.labels"}}]}},
                {"name":"scratch","emptyDir":{}}]}"#,
        )
        .unwrap();
        let map: ConfigMap =
            serde_json::from_str(r#"{"metadata":{"name":"settings"},"data":{"a":"1","b":"2"}}"#)
                .unwrap();
        let sources = PodSources {
            config_maps: BTreeMap::from([("settings".to_owned(), map)]),
            ..PodSources::default()
        };
        let prepared = with_context(&spec, |ctx| prepare(dir.path(), ctx, &sources)).unwrap();
        let conf = &prepared["conf"];
        assert!(conf.always_readonly);
        assert_eq!(
            std::fs::read_to_string(conf.path.join("sub/a.txt")).unwrap(),
            "1"
        );
        let mode = std::fs::metadata(conf.path.join("sub/a.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(prepared["all"].path.join("b")).unwrap(),
            "2"
        );
        assert_eq!(
            std::fs::read_to_string(prepared["info"].path.join("labels")).unwrap(),
            "app=\"web\"\n"
        );
        assert!(!prepared["scratch"].always_readonly);
        let container: Container = serde_json::from_str(
            r#"{"name":"c","volumeMounts":[{"name":"scratch","mountPath":"/data","subPath":"x"},
                {"name":"conf","mountPath":"/etc/conf"}]}"#,
        )
        .unwrap();
        let mounts = container_mounts(&container, "spec.containers[0]", &prepared).unwrap();
        assert_eq!(mounts[0].source, prepared["scratch"].path.join("x"));
        assert!(mounts[1].readonly);
    }

    #[test]
    fn missing_sources_and_bad_mounts_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let spec: PodSpec = serde_json::from_str(
            r#"{"containers":[],"volumes":[{"name":"conf","configMap":{"name":"absent"}}]}"#,
        )
        .unwrap();
        let err = with_context(&spec, |ctx| {
            prepare(dir.path(), ctx, &PodSources::default())
        })
        .unwrap_err();
        assert_eq!(err.field, "spec.volumes[0].configMap.name");
        let optional: PodSpec = serde_json::from_str(
            r#"{"containers":[],"volumes":[{"name":"conf","configMap":{"name":"absent","optional":true}}]}"#,
        )
        .unwrap();
        with_context(&optional, |ctx| {
            prepare(dir.path(), ctx, &PodSources::default())
        })
        .unwrap();
        let container: Container = serde_json::from_str(
            r#"{"name":"c","volumeMounts":[{"name":"nope","mountPath":"/x"}]}"#,
        )
        .unwrap();
        let err = container_mounts(&container, "spec.containers[0]", &BTreeMap::new()).unwrap_err();
        assert_eq!(err.field, "spec.containers[0].volumeMounts[0].name");
        let missing_host = host_path("/definitely/not/here", "Directory", "spec.volumes[1]");
        assert_eq!(
            missing_host.unwrap_err().field,
            "spec.volumes[1].hostPath.type"
        );
    }
}
