//! A BIOS-bootable ISO made with `grub-mkrescue` (from grub-pc-bin and xorriso),
//! carrying the distribution's compressed kernel and the same initramfs.

use std::path::Path;
use std::process::Command;

use crate::{ImageError, io_error};

/// Builds `out` from a kernel, an initramfs and the command line to boot them with.
pub fn build(
    vmlinuz: &Path,
    initramfs: &Path,
    cmdline: &str,
    out: &Path,
) -> Result<(), ImageError> {
    let staging = out.with_extension("staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_error("cannot clean", &staging))?;
    }
    let grub_dir = staging.join("boot/grub");
    std::fs::create_dir_all(&grub_dir).map_err(io_error("cannot create", &grub_dir))?;
    let copy = |from: &Path, name: &str| {
        let to = staging.join("boot").join(name);
        std::fs::copy(from, &to)
            .map(drop)
            .map_err(io_error("cannot copy to", &to))
    };
    copy(vmlinuz, "vmlinuz")?;
    copy(initramfs, "initramfs.cpio.zst")?;
    let config = grub_dir.join("grub.cfg");
    std::fs::write(&config, grub_config(cmdline)).map_err(io_error("cannot write", &config))?;

    let output = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .arg(&staging)
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "grub-mkrescue",
            detail: format!("cannot start it ({e}); install grub-pc-bin, xorriso and mtools"),
        })?;
    let _ = std::fs::remove_dir_all(&staging);
    if !output.status.success() {
        return Err(ImageError::Tool {
            tool: "grub-mkrescue",
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// GRUB's menu: boot at once, on the serial console as well as the screen.
pub fn grub_config(cmdline: &str) -> String {
    format!(
        "set timeout=0\n\
         set default=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         menuentry \"Cairn\" {{\n\
         \tlinux /boot/vmlinuz {cmdline}\n\
         \tinitrd /boot/initramfs.cpio.zst\n\
         }}\n"
    )
}
