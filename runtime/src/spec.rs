//! OCI runtime specs (`config.json` of a bundle) from a [`ContainerPlan`]: what one
//! container should be, already resolved from the pod spec and the image. Secure by
//! default as runc and containerd are: Docker's capability set, `no_new_privs`, the
//! `RuntimeDefault` seccomp profile, masked and read-only `/proc` paths, a read-only
//! `/sys`; `privileged` lifts all of that.

use std::path::PathBuf;

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_mounts,
};

use crate::seccomp;

/// The capabilities Docker and containerd give a container that asks for nothing.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The period of CPU quotas, as the kubelet sets it.
pub const CPU_PERIOD_MICROS: u64 = 100_000;

/// Paths the container's own `/proc` and `/sys` hide, as runc does.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of `/proc` the container may read but not write.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Which seccomp profile a container runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompProfile {
    /// The `RuntimeDefault` allowlist.
    #[default]
    RuntimeDefault,
    /// No filter.
    Unconfined,
}

/// cgroup limits of one container (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// `memory.max` in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU limit in millicores (becomes a quota per [`CPU_PERIOD_MICROS`]).
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (becomes shares / weight).
    pub cpu_request_millis: Option<i64>,
    /// `pids.max`.
    pub pids: Option<i64>,
}

impl Resources {
    /// CPU shares for a request, as the kubelet computes them (min 2, 1024 per core).
    pub fn cpu_shares(&self) -> Option<u64> {
        self.cpu_request_millis
            .map(|millis| ((millis.max(0) as u64) * 1024 / 1000).max(2))
    }

    /// The CFS quota for the limit (min 1 ms, as the kubelet).
    pub fn cpu_quota(&self) -> Option<i64> {
        self.cpu_limit_millis
            .map(|millis| (millis * CPU_PERIOD_MICROS as i64 / 1000).max(1000))
    }
}

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The host path.
    pub source: PathBuf,
    /// The path in the container.
    pub destination: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

/// The namespaces a container joins (the pod sandbox's), by their bind-mounted files;
/// `None` shares the node's (`hostNetwork`, `hostIPC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedNamespaces {
    /// The network namespace.
    pub net: Option<PathBuf>,
    /// The IPC namespace.
    pub ipc: Option<PathBuf>,
    /// The UTS namespace (holds the pod's hostname).
    pub uts: Option<PathBuf>,
}

/// Everything about one container the OCI spec is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// The user to run as.
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// The hostname (also set in the shared UTS namespace).
    pub hostname: String,
    /// The pod's namespaces.
    pub namespaces: SharedNamespaces,
    /// The container's cgroup (absolute cgroup path).
    pub cgroup: String,
    /// Its limits.
    pub resources: Resources,
    /// A read-only root file system.
    pub readonly_root: bool,
    /// All capabilities and devices, no seccomp, nothing masked.
    pub privileged: bool,
    /// Capabilities added to the default set.
    pub add_capabilities: Vec<Capability>,
    /// Capabilities dropped from it (`ALL` is every one).
    pub drop_capabilities: Vec<Capability>,
    /// Drop every default capability (`drop: [ALL]`).
    pub drop_all_capabilities: bool,
    /// `no_new_privs` (`allowPrivilegeEscalation: false` or the default).
    pub no_new_privileges: bool,
    /// The seccomp profile.
    pub seccomp: SeccompProfile,
    /// Bind mounts (volumes, `/etc/hosts`, …).
    pub mounts: Vec<BindMount>,
    /// `oom_score_adj` of the container's processes.
    pub oom_score_adj: Option<i32>,
    /// A cgroup namespace of its own, so `/sys/fs/cgroup` inside shows the
    /// container's cgroup as the root (cgroup v2 hosts, as containerd does).
    pub cgroup_namespace: bool,
}

