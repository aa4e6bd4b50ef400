//! `cargo xtask demo`: build the image and boot a local Cairn node under QEMU, showing
//! its console live. Ctrl-C presses the node's power button (orderly power-off).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use qemu_tests::{Cluster, Image, VmSpec};

use crate::{build, deps};

const DEMO_CONFIG: &str = "\
apiVersion: cairn.dev/v1alpha1
kind: MachineConfig
machine:
  type: controlplane
  hostname: demo-1
  network:
    interfaces:
      - name: eth0
        addresses: [10.5.0.2/24]
";

/// Boots one node and follows its console until it powers off.
pub fn run(memory_mib: u32) -> anyhow::Result<()> {
    deps::ensure()?;
    build::image(false)?;
    let image = Image::load(&build::image_dir())?;
    let dir = build::target_dir().join("demo");
    let cluster = Cluster::with_image("demo", image, dir.clone()).context("preparing the VM")?;
    let mut spec = VmSpec::new("demo-1").config(DEMO_CONFIG);
    spec.memory_mib = memory_mib;
    // QEMU must not get the terminal's Ctrl-C: we turn it into a power-button press.
    spec.own_process_group = true;
    let vm = cluster.start(spec).context("starting QEMU")?;

    let presses = Arc::new(AtomicU32::new(0));
    let handler_presses = Arc::clone(&presses);
    ctrlc::set_handler(move || {
        handler_presses.fetch_add(1, Ordering::SeqCst);
    })
    .context("installing the Ctrl-C handler")?;

    eprintln!(
        "xtask: booting node demo-1 under QEMU (console below, also in {})",
        vm.log_path().display()
    );
    let mut handled = 0;
    loop {
        match vm.wait_for("", Duration::from_millis(200)) {
            Ok(line) => {
                println!("{line}");
                if line.contains(" ready elapsed_ms=") {
                    eprintln!(
                        "xtask: node demo-1 is ready ({:.1} s after QEMU started), as \
                         10.5.0.2/24 on a private segment. Press Ctrl-C to power it off in \
                         order.",
                        vm.started().elapsed().as_secs_f64()
                    );
                }
            }
            Err(qemu_tests::HarnessError::Timeout { .. }) => {}
            Err(qemu_tests::HarnessError::Exited { .. }) => break,
            Err(err) => return Err(err.into()),
        }
        let pressed = presses.load(Ordering::SeqCst);
        if pressed > handled {
            handled = pressed;
            if pressed == 1 {
                eprintln!("xtask: pressing the power button (Ctrl-C again to kill QEMU)");
                vm.press_power_button()?;
            } else {
                eprintln!("xtask: killing QEMU");
                break;
            }
        }
    }
    if let Ok(status) = vm.wait_exit(Duration::from_secs(1)) {
        eprintln!("xtask: QEMU exited ({status})");
    }
    drop(vm);
    drop(cluster);
    Ok(())
}
