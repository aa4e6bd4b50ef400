//! Pod sandboxes: the network, IPC and UTS namespaces a pod's containers share, kept
//! alive by bind mounts of their `nsfs` files (as `ip netns` does) instead of a pause
//! process, so they outlive any container and the runtime itself. The network
//! namespace starts with loopback only; the pod network (`cairn-net`) adds `eth0`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::spec::SharedNamespaces;
use crate::sys;

/// Why a sandbox could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A step failed.
    #[error("pod sandbox {dir}: {what}: {source}")]
    Step {
        /// The sandbox's directory.
        dir: PathBuf,
        /// The step.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The kinds of namespace a sandbox holds, with their `/proc/…/ns` names.
const KINDS: [&str; 3] = ["net", "ipc", "uts"];

/// A pod's namespaces, as files in its `ns` directory.
#[derive(Debug, Clone)]
pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    /// The sandbox whose namespace files live in `dir`.
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The namespace files containers join.
    pub fn namespaces(&self) -> SharedNamespaces {
        SharedNamespaces {
            net: Some(self.dir.join("net")),
            ipc: Some(self.dir.join("ipc")),
            uts: Some(self.dir.join("uts")),
        }
    }

    fn step(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
        let what = what.into();
        move |source| SandboxError::Step {
            dir: self.dir.clone(),
            what,
            source,
        }
    }

    /// Whether all three namespaces are in place (each file is an `nsfs` mount).
    pub fn exists(&self) -> bool {
        KINDS
            .iter()
            .all(|kind| is_mount_point(&self.dir.join(kind)))
    }

    /// Creates the namespaces (the UTS one named `hostname`, loopback up in the
    /// network one) unless they exist. Runs on a thread of its own: `unshare` changes
    /// only the calling thread, which ends afterwards.
    pub fn create(&self, hostname: &str) -> Result<SharedNamespaces, SandboxError> {
        if self.exists() {
            return Ok(self.namespaces());
        }
        // Leftovers of an interrupted attempt go first.
        self.destroy()?;
        std::fs::create_dir_all(&self.dir).map_err(self.step("creating the directory"))?;
        for kind in KINDS {
            std::fs::File::create(self.dir.join(kind))
                .map_err(self.step(format!("creating the {kind} file")))?;
        }
        let dir = self.dir.clone();
        let hostname = hostname.to_owned();
        let made = std::thread::spawn(move || -> Result<(), (String, std::io::Error)> {
            let fail = |what: &'static str| {
                move |errno: nix::errno::Errno| (what.to_owned(), errno.into())
            };
            nix::sched::unshare(
                CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
            )
            .map_err(fail("unshare"))?;
            nix::unistd::sethostname(&hostname).map_err(fail("setting the hostname"))?;
            sys::loopback_up().map_err(|err| ("bringing loopback up".to_owned(), err))?;
            for kind in KINDS {
                let source = format!("/proc/thread-self/ns/{kind}");
                nix::mount::mount(
                    Some(source.as_str()),
                    &dir.join(kind),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(fail("bind-mounting the namespace"))?;
            }
            Ok(())
        })
        .join();
        let result = match made {
            Ok(Ok(())) => Ok(self.namespaces()),
            Ok(Err((what, source))) => Err(SandboxError::Step {
                dir: self.dir.clone(),
                what,
                source,
            }),
            Err(_) => Err(SandboxError::Step {
                dir: self.dir.clone(),
                what: "the namespace thread panicked".into(),
                source: std::io::Error::other("panic"),
            }),
        };
        if result.is_err() {
            let _ = self.destroy();
        }
        result
    }

    /// Unmounts and removes the namespace files (the namespaces end with their last
    /// user); missing files are fine.
    pub fn destroy(&self) -> Result<(), SandboxError> {
        for kind in KINDS {
            let path = self.dir.join(kind);
            match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(errno) => {
                    return Err(SandboxError::Step {
                        dir: self.dir.clone(),
                        what: format!("unmounting {kind}"),
                        source: errno.into(),
                    });
                }
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.step(format!("removing {kind}"))(e)),
            }
        }
        Ok(())
    }
}

/// Whether `path` is a mount point (its device differs from its parent's, or it is
/// an `nsfs` bind mount, which `/proc/self/mountinfo` lists).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mountinfo(mount_point) == wanted)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(byte) = u8::from_str_radix(&digits, 8)
            {
                out.push(byte as char);
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    #[ignore = "needs root (namespaces, mounts)"]
    fn a_sandbox_holds_its_namespaces_until_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::at(&dir.path().join("ns"));
        let namespaces = sandbox.create("pod-a").unwrap();
        assert!(sandbox.exists());
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let net = namespaces.net.unwrap();
        let theirs = std::fs::metadata(&net).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            own.to_string_lossy(),
            format!("net:[{}]", theirs.ino()),
            "the pod has a network namespace of its own"
        );
        // Creating again keeps the same namespaces.
        sandbox.create("pod-a").unwrap();
        assert_eq!(std::fs::metadata(&net).unwrap().ino(), theirs.ino());
        sandbox.destroy().unwrap();
        assert!(!sandbox.exists());
        assert!(!net.exists());
    }
}
