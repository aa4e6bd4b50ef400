//! Requests to power off or reboot, from signals and from the ACPI power button.
//!
//! PID 1: SIGTERM and SIGPWR mean an orderly power-off, SIGINT (Ctrl-Alt-Del, once the
//! kernel's own handling is disabled) an orderly reboot, and a press of the power
//! button (QEMU's `system_powerdown`) a power-off. A hosted node treats SIGTERM and
//! SIGINT (Ctrl-C) as "stop".

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// What to do with the machine once everything is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Power off (a hosted node just exits).
    PowerOff,
    /// Restart the machine.
    Reboot,
}

impl std::fmt::Display for PowerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerAction::PowerOff => "power-off",
            PowerAction::Reboot => "reboot",
        })
    }
}

/// A request to shut down, and what asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerRequest {
    /// What to do.
    pub action: PowerAction,
    /// Who asked, for the log (`SIGTERM`, `power button`).
    pub cause: String,
}

/// Listens for the shutdown signals and forwards them as requests. Must be called
/// early: until a handler exists the kernel drops these signals for PID 1.
pub fn listen_for_signals(
    requests: mpsc::UnboundedSender<PowerRequest>,
    pid1: bool,
) -> std::io::Result<()> {
    let reboot_on_interrupt = if pid1 {
        PowerAction::Reboot
    } else {
        PowerAction::PowerOff
    };
    let table = [
        (SignalKind::terminate(), "SIGTERM", PowerAction::PowerOff),
        (
            SignalKind::from_raw(nix::sys::signal::Signal::SIGPWR as i32),
            "SIGPWR",
            PowerAction::PowerOff,
        ),
        (SignalKind::interrupt(), "SIGINT", reboot_on_interrupt),
    ];
    for (kind, name, action) in table {
        let mut stream = signal(kind)?;
        let requests = requests.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                info!(signal = name, %action, "shutdown requested");
                let request = PowerRequest {
                    action,
                    cause: name.to_owned(),
                };
                if requests.send(request).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// The size of `struct input_event` on 64-bit Linux: a 16-byte timeval, type, code, value.
const INPUT_EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Whether an `input_event` record is a press of the power key.
pub fn is_power_press(record: &[u8; INPUT_EVENT_SIZE]) -> bool {
    let kind = u16::from_ne_bytes([record[16], record[17]]);
    let code = u16::from_ne_bytes([record[18], record[19]]);
    let value = i32::from_ne_bytes([record[20], record[21], record[22], record[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// The `/dev/input/eventN` nodes of every input device named "Power Button" under a
/// sysfs `class/input` directory.
pub fn find_power_buttons(class_input: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(class_input) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("event") {
            continue;
        }
        let device_name = fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if device_name.trim() == "Power Button" {
            found.push(Path::new("/dev/input").join(name.as_ref()));
        }
    }
    found.sort();
    found
}

/// Watches the ACPI power button(s) on blocking threads and forwards presses as
/// power-off requests. Returns how many buttons are watched.
pub fn watch_power_buttons(requests: mpsc::UnboundedSender<PowerRequest>) -> usize {
    let buttons = find_power_buttons(Path::new("/sys/class/input"));
    for device in &buttons {
        let device = device.clone();
        let requests = requests.clone();
        let spawned = std::thread::Builder::new()
            .name("power-button".into())
            .spawn(move || {
                let mut file = match File::open(&device) {
                    Ok(file) => file,
                    Err(err) => {
                        warn!(device = %device.display(), error = %err, "cannot open power button");
                        return;
                    }
                };
                let mut record = [0u8; INPUT_EVENT_SIZE];
                while file.read_exact(&mut record).is_ok() {
                    if is_power_press(&record) {
                        info!(device = %device.display(), "power button pressed");
                        let request = PowerRequest {
                            action: PowerAction::PowerOff,
                            cause: "power button".to_owned(),
                        };
                        if requests.send(request).is_err() {
                            return;
                        }
                    }
                }
            });
        if let Err(err) = spawned {
            warn!(error = %err, "cannot start the power button thread");
        }
    }
    buttons.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u16, code: u16, value: i32) -> [u8; INPUT_EVENT_SIZE] {
        let mut r = [0u8; INPUT_EVENT_SIZE];
        r[16..18].copy_from_slice(&kind.to_ne_bytes());
        r[18..20].copy_from_slice(&code.to_ne_bytes());
        r[20..24].copy_from_slice(&value.to_ne_bytes());
        r
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&record(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&record(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&record(EV_KEY, 30, 1)), "another key");
        assert!(!is_power_press(&record(0, 0, 0)), "sync event");
    }

    #[test]
    fn power_buttons_are_found_by_device_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (event, name) in [
            ("event0", "Power Button"),
            ("event1", "AT Translated Set 2 keyboard"),
        ] {
            let device = dir.path().join(event).join("device");
            fs::create_dir_all(&device).expect("mkdir");
            fs::write(device.join("name"), format!("{name}\n")).expect("write");
        }
        assert_eq!(
            find_power_buttons(dir.path()),
            [PathBuf::from("/dev/input/event0")]
        );
    }
}
