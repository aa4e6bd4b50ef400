//! The filesystems PID 1 mounts at boot and takes down at shutdown.
//!
//! PID 1 only: a hosted node (`cairn node`) never mounts or unmounts anything.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use tracing::{debug, warn};

use crate::sys::Syscalls;

/// One filesystem of the early boot table.
#[derive(Debug, Clone, Copy)]
pub struct MountSpec {
    /// Where it goes.
    pub target: &'static str,
    /// Filesystem type, e.g. `proc`.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MsFlags,
    /// Filesystem options, e.g. `mode=0755`.
    pub data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// The early mounts, parents before children. `/proc` comes first so the mount
/// table can be read to skip what is already mounted.
pub const EARLY_MOUNTS: &[MountSpec] = &[
    MountSpec {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    MountSpec {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    MountSpec {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    MountSpec {
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    MountSpec {
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    MountSpec {
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
];

/// Symbolic links that programs expect under `/dev`.
const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// Why the early mounts failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A directory for a mount point could not be created.
    #[error("cannot create mount point {target}")]
    MountPoint {
        /// The mount point.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a mount.
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        /// The mount point.
        target: String,
        /// The filesystem type.
        fstype: String,
        /// The kernel's answer.
        #[source]
        source: Errno,
    },
    /// A cgroup knob could not be read or written.
    #[error("cannot set up cgroup controllers ({path})")]
    Cgroup {
        /// The file involved.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An entry of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The device or pseudo-filesystem name.
    pub source: String,
    /// The mount point.
    pub target: PathBuf,
    /// The filesystem type.
    pub fstype: String,
}

/// Parses `/proc/self/mounts`, decoding the octal escapes (`\040` for a space).
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let source = unescape(fields.next()?);
            let target = PathBuf::from(unescape(fields.next()?));
            let fstype = fields.next()?.to_owned();
            Some(MountEntry {
                source,
                target,
                fstype,
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if bytes[i] == b'\\'
            && let Some(value) = octal
        {
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts the early table, skipping what is already mounted, and adds the `/dev` links.
/// Returns the targets it mounted.
pub fn mount_early(sys: &dyn Syscalls) -> Result<Vec<&'static str>, MountError> {
    let mut mounted = Vec::new();
    let mut existing: Vec<PathBuf> = Vec::new();
    for spec in EARLY_MOUNTS {
        if existing.iter().any(|t| t == Path::new(spec.target)) {
            debug!(target = spec.target, "already mounted");
            continue;
        }
        let target = Path::new(spec.target);
        sys.create_dir_all(target)
            .map_err(|source| MountError::MountPoint {
                target: spec.target.to_owned(),
                source,
            })?;
        match sys.mount(spec.fstype, target, spec.fstype, spec.flags, spec.data) {
            Ok(()) => mounted.push(spec.target),
            Err(Errno::EBUSY) => debug!(target = spec.target, "already mounted (EBUSY)"),
            Err(source) => {
                return Err(MountError::Mount {
                    target: spec.target.to_owned(),
                    fstype: spec.fstype.to_owned(),
                    source,
                });
            }
        }
        if spec.target == "/proc"
            && let Ok(text) = sys.read_to_string(Path::new("/proc/self/mounts"))
        {
            existing = parse_mounts(&text).into_iter().map(|m| m.target).collect();
        }
    }
    for (target, link) in DEV_LINKS {
        if let Err(err) = sys.symlink(Path::new(target), Path::new(link))
            && err.kind() != std::io::ErrorKind::AlreadyExists
        {
            warn!(link, error = %err, "cannot create /dev link");
        }
    }
    Ok(mounted)
}

/// Enables every available cgroup v2 controller for the root's children, so pods and
/// services can get their own limits. Returns the controllers enabled.
pub fn enable_cgroup_controllers(sys: &dyn Syscalls) -> Result<Vec<String>, MountError> {
    let available = "/sys/fs/cgroup/cgroup.controllers";
    let control = "/sys/fs/cgroup/cgroup.subtree_control";
    let controllers: Vec<String> = sys
        .read_to_string(Path::new(available))
        .map_err(|source| MountError::Cgroup {
            path: available.to_owned(),
            source,
        })?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !controllers.is_empty() {
        let request = controllers
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ");
        sys.write(Path::new(control), &request)
            .map_err(|source| MountError::Cgroup {
                path: control.to_owned(),
                source,
            })?;
    }
    Ok(controllers)
}

/// The order in which to unmount at shutdown: deepest and latest first, never `/`.
pub fn unmount_order(mounts: &[MountEntry]) -> Vec<PathBuf> {
    mounts
        .iter()
        .rev()
        .map(|m| m.target.clone())
        .filter(|target| target != Path::new("/"))
        .collect()
}

/// What [`unmount_all`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnmountReport {
    /// Cleanly unmounted.
    pub unmounted: Vec<PathBuf>,
    /// Busy, so detached (lazily unmounted) instead.
    pub detached: Vec<PathBuf>,
    /// Could not be unmounted at all.
    pub failed: Vec<(PathBuf, Errno)>,
}

/// Unmounts everything but `/`, detaching what is still busy (PID 1's own console and
/// log descriptors keep `/dev` busy until the very end).
pub fn unmount_all(sys: &dyn Syscalls) -> UnmountReport {
    let mut report = UnmountReport::default();
    let Ok(text) = sys.read_to_string(Path::new("/proc/self/mounts")) else {
        return report;
    };
    for target in unmount_order(&parse_mounts(&text)) {
        match sys.umount(&target, false) {
            Ok(()) => report.unmounted.push(target),
            Err(Errno::EINVAL | Errno::ENOENT) => {} // already gone with its parent
            Err(_) => match sys.umount(&target, true) {
                Ok(()) => report.detached.push(target),
                Err(errno) => report.failed.push((target, errno)),
            },
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, RecordingSyscalls};

    fn mount_targets(calls: &[Call]) -> Vec<String> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, .. } => Some(target.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn early_mounts_proc_first_and_cgroup2_after_sys() {
        let sys = RecordingSyscalls::default();
        let mounted = mount_early(&sys).expect("mounts");
        let targets = mount_targets(&sys.calls());
        assert_eq!(targets[0], "/proc");
        let sys_at = targets.iter().position(|t| t == "/sys").unwrap();
        let cgroup_at = targets.iter().position(|t| t == "/sys/fs/cgroup").unwrap();
        assert!(sys_at < cgroup_at);
        assert_eq!(mounted.len(), EARLY_MOUNTS.len());
        for required in ["/dev", "/dev/pts", "/dev/shm", "/run", "/tmp"] {
            assert!(
                targets.iter().any(|t| t == required),
                "{required} not mounted"
            );
        }
    }

    #[test]
    fn already_mounted_filesystems_are_skipped() {
        let sys = RecordingSyscalls::default().with_file(
            "/proc/self/mounts",
            "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\ndevtmpfs /dev devtmpfs rw 0 0\n",
        );
        let mounted = mount_early(&sys).expect("mounts");
        assert!(!mounted.contains(&"/dev"));
        assert!(mounted.contains(&"/sys"));
    }

    #[test]
    fn a_refused_mount_names_target_and_type() {
        let sys = RecordingSyscalls::default().failing("/run", Errno::ENODEV);
        let err = mount_early(&sys).expect_err("run fails");
        let text = err.to_string();
        assert!(text.contains("/run") && text.contains("tmpfs"), "{text}");
    }

    #[test]
    fn cgroup_controllers_are_all_enabled_for_children() {
        let sys = RecordingSyscalls::default().with_file(
            "/sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        );
        let enabled = enable_cgroup_controllers(&sys).expect("controllers");
        assert_eq!(enabled, ["cpuset", "cpu", "io", "memory", "pids"]);
        assert!(sys.calls().contains(&Call::Write {
            path: "/sys/fs/cgroup/cgroup.subtree_control".into(),
            contents: "+cpuset +cpu +io +memory +pids".into(),
        }));
    }

    #[test]
    fn mount_table_escapes_are_decoded() {
        let entries = parse_mounts("tmpfs /run/with\\040space tmpfs rw 0 0\n");
        assert_eq!(entries[0].target, PathBuf::from("/run/with space"));
    }

    #[test]
    fn shutdown_unmounts_children_first_detaches_busy_and_keeps_root() {
        let sys = RecordingSyscalls::default()
            .with_file(
                "/proc/self/mounts",
                "rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\ndevtmpfs /dev devtmpfs rw 0 0\n\
                 devpts /dev/pts devpts rw 0 0\ntmpfs /run tmpfs rw 0 0\n",
            )
            .failing("/dev", Errno::EBUSY);
        let report = unmount_all(&sys);
        assert_eq!(
            report.unmounted,
            [
                PathBuf::from("/run"),
                PathBuf::from("/dev/pts"),
                PathBuf::from("/proc")
            ]
        );
        assert_eq!(report.detached, [PathBuf::from("/dev")]);
        assert!(report.failed.is_empty());
        assert!(
            !sys.calls()
                .iter()
                .any(|c| matches!(c, Call::Umount { target, .. } if target == "/"))
        );
    }
}
