//! The QEMU harness: boots Cairn images as typed guests and lets tests watch them.
//!
//! A [`Cluster`] is a group of VMs that share one L2 segment (QEMU multicast sockets
//! on the loopback of a network namespace the cluster creates, so nothing leaves the
//! machine) and one work directory. Each [`Vm`] gets its machine config through
//! fw_cfg, its serial console captured line by line with host timestamps into a log
//! file, and a QMP socket for the power button, Ctrl-Alt-Del and quitting.
//! [`Vm::wait_for`] waits for a console line; a kernel panic or QEMU exiting ends the
//! wait at once with the reason.
//!
//! Dropping a VM (or its cluster) kills its QEMU, also when the test failed. A failed
//! test keeps the logs and prints their tail, which `cargo test` shows with the
//! failure; a passing test removes them.

#![forbid(unsafe_code)]

pub mod configs;
pub mod qmp;
pub mod serial;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_image::Manifest;
use cairn_net::netns::NetNamespace;

use crate::qmp::Qmp;
use crate::serial::SerialLog;

/// The longest kernel command line x86 Linux keeps (`COMMAND_LINE_SIZE` less its NUL).
pub const KERNEL_CMDLINE_MAX: usize = 2047;

/// Everything that can go wrong while driving VMs.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The image directory has no usable manifest.
    #[error("no Cairn image at {dir} (build it with `cargo xtask image`)")]
    NoImage {
        /// Where it was looked for.
        dir: PathBuf,
        /// Why it is unusable.
        #[source]
        source: cairn_image::ImageError,
    },
    /// An I/O step failed.
    #[error("{what}")]
    Io {
        /// The step.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel command line is longer than the kernel keeps; the kernel would
    /// silently cut it short (and print nothing), so the harness refuses it.
    #[error(
        "{vm}: the kernel command line is {length} bytes, past the kernel's limit of {KERNEL_CMDLINE_MAX} (gzip a cairn.config= before base64)"
    )]
    CmdlineTooLong {
        /// The VM.
        vm: String,
        /// Its length in bytes.
        length: usize,
    },
    /// The network namespace could not be made.
    #[error("cannot create the test network namespace")]
    Namespace(#[source] cairn_net::NetError),
    /// The guest never printed the expected line.
    #[error("{vm}: no console line matching {pattern:?} within {timeout:?}; last lines:\n{tail}")]
    Timeout {
        /// The VM.
        vm: String,
        /// What was awaited.
        pattern: String,
        /// How long.
        timeout: Duration,
        /// The end of the console log.
        tail: String,
    },
    /// The guest kernel panicked.
    #[error("{vm}: kernel panic while waiting for {pattern:?}; last lines:\n{tail}")]
    KernelPanic {
        /// The VM.
        vm: String,
        /// What was awaited.
        pattern: String,
        /// The end of the console log.
        tail: String,
    },
    /// QEMU exited while we waited for a line.
    #[error("{vm}: QEMU exited ({status}) while waiting for {pattern:?}; last lines:\n{tail}")]
    Exited {
        /// The VM.
        vm: String,
        /// What was awaited.
        pattern: String,
        /// QEMU's exit status.
        status: String,
        /// The end of the console log.
        tail: String,
    },
    /// QEMU did not exit in time.
    #[error("{vm}: QEMU still running after {timeout:?}")]
    StillRunning {
        /// The VM.
        vm: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// A QMP command failed.
    #[error("{vm}: QMP {command} failed: {detail}")]
    Qmp {
        /// The VM.
        vm: String,
        /// The command.
        command: String,
        /// QEMU's answer or the transport error.
        detail: String,
    },
    /// An invalid regular expression was passed to `wait_for`.
    #[error("invalid pattern {0:?}")]
    Pattern(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// A built image: the manifest that `cargo xtask image` wrote.
#[derive(Debug, Clone)]
pub struct Image {
    /// Paths and kernel command line.
    pub manifest: Manifest,
}

impl Image {
    /// The image in `$CAIRN_IMAGE_DIR`, or else `<target dir>/cairn-image`.
    pub fn from_env() -> Result<Self, HarnessError> {
        let dir = std::env::var_os("CAIRN_IMAGE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("cairn-image"));
        Self::load(&dir)
    }

    /// The image in `dir`.
    pub fn load(dir: &Path) -> Result<Self, HarnessError> {
        let manifest = Manifest::read(dir).map_err(|source| HarnessError::NoImage {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Self { manifest })
    }
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, or `target/` at the workspace root.
pub fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    dir.canonicalize().unwrap_or(dir)
}

/// The first loopback port (in the cluster's namespace) forwarded to a VM's 6443;
/// VM `i` gets this plus `i`.
pub const KUBE_API_FORWARD_BASE: u16 = 16443;

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slow, works everywhere.
    Tcg,
    /// Hardware virtualisation, when `/dev/kvm` really works.
    Kvm,
}

impl Accel {
    /// `$CAIRN_QEMU_ACCEL` (`kvm` or `tcg`); TCG unless KVM is asked for, because a
    /// KVM boot was seen to hang on these machines.
    pub fn from_env() -> Self {
        match std::env::var("CAIRN_QEMU_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }

    fn qemu_name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// How a VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMedium {
    /// `-kernel vmlinux -initrd initramfs` (PVH: no firmware, no decompression).
    DirectKernel,
    /// The ISO, through SeaBIOS and GRUB.
    Iso,
}

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Name in logs and file names.
    pub name: String,
    /// Guest memory.
    pub memory_mib: u32,
    /// Kernel or ISO.
    pub boot: BootMedium,
    /// Machine config handed over through fw_cfg (`opt/cairn/machine.yaml`).
    pub fw_cfg_config: Option<String>,
    /// Extra kernel parameters (direct boot only).
    pub extra_cmdline: Vec<String>,
    /// Whether to attach a NIC on the cluster segment.
    pub nic: bool,
    /// Extra QEMU arguments (e.g. a user-mode management NIC).
    pub extra_args: Vec<String>,
    /// Attach an install disk of this many MiB (`/dev/vda`), kept across reboots.
    pub disk_mib: Option<u32>,
    /// Attach a management NIC (QEMU user network, restricted) whose DHCP-assigned
    /// address forwards the machine API from the cluster namespace's 127.0.0.1.
    pub management: bool,
}

impl VmSpec {
    /// A direct-kernel VM with 256 MiB, one NIC on the segment and no config.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            memory_mib: 256,
            boot: BootMedium::DirectKernel,
            fw_cfg_config: None,
            extra_cmdline: Vec::new(),
            nic: true,
            extra_args: Vec::new(),
            disk_mib: None,
            management: false,
        }
    }

    /// Hands `yaml` to the guest through fw_cfg.
    pub fn config(mut self, yaml: &str) -> Self {
        self.fw_cfg_config = Some(yaml.to_owned());
        self
    }

    /// Adds a kernel parameter.
    pub fn cmdline(mut self, param: &str) -> Self {
        self.extra_cmdline.push(param.to_owned());
        self
    }

    /// Gives the VM `mib` MiB of memory.
    pub fn memory(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Adds an install disk of `mib` MiB.
    pub fn disk(mut self, mib: u32) -> Self {
        self.disk_mib = Some(mib);
        self
    }

    /// Adds the management NIC that makes the machine API reachable from the test.
    pub fn management(mut self) -> Self {
        self.management = true;
        self
    }

    /// Boots from the ISO instead of the kernel.
    pub fn iso(mut self) -> Self {
        self.boot = BootMedium::Iso;
        self
    }
}

/// A group of VMs on one private L2 segment, with one work directory.
pub struct Cluster {
    name: String,
    dir: PathBuf,
    /// Short directory for Unix sockets (their paths must stay under 108 bytes).
    sockets: PathBuf,
    image: Image,
    accel: Accel,
    namespace: NetNamespace,
    mcast_port: u16,
    next_index: AtomicU16,
    vms: Mutex<BTreeMap<String, Arc<Mutex<Option<Child>>>>>,
}

impl Cluster {
    /// A cluster for test `name`: logs under `<target>/qemu-tests/<name>/`, VMs in a
    /// fresh network namespace (needs root).
    pub fn new(name: &str) -> Result<Self, HarnessError> {
        let image = Image::from_env()?;
        Self::with_image(name, image, target_dir().join("qemu-tests").join(name))
    }

    /// Like [`Cluster::new`], with an explicit image and work directory.
    pub fn with_image(name: &str, image: Image, dir: PathBuf) -> Result<Self, HarnessError> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(format!("cannot clean {}", dir.display())))?;
        }
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        static CLUSTERS: AtomicU16 = AtomicU16::new(0);
        let sockets = std::env::temp_dir().join(format!(
            "cairn-q{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&sockets)
            .map_err(io(format!("cannot create {}", sockets.display())))?;
        let namespace = NetNamespace::create().map_err(HarnessError::Namespace)?;
        Ok(Self {
            name: name.to_owned(),
            dir,
            sockets,
            image,
            accel: Accel::from_env(),
            namespace,
            // The namespace's loopback is ours alone, so any port will do.
            mcast_port: 47_000,
            next_index: AtomicU16::new(1),
            vms: Mutex::default(),
        })
    }

    /// The work directory (logs, sockets, configs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image the VMs boot.
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Runs `f` inside the cluster's network namespace (e.g. a client talking to a VM).
    pub fn in_namespace<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> Result<R, HarnessError> {
        self.namespace.run(f).map_err(HarnessError::Namespace)
    }

    /// Runs async client code inside the cluster's namespace, where the VMs' machine
    /// APIs are forwarded.
    pub fn in_namespace_async<F, Fut, R>(&self, f: F) -> Result<R, HarnessError>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        self.namespace.run_async(f).map_err(HarnessError::Namespace)
    }

    /// Boots a VM and connects to its console.
    pub fn start(&self, spec: VmSpec) -> Result<Vm, HarnessError> {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let vm_dir = self.dir.join(&spec.name);
        std::fs::create_dir_all(&vm_dir)
            .map_err(io(format!("cannot create {}", vm_dir.display())))?;
        let serial_socket = self.sockets.join(format!("{index}.serial"));
        let qmp_socket = self.sockets.join(format!("{index}.qmp"));
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-machine", &format!("pc,accel={}", self.accel.qemu_name())])
            .args(["-cpu", "max", "-smp", "1"])
            .args(["-m", &spec.memory_mib.to_string()])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ser0,path={},server=on,wait=on",
                serial_socket.display()
            ))
            .args(["-serial", "chardev:ser0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()));
        let manifest = &self.image.manifest;
        match spec.boot {
            BootMedium::DirectKernel => {
                let mut cmdline = manifest.cmdline.clone();
                for param in &spec.extra_cmdline {
                    cmdline.push(' ');
                    cmdline.push_str(param);
                }
                if cmdline.len() > KERNEL_CMDLINE_MAX {
                    return Err(HarnessError::CmdlineTooLong {
                        vm: spec.name.clone(),
                        length: cmdline.len(),
                    });
                }
                command
                    .arg("-kernel")
                    .arg(&manifest.vmlinux)
                    .arg("-initrd")
                    .arg(&manifest.initramfs)
                    .args(["-append", &cmdline]);
            }
            BootMedium::Iso => {
                let iso = manifest.iso.as_ref().ok_or_else(|| HarnessError::Io {
                    what: "the image has no ISO".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                })?;
                command.arg("-cdrom").arg(iso).args(["-boot", "d"]);
            }
        }
        if let Some(config) = &spec.fw_cfg_config {
            let path = vm_dir.join("machine.yaml");
            std::fs::write(&path, config)
                .map_err(io(format!("cannot write {}", path.display())))?;
            command.arg("-fw_cfg").arg(format!(
                "name=opt/cairn/machine.yaml,file={}",
                path.display()
            ));
        }
        if spec.nic {
            command
                .arg("-netdev")
                .arg(format!(
                    "socket,id=n0,mcast=230.0.0.1:{},localaddr=127.0.0.1",
                    self.mcast_port
                ))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=n0,mac={},romfile=",
                    mac_for(index)
                ));
        }
        let api_port = 50000 + index;
        let kube_api_port = KUBE_API_FORWARD_BASE + index;
        if spec.management {
            command
                .arg("-netdev")
                .arg(format!(
                    "user,id=mgmt,restrict=on,hostfwd=tcp:127.0.0.1:{api_port}-:50000,hostfwd=tcp:127.0.0.1:{kube_api_port}-:6443"
                ))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=mgmt,mac={},romfile=",
                    mac_for(index + 0x100)
                ));
        }
        if let Some(mib) = spec.disk_mib {
            let disk = vm_dir.join("disk.qcow2");
            if !disk.exists() {
                let status = Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2"])
                    .arg(&disk)
                    .arg(format!("{mib}M"))
                    .status()
                    .map_err(io("cannot run qemu-img (install qemu-utils)"))?;
                if !status.success() {
                    return Err(HarnessError::Io {
                        what: format!("qemu-img create failed ({status})"),
                        source: std::io::Error::other("qemu-img"),
                    });
                }
            }
            command
                .arg("-drive")
                .arg(format!("file={},if=virtio,format=qcow2", disk.display()));
        }
        command.args(&spec.extra_args);
        let stderr_path = vm_dir.join("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(io(format!("cannot create {}", stderr_path.display())))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);

        let started = Instant::now();
        let child = self
            .namespace
            .run(move || command.spawn())
            .map_err(HarnessError::Namespace)?
            .map_err(io(
                "cannot start qemu-system-x86_64 (install qemu-system-x86)",
            ))?;
        let child = Arc::new(Mutex::new(Some(child)));
        self.vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.name.clone(), Arc::clone(&child));
        let log_path = vm_dir.join("console.log");
        let serial = SerialLog::connect(&serial_socket, &log_path, started, &child).map_err(io(
            format!("{}: cannot connect to the serial console", spec.name),
        ))?;
        let qmp = Qmp::connect(&qmp_socket)
            .map_err(io(format!("{}: cannot connect to QMP", spec.name)))?;
        Ok(Vm {
            name: spec.name,
            api_address: spec.management.then(|| format!("127.0.0.1:{api_port}")),
            kube_api_address: spec
                .management
                .then(|| format!("127.0.0.1:{kube_api_port}")),
            mac: mac_for(index),
            started,
            child,
            serial,
            qmp: Mutex::new(qmp),
            log_path,
        })
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let vms = std::mem::take(&mut *self.vms.lock().unwrap_or_else(|p| p.into_inner()));
        for child in vms.values() {
            kill(child);
        }
        let _ = std::fs::remove_dir_all(&self.sockets);
        if std::thread::panicking() {
            eprintln!(
                "VM logs of the failed test are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn kill(child: &Mutex<Option<Child>>) {
    if let Some(mut child) = child.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A locally administered MAC for VM number `index` (52:54:00 is QEMU's prefix).
pub fn mac_for(index: u16) -> String {
    let [hi, lo] = index.to_be_bytes();
    format!("52:54:00:c0:{hi:02x}:{lo:02x}")
}

/// A running guest.
pub struct Vm {
    name: String,
    api_address: Option<String>,
    kube_api_address: Option<String>,
    mac: String,
    started: Instant,
    child: Arc<Mutex<Option<Child>>>,
    serial: SerialLog,
    qmp: Mutex<Qmp>,
    log_path: PathBuf,
}

impl Vm {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The machine API's address, reachable from inside the cluster's namespace
    /// (see [`Cluster::in_namespace_async`]); only with a management NIC.
    pub fn api_address(&self) -> &str {
        self.api_address.as_deref().unwrap_or("(no management NIC)")
    }

    /// The Kubernetes API server's address (control planes), reachable like
    /// [`Vm::api_address`]; only with a management NIC.
    pub fn kube_api_address(&self) -> &str {
        self.kube_api_address
            .as_deref()
            .unwrap_or("(no management NIC)")
    }

    /// The MAC address of its NIC on the cluster segment.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// When QEMU was started (host clock).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Where the console log is written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Waits for a console line matching the regular expression `pattern`, after the
    /// line matched by the previous wait, and returns it (without the host timestamp).
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String, HarnessError> {
        let regex =
            regex::Regex::new(pattern).map_err(|_| HarnessError::Pattern(pattern.into()))?;
        let outcome = self.serial.wait_for(&regex, timeout);
        self.outcome(outcome, pattern, timeout)
    }

    /// Waits until each pattern has matched a line, in any order (for lines whose
    /// order is not fixed, like a service's first words and the `ready` line).
    pub fn wait_for_each(&self, patterns: &[&str], timeout: Duration) -> Result<(), HarnessError> {
        let regexes = patterns
            .iter()
            .map(|p| regex::Regex::new(p).map_err(|_| HarnessError::Pattern((*p).into())))
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = self.serial.wait_for_each(&regexes, timeout);
        self.outcome(outcome, &patterns.join(" & "), timeout)
            .map(drop)
    }

    fn outcome(
        &self,
        outcome: serial::WaitOutcome,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        let tail = || self.serial.tail(40).join("\n");
        match outcome {
            serial::WaitOutcome::Matched(line) => Ok(line),
            serial::WaitOutcome::Panic => Err(HarnessError::KernelPanic {
                vm: self.name.clone(),
                pattern: pattern.into(),
                tail: tail(),
            }),
            serial::WaitOutcome::Closed => Err(HarnessError::Exited {
                vm: self.name.clone(),
                pattern: pattern.into(),
                status: self
                    .exit_status()
                    .map_or("unknown".into(), |s| s.to_string()),
                tail: tail(),
            }),
            serial::WaitOutcome::TimedOut => Err(HarnessError::Timeout {
                vm: self.name.clone(),
                pattern: pattern.into(),
                timeout,
                tail: tail(),
            }),
        }
    }

    /// Every console line so far.
    pub fn lines(&self) -> Vec<String> {
        self.serial.tail(usize::MAX)
    }

    /// Presses the ACPI power button (QMP `system_powerdown`).
    pub fn press_power_button(&self) -> Result<(), HarnessError> {
        self.qmp("system_powerdown", None)
    }

    /// Cuts the power: QEMU quits at once (QMP `quit`), the guest gets no say, as when
    /// a machine loses power or its network for good.
    pub fn pull_the_plug(&self) -> Result<(), HarnessError> {
        self.qmp("quit", None)
    }

    /// Sends Ctrl-Alt-Del on the keyboard (QMP `send-key`).
    pub fn send_ctrl_alt_del(&self) -> Result<(), HarnessError> {
        self.qmp(
            "send-key",
            Some(serde_json::json!({"keys": [
                {"type": "qcode", "data": "ctrl"},
                {"type": "qcode", "data": "alt"},
                {"type": "qcode", "data": "delete"},
            ]})),
        )
    }

    fn qmp(&self, command: &str, arguments: Option<serde_json::Value>) -> Result<(), HarnessError> {
        self.qmp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .execute(command, arguments)
            .map(drop)
            .map_err(|detail| HarnessError::Qmp {
                vm: self.name.clone(),
                command: command.into(),
                detail,
            })
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::StillRunning {
                    vm: self.name.clone(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` console lines, one string.
    pub fn tail(&self, n: usize) -> String {
        let mut text = String::new();
        for line in self.serial.tail(n) {
            let _ = writeln!(text, "{line}");
        }
        text
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        kill(&self.child);
        if std::thread::panicking() {
            eprintln!(
                "--- last console lines of {} ({}) ---\n{}",
                self.name,
                self.log_path.display(),
                self.tail(60)
            );
        }
    }
}

/// Retries `call` every 500 ms while it fails (a node booting, rebooting or electing a
/// leader) until `within` has passed; then panics naming `what` and the last error.
pub async fn eventually<T, E, F, Fut>(what: &str, within: Duration, mut call: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("{what}: {err}"),
        }
    }
}
