//! The seam between the node role and the machine under it.
//!
//! As PID 1 ([`Host::Pid1`]) Cairn owns the machine: it mounts filesystems, loads
//! modules, signals every process, unmounts and calls `reboot(2)`. As a hosted node
//! ([`Host::Hosted`], `cairn node`) it is a guest on someone else's Linux: it touches
//! only the processes it started itself and ends by exiting. Every PID 1-only action
//! is a method here, so the rest of the code never asks "am I PID 1?".

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use crate::mounts;
use crate::power::PowerAction;
use crate::reaper::{Reaper, parse_stat_state_ppid};
use crate::sys::Syscalls;

/// Where the node runs.
#[derive(Clone)]
pub enum Host {
    /// PID 1 of the machine.
    Pid1 {
        /// The kernel interface (a fake in unit tests).
        sys: Arc<dyn Syscalls>,
    },
    /// An ordinary process on an existing host.
    Hosted,
}

impl Host {
    /// Whether this is PID 1 (for logs and phase skipping only).
    pub fn is_pid1(&self) -> bool {
        matches!(self, Host::Pid1 { .. })
    }

    /// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of rebooting at once (PID 1),
    /// or makes this process the reaper of its descendants' orphans (hosted).
    pub fn take_over_process_lifecycle(&self) {
        let result = match self {
            Host::Pid1 { .. } => set_cad_enabled(false),
            Host::Hosted => nix::sys::prctl::set_child_subreaper(true),
        };
        if let Err(errno) = result {
            warn!(%errno, "cannot take over Ctrl-Alt-Del / orphan reaping");
        }
    }

    /// Asks every remaining process to stop, waits up to `grace`, then kills what is
    /// left. PID 1 signals all processes; a hosted node only the ones it started.
    pub async fn terminate_processes(&self, reaper: &Reaper, grace: Duration) {
        let started = Instant::now();
        self.signal_all(reaper, Signal::SIGTERM);
        while started.elapsed() < grace {
            reaper.reap();
            if self.remaining(reaper) == 0 {
                info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "all processes ended"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.remaining(reaper);
        warn!(
            left,
            grace_ms = grace.as_millis() as u64,
            "processes ignored SIGTERM; killing them"
        );
        self.signal_all(reaper, Signal::SIGKILL);
        let killed_at = Instant::now();
        while killed_at.elapsed() < Duration::from_secs(2) && self.remaining(reaper) > 0 {
            reaper.reap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal_all(&self, reaper: &Reaper, signal: Signal) {
        match self {
            // -1: every process but PID 1 itself (and kernel threads, which ignore it).
            Host::Pid1 { .. } => {
                if let Err(errno) = kill(Pid::from_raw(-1), signal)
                    && errno != nix::errno::Errno::ESRCH
                {
                    warn!(%errno, %signal, "kill(-1) failed");
                }
            }
            Host::Hosted => {
                for pid in reaper.tracked() {
                    let _ = kill(Pid::from_raw(pid as i32), signal);
                }
            }
        }
    }

    fn remaining(&self, reaper: &Reaper) -> usize {
        match self {
            Host::Pid1 { .. } => count_user_processes(),
            Host::Hosted => reaper.tracked().len(),
        }
    }

    /// Flushes and unmounts everything (PID 1); nothing for a hosted node.
    pub fn sync_and_unmount(&self) {
        nix::unistd::sync();
        if let Host::Pid1 { sys } = self {
            let report = mounts::unmount_all(sys.as_ref());
            info!(
                unmounted = report.unmounted.len(),
                detached = report.detached.len(),
                failed = report.failed.len(),
                "filesystems unmounted"
            );
            for (target, errno) in &report.failed {
                warn!(target = %target.display(), %errno, "cannot unmount");
            }
            nix::unistd::sync();
        }
    }

    /// The end: `reboot(2)` for PID 1, which does not return; `Ok` for a hosted node,
    /// whose caller then exits.
    pub fn finish(&self, action: PowerAction) -> Result<(), nix::errno::Errno> {
        match self {
            Host::Pid1 { .. } => {
                let mode = match action {
                    PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
                    PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
                };
                let errno = match reboot(mode) {
                    Ok(never) => match never {},
                    Err(errno) => errno,
                };
                error!(%errno, %action, "reboot(2) failed; the machine stays up");
                Err(errno)
            }
            Host::Hosted => Ok(()),
        }
    }
}

/// Userspace processes other than PID 1: everything in `/proc` except PID 1, kthreadd
/// (PID 2) and its children, the kernel threads.
pub fn count_user_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| *pid > 2)
        .filter_map(|pid| {
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()
        })
        .filter_map(|stat| parse_stat_state_ppid(&stat))
        .filter(|(state, ppid)| *ppid != 2 && *state != 'Z')
        .count()
}
