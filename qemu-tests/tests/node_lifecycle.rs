//! QEMU end-to-end scenarios of one node's life: boot to ready (kernel and ISO),
//! orderly power-off and reboot, service crashes, maintenance, zombie reaping.
//!
//! Run by `cargo xtask test` (they need root, QEMU and a built image).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use base64::Engine;
use qemu_tests::{Cluster, Vm, VmSpec, configs};

/// Generous: three booting VMs saturate two cores, and TCG is slow.
const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);

/// A valid control-plane config: eth0 with two addresses and a route.
fn machine_config() -> cairn_api::MachineConfig {
    let mut config = configs::node(&configs::secrets(), "node-1", "10.5.0.2/24", false, false);
    let eth0 = &mut config.machine.network.interfaces[0];
    eth0.addresses.push("fd05::2/64".into());
    eth0.routes.push(cairn_api::machine_config::RouteConfig {
        to: "10.6.0.0/16".into(),
        via: Some("10.5.0.1".into()),
    });
    config
}

fn config() -> String {
    configs::yaml(&machine_config())
}

fn cluster(name: &str) -> Cluster {
    Cluster::new(name).expect("cluster (needs root, QEMU and `cargo xtask image`)")
}

fn field(line: &str, name: &str) -> u64 {
    let re = regex::Regex::new(&format!(r"\b{name}=(\d+)")).expect("pattern");
    re.captures(line)
        .and_then(|c| c[1].parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

fn power_off_in_order(vm: &Vm) {
    vm.press_power_button().expect("power button");
    vm.wait_for(r"shutdown: begin action=power-off cause=power button", STEP)
        .expect("shutdown begins");
    vm.wait_for(r"service stopped service=link-monitor", STEP)
        .expect("services stopped");
    vm.wait_for(r"filesystems unmounted", STEP)
        .expect("unmounted");
    vm.wait_for(r"shutdown: complete action=power-off", STEP)
        .expect("shutdown completes");
    let status = vm.wait_exit(STEP).expect("QEMU exits after power-off");
    assert!(status.success(), "QEMU exit status {status}");
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn boots_to_ready_with_the_configured_network() {
    let cluster = cluster("boots_to_ready_with_the_configured_network");
    let vm = cluster
        .start(VmSpec::new("node-1").config(&config()))
        .expect("start");
    for phase in ["early", "modules", "config", "network", "services"] {
        vm.wait_for(&format!(r#"phase done phase="{phase}""#), BOOT)
            .expect("phase done");
    }
    let ready = vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    assert!(ready.contains("modules_ms="), "{ready}");
    let lines = vm.lines().join("\n");
    assert!(
        lines.contains("failed=0 skipped=0") && lines.contains("modules loaded="),
        "every shipped module loads:\n{lines}"
    );
    for configured in [
        "address added link=eth0 address=10.5.0.2/24",
        "address added link=eth0 address=fd05::2/64",
        "route added link=eth0 to=10.6.0.0/16",
    ] {
        assert!(lines.contains(configured), "no {configured:?} in:\n{lines}");
    }
    assert!(lines.contains("source=fw_cfg opt/cairn/machine.yaml"));
    vm.wait_for(r"link changed link=eth0 up=true carrier=true", STEP)
        .expect("link monitor sees eth0 up");
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn boots_from_the_iso_to_ready() {
    let cluster = cluster("boots_from_the_iso_to_ready");
    let vm = cluster
        .start(VmSpec::new("iso-1").config(&config()).iso())
        .expect("start");
    vm.wait_for(r"cairn starting as PID 1", BOOT)
        .expect("GRUB starts cairn");
    vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    power_off_in_order(&vm);
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn power_button_powers_off_in_order_and_ends_qemu() {
    let cluster = cluster("power_button_powers_off_in_order_and_ends_qemu");
    let vm = cluster
        .start(VmSpec::new("node-1").config(&config()))
        .expect("start");
    vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
    power_off_in_order(&vm);
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn ctrl_alt_del_reboots_in_order_and_comes_back_ready() {
    let cluster = cluster("ctrl_alt_del_reboots_in_order_and_comes_back_ready");
    let vm = cluster
        .start(VmSpec::new("node-1").config(&config()))
        .expect("start");
    vm.wait_for(r"\bready elapsed_ms=", BOOT)
        .expect("first boot ready");
    vm.send_ctrl_alt_del().expect("ctrl-alt-del");
    vm.wait_for(r"shutdown: begin action=reboot cause=SIGINT", STEP)
        .expect("reboot requested by SIGINT (Ctrl-Alt-Del)");
    vm.wait_for(r"shutdown: complete action=reboot", STEP)
        .expect("orderly shutdown before reboot");
    vm.wait_for(r"cairn starting as PID 1", BOOT)
        .expect("second boot");
    vm.wait_for(r"\bready elapsed_ms=", BOOT)
        .expect("second boot ready");
    power_off_in_order(&vm);
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn crashing_service_restarts_with_growing_backoff_and_pid1_survives() {
    let cluster = cluster("crashing_service_restarts_with_growing_backoff_and_pid1_survives");
    let vm = cluster
        .start(
            VmSpec::new("node-1")
                .config(&config())
                .cmdline("cairn.test=crashloop"),
        )
        .expect("start");
    // No wait for `ready` first: the service may log before it.
    let mut delays = Vec::new();
    for restart in 1..=5 {
        let line = vm
            .wait_for(
                &format!(r"service panicked: crashloop test service: deliberate panic; restarting after backoff service=crashloop restart={restart} "),
                STEP,
            )
            .expect("crash and restart");
        delays.push(field(&line, "delay_ms"));
    }
    assert!(
        delays.windows(2).all(|w| w[0] < w[1]),
        "backoff must grow: {delays:?}"
    );
    // PID 1 is alive and still runs an orderly shutdown.
    power_off_in_order(&vm);
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn boot_without_config_stays_up_in_maintenance_and_still_powers_off() {
    let cluster = cluster("boot_without_config_stays_up_in_maintenance_and_still_powers_off");
    // A static maintenance address spares the DHCP wait (the segment has no server).
    let vm = cluster
        .start(VmSpec::new("bare").cmdline("cairn.ip=10.5.0.9/24"))
        .expect("start");
    let line = vm
        .wait_for(r"maintenance: waiting for a machine config", BOOT)
        .expect("maintenance");
    assert!(line.contains("no machine configuration found"), "{line}");
    assert!(
        line.contains("cairn.config") && line.contains("opt/cairn/machine.yaml"),
        "{line}"
    );
    power_off_in_order_from_maintenance(&vm);
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn broken_config_stays_up_in_maintenance_naming_every_problem() {
    let cluster = cluster("broken_config_stays_up_in_maintenance_naming_every_problem");
    let mut broken = machine_config();
    let eth0 = &mut broken.machine.network.interfaces[0];
    eth0.addresses[0] = "10.5.0.300/24".into();
    eth0.routes[0].via = Some("fd05::1".into());
    let vm = cluster
        .start(
            VmSpec::new("broken")
                .config(&configs::yaml(&broken))
                .cmdline("cairn.ip=10.5.0.9/24"),
        )
        .expect("start");
    let line = vm
        .wait_for(r"maintenance: waiting for a machine config", BOOT)
        .expect("maintenance");
    assert!(line.contains("machine config has 2 problem(s)"), "{line}");
    assert!(
        line.contains(
            r#"machine.network.interfaces[0].addresses[0]: "10.5.0.300/24" is not an IP prefix"#
        ),
        "{line}"
    );
    assert!(
        line.contains("machine.network.interfaces[0].routes[0].via"),
        "{line}"
    );
    power_off_in_order_from_maintenance(&vm);
}

fn power_off_in_order_from_maintenance(vm: &Vm) {
    vm.wait_for(r"maintenance: machine API waiting", BOOT)
        .expect("maintenance API");
    vm.press_power_button().expect("power button");
    vm.wait_for(r"shutdown: complete action=power-off", STEP)
        .expect("orderly shutdown from maintenance");
    assert!(vm.wait_exit(STEP).expect("QEMU exits").success());
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn config_from_the_kernel_command_line_is_used() {
    let cluster = cluster("config_from_the_kernel_command_line_is_used");
    // A config with its certificates is past the kernel's 2,048-byte command line as
    // plain base64; gzipped it fits, as a user's would.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gzip, config().as_bytes()).expect("gzip into memory");
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(gzip.finish().expect("gzip into memory"));
    let vm = cluster
        .start(VmSpec::new("cmdline").cmdline(&format!("cairn.config={encoded}")))
        .expect("start");
    vm.wait_for(
        r"machine config accepted source=kernel parameter cairn.config=",
        BOOT,
    )
    .expect("config from cmdline");
    vm.wait_for(r"\bready elapsed_ms=", BOOT).expect("ready");
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn orphaned_processes_are_reaped_so_zombies_do_not_accumulate() {
    let cluster = cluster("orphaned_processes_are_reaped_so_zombies_do_not_accumulate");
    let vm = cluster
        .start(
            VmSpec::new("node-1")
                .config(&config())
                .cmdline("cairn.test=orphans"),
        )
        .expect("start");
    // No wait for `ready` first: the service may log before it.
    let mut last = String::new();
    for round in 1..=3 {
        last = vm
            .wait_for(&format!(r"orphan round round={round} "), STEP)
            .expect("orphan round");
        assert_eq!(field(&last, "zombies"), 0, "{last}");
    }
    // Rounds 1 and 2 have surely ended by round 3; round 3's may still linger.
    assert!(field(&last, "orphans_reaped") >= 10, "{last}");
    power_off_in_order(&vm);
}

#[test]
#[ignore = "boots QEMU: run by cargo xtask test"]
fn processes_ignoring_sigterm_are_killed_at_shutdown() {
    let cluster = cluster("processes_ignoring_sigterm_are_killed_at_shutdown");
    let vm = cluster
        .start(
            VmSpec::new("node-1")
                .config(&config())
                .cmdline("cairn.test=stubborn"),
        )
        .expect("start");
    // The service and the boot sequence log concurrently: either may come first.
    vm.wait_for_each(&[r"stubborn child started", r"\bready elapsed_ms="], BOOT)
        .expect("ready, with the stubborn child");
    vm.press_power_button().expect("power button");
    vm.wait_for(r"processes ignored SIGTERM; killing them left=1 ", STEP)
        .expect("TERM, grace, then KILL");
    vm.wait_for(r"shutdown: complete action=power-off", STEP)
        .expect("shutdown completes");
    assert!(vm.wait_exit(STEP).expect("QEMU exits").success());
}