/// Every capability the kernel knows (what `privileged` containers get).
fn all_capabilities() -> Vec<Capability> {
    use Capability::*;
    vec![
        AuditControl,
        AuditRead,
        AuditWrite,
        BlockSuspend,
        Bpf,
        CheckpointRestore,
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        IpcLock,
        IpcOwner,
        Kill,
        Lease,
        LinuxImmutable,
        MacAdmin,
        MacOverride,
        Mknod,
        NetAdmin,
        NetBindService,
        NetBroadcast,
        NetRaw,
        Perfmon,
        Setgid,
        Setfcap,
        Setpcap,
        Setuid,
        SysAdmin,
        SysBoot,
        SysChroot,
        SysModule,
        SysNice,
        SysPacct,
        SysPtrace,
        SysRawio,
        SysResource,
        SysTime,
        SysTtyConfig,
        Syslog,
        WakeAlarm,
    ]
}

impl ContainerPlan {
    /// The bounding (and effective, permitted) capability set.
    pub fn capabilities(&self) -> Vec<Capability> {
        if self.privileged {
            return all_capabilities();
        }
        let mut caps: Vec<Capability> = if self.drop_all_capabilities {
            Vec::new()
        } else {
            DEFAULT_CAPABILITIES.to_vec()
        };
        caps.retain(|cap| !self.drop_capabilities.contains(cap));
        for cap in &self.add_capabilities {
            if !caps.contains(cap) {
                caps.push(*cap);
            }
        }
        caps
    }

    /// The OCI runtime spec, with the root file system at `rootfs`.
    pub fn oci_spec(&self, rootfs: PathBuf) -> Result<Spec, OciSpecError> {
        let caps: std::collections::HashSet<Capability> = self.capabilities().into_iter().collect();
        let capabilities = LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps.clone())
            // The ambient and inheritable sets stay empty, as in containerd: a non-root
            // process gets no capabilities from them.
            .build()?;
        let process = ProcessBuilder::default()
            .terminal(false)
            .args(self.args.clone())
            .env(self.env.clone())
            .cwd(self.cwd.clone())
            .user(
                UserBuilder::default()
                    .uid(self.uid)
                    .gid(self.gid)
                    .additional_gids(self.additional_gids.clone())
                    .build()?,
            )
            .capabilities(capabilities)
            .no_new_privileges(self.no_new_privileges && !self.privileged)
            .oom_score_adj(self.oom_score_adj.unwrap_or(0))
            .build()?;

        let mut mounts: Vec<Mount> = get_default_mounts();
        if self.privileged {
            // A writable /sys for privileged containers, as runc.
            for mount in &mut mounts {
                if mount.destination().as_os_str() == "/sys"
                    || mount.destination().as_os_str() == "/sys/fs/cgroup"
                {
                    let options = mount.options().clone().map(|options| {
                        options
                            .into_iter()
                            .filter(|o| o != "ro")
                            .collect::<Vec<_>>()
                    });
                    mount.set_options(options);
                }
            }
        }
        for bind in &self.mounts {
            let mut options = vec!["rbind".to_owned(), "rprivate".to_owned()];
            options.push(if bind.readonly { "ro" } else { "rw" }.to_owned());
            mounts.push(
                MountBuilder::default()
                    .destination(bind.destination.clone())
                    .typ("bind")
                    .source(bind.source.clone())
                    .options(options)
                    .build()?,
            );
        }

