//! Where containers' cgroups live and what the runtime reads from them itself: the
//! layout of the host (cgroup v2 unified, or v1 controllers as on hybrid hosts),
//! paths of pod and container cgroups, OOM-kill counters, the limits that were
//! applied, and removing a pod's cgroups. Creating cgroups and writing limits is
//! libcontainer's job (from the OCI spec's `linux.resources`).

use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One cgroup v2 hierarchy at `/sys/fs/cgroup` (a Cairn node).
    Unified,
    /// cgroup v1: a hierarchy per controller under `/sys/fs/cgroup/<controller>`
    /// (legacy and hybrid hosts; libcontainer uses v1 on both).
    Legacy,
}

impl CgroupLayout {
    /// The layout of this host.
    pub fn detect() -> Self {
        if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            CgroupLayout::Unified
        } else {
            CgroupLayout::Legacy
        }
    }

    /// The directory of `cgroup` (an absolute cgroup path such as `/cairn/pod…/c`) in
    /// the hierarchy of `controller` (ignored on unified hosts).
    pub fn dir(self, controller: &str, cgroup: &str) -> PathBuf {
        let relative = cgroup.trim_start_matches('/');
        match self {
            CgroupLayout::Unified => Path::new(CGROUP_ROOT).join(relative),
            CgroupLayout::Legacy => Path::new(CGROUP_ROOT).join(controller).join(relative),
        }
    }

    /// How many processes of `cgroup` the kernel's OOM killer has killed, if known.
    pub fn oom_kills(self, cgroup: &str) -> Option<u64> {
        let (file, key) = match self {
            CgroupLayout::Unified => ("memory.events", "oom_kill"),
            CgroupLayout::Legacy => ("memory.oom_control", "oom_kill"),
        };
        let text = std::fs::read_to_string(self.dir("memory", cgroup).join(file)).ok()?;
        keyed_value(&text, key)
    }

    /// The limits in force on `cgroup`, read back from its files.
    pub fn limits(self, cgroup: &str) -> io::Result<AppliedLimits> {
        let read = |controller: &str, file: &str| -> io::Result<String> {
            let path = self.dir(controller, cgroup).join(file);
            std::fs::read_to_string(&path)
                .map(|text| text.trim().to_owned())
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        let number = |text: String| -> Option<i64> { text.parse().ok() };
        Ok(match self {
            CgroupLayout::Unified => {
                let cpu_max = read("cpu", "cpu.max")?;
                let mut cpu = cpu_max.split_whitespace();
                AppliedLimits {
                    memory_bytes: number(read("memory", "memory.max")?),
                    cpu_quota_micros: cpu.next().and_then(|q| q.parse().ok()),
                    cpu_period_micros: cpu.next().and_then(|p| p.parse().ok()),
                    cpu_weight: number(read("cpu", "cpu.weight")?),
                    pids: number(read("pids", "pids.max")?),
                }
            }
            CgroupLayout::Legacy => {
                // v1 reports "no limit" as a huge page-rounded number.
                let memory = number(read("memory", "memory.limit_in_bytes")?)
                    .filter(|bytes| *bytes < i64::MAX / 2);
                AppliedLimits {
                    memory_bytes: memory,
                    cpu_quota_micros: number(read("cpu", "cpu.cfs_quota_us")?).filter(|q| *q > 0),
                    cpu_period_micros: number(read("cpu", "cpu.cfs_period_us")?),
                    cpu_weight: number(read("cpu", "cpu.shares")?),
                    pids: number(read("pids", "pids.max")?),
                }
            }
        })
    }

    /// Sends SIGKILL to every process in `cgroup` (and below, on cgroup v2); for
    /// containers whose shim is gone. A cgroup that does not exist is fine.
    pub fn kill_all(self, cgroup: &str) {
        if self == CgroupLayout::Unified {
            let kill = self.dir("", cgroup).join("cgroup.kill");
            if kill.exists() && std::fs::write(&kill, "1").is_ok() {
                return;
            }
        }
        for controller in ["pids", "memory", "cpu"] {
            let procs = self.dir(controller, cgroup).join("cgroup.procs");
            let Ok(text) = std::fs::read_to_string(&procs) else {
                continue;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return;
        }
    }

    /// Removes `cgroup` and everything below it, deepest first, in every hierarchy;
    /// a cgroup that does not exist is fine. Fails if one still holds processes.
    pub fn remove_tree(self, cgroup: &str) -> io::Result<()> {
        for root in self.dirs_of(cgroup)? {
            remove_dir_tree(&root)?;
        }
        Ok(())
    }

    /// The directories of `cgroup`: one, or one per v1 hierarchy.
    fn dirs_of(self, cgroup: &str) -> io::Result<Vec<PathBuf>> {
        Ok(match self {
            CgroupLayout::Unified => vec![self.dir("", cgroup)],
            CgroupLayout::Legacy => std::fs::read_dir(CGROUP_ROOT)?
                .filter_map(Result::ok)
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
                .map(|entry| entry.path().join(cgroup.trim_start_matches('/')))
                .collect(),
        })
    }

    /// Removes `cgroup` (in every hierarchy) if it has no child cgroups and no
    /// processes; an error (`EBUSY`, `ENOTEMPTY`) otherwise (with cgroup v1, the
    /// hierarchies before the failing one have lost their empty directory). Gone
    /// already is fine.
    pub fn remove_if_empty(self, cgroup: &str) -> io::Result<()> {
        for dir in self.dirs_of(cgroup)? {
            match std::fs::remove_dir(&dir) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Removes the cgroup directory `dir` after its child cgroups (cgroup directories
/// are removed with `rmdir`, never by deleting their files).
fn remove_dir_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dir_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("removing cgroup {}: {e}", dir.display()),
        )),
    }
}

/// The value of `key` in a `key value` per line cgroup file.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

/// Limits read back from a cgroup (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedLimits {
    /// `memory.max` / `memory.limit_in_bytes`.
    pub memory_bytes: Option<i64>,
    /// The quota of `cpu.max` / `cpu.cfs_quota_us`.
    pub cpu_quota_micros: Option<i64>,
    /// The period of `cpu.max` / `cpu.cfs_period_us`.
    pub cpu_period_micros: Option<i64>,
    /// `cpu.weight` on v2, `cpu.shares` on v1.
    pub cpu_weight: Option<i64>,
    /// `pids.max`.
    pub pids: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counters_are_read_from_either_file_format() {
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(1));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(3));
        assert_eq!(keyed_value("oom_kill_disable 0\n", "oom_kill"), None);
    }

    #[test]
    fn paths_follow_the_layout() {
        assert_eq!(
            CgroupLayout::Unified.dir("memory", "/cairn/p/c"),
            Path::new("/sys/fs/cgroup/cairn/p/c")
        );
        assert_eq!(
            CgroupLayout::Legacy.dir("memory", "/cairn/p/c"),
            Path::new("/sys/fs/cgroup/memory/cairn/p/c")
        );
    }

    #[test]
    fn removing_a_missing_tree_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        remove_dir_tree(&dir.path().join("absent")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        remove_dir_tree(&dir.path().join("a")).unwrap();
        assert!(!dir.path().join("a").exists());
    }
}