        let mut namespaces = vec![
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()?,
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Mount)
                .build()?,
        ];
        if self.cgroup_namespace {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Cgroup)
                    .build()?,
            );
        }
        // A namespace left out is the node's own.
        for (typ, path) in [
            (LinuxNamespaceType::Network, &self.namespaces.net),
            (LinuxNamespaceType::Ipc, &self.namespaces.ipc),
            (LinuxNamespaceType::Uts, &self.namespaces.uts),
        ] {
            if let Some(path) = path {
                namespaces.push(
                    LinuxNamespaceBuilder::default()
                        .typ(typ)
                        .path(path.clone())
                        .build()?,
                );
            }
        }

        let mut resources = LinuxResourcesBuilder::default();
        if let Some(bytes) = self.resources.memory_bytes {
            // No swap beyond the limit, as the kubelet.
            resources = resources.memory(
                LinuxMemoryBuilder::default()
                    .limit(bytes)
                    .swap(bytes)
                    .build()?,
            );
        }
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(quota) = self.resources.cpu_quota() {
            cpu = cpu.quota(quota).period(CPU_PERIOD_MICROS);
        }
        if let Some(shares) = self.resources.cpu_shares() {
            cpu = cpu.shares(shares);
        }
        resources = resources.cpu(cpu.build()?);
        if let Some(pids) = self.resources.pids {
            resources = resources.pids(LinuxPidsBuilder::default().limit(pids).build()?);
        }

        let mut spec = Spec::default();
        // The hostname lives in the shared UTS namespace; a container on the node's
        // must not rename the node.
        spec.set_hostname(self.namespaces.uts.as_ref().map(|_| self.hostname.clone()));
        spec.set_process(Some(process));
        spec.set_root(Some(
            RootBuilder::default()
                .path(rootfs)
                .readonly(self.readonly_root)
                .build()?,
        ));
        spec.set_mounts(Some(mounts));
        if let Some(linux) = spec.linux_mut() {
            linux
                .set_namespaces(Some(namespaces))
                .set_cgroups_path(Some(PathBuf::from(&self.cgroup)))
                .set_resources(Some(resources.build()?));
            if self.privileged {
                linux.set_masked_paths(None).set_readonly_paths(None);
            } else {
                linux
                    .set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()))
                    .set_readonly_paths(Some(
                        READONLY_PATHS.iter().map(|p| p.to_string()).collect(),
                    ));
            }
            if self.seccomp == SeccompProfile::RuntimeDefault && !self.privileged {
                linux.set_seccomp(Some(seccomp::runtime_default(&self.capabilities())?));
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn plan() -> ContainerPlan {
        ContainerPlan {
            args: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: "pod".into(),
            namespaces: SharedNamespaces {
                net: Some("/ns/net".into()),
                ipc: Some("/ns/ipc".into()),
                uts: Some("/ns/uts".into()),
            },
            cgroup: "/cairn/p/c".into(),
            resources: Resources {
                memory_bytes: Some(64 << 20),
                cpu_limit_millis: Some(250),
                cpu_request_millis: Some(100),
                pids: Some(128),
            },
            readonly_root: false,
            privileged: false,
            add_capabilities: vec![],
            drop_capabilities: vec![],
            drop_all_capabilities: false,
            no_new_privileges: true,
            seccomp: SeccompProfile::RuntimeDefault,
            mounts: vec![],
            oom_score_adj: None,
            cgroup_namespace: true,
        }
    }

    #[test]
    fn the_default_spec_is_locked_down() {
        let spec = plan().oci_spec("rootfs".into()).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().unwrap();
        let bounding = caps.bounding().as_ref().unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        assert!(!bounding.contains(&Capability::SysAdmin));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some());
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_owned())
        );
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
        let cpu = resources.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(25_000));
        assert_eq!(cpu.shares(), Some(102));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 128);
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination().as_os_str() == "/sys")
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"ro".to_owned()));
    }

    #[test]
    fn privileged_lifts_the_defaults_and_capabilities_can_be_changed() {
        let mut privileged = plan();
        privileged.privileged = true;
        let spec = privileged.oci_spec("rootfs".into()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none() && linux.masked_paths().is_none());
        assert!(privileged.capabilities().contains(&Capability::SysAdmin));

        let mut changed = plan();
        changed.drop_all_capabilities = true;
        changed.add_capabilities = vec![Capability::NetAdmin];
        assert_eq!(changed.capabilities(), vec![Capability::NetAdmin]);
        changed.drop_all_capabilities = false;
        changed.drop_capabilities = vec![Capability::Chown];
        assert!(!changed.capabilities().contains(&Capability::Chown));
    }
}
