//! `cairn-test-images <dir> [busybox]`: writes the OCI test images (busybox, from the
//! static busybox at `/bin/busybox` unless another is named) as OCI layouts under
//! `<dir>/`, for the runtime's tests, the QEMU scenarios and the benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_runtime::test_images::{BUSYBOX_IMAGE, write_busybox_layout};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: cairn-test-images <dir> [busybox]");
        return ExitCode::from(2);
    };
    let busybox = args
        .next()
        .map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from);
    let out = dir.join("busybox");
    match write_busybox_layout(&busybox, &out) {
        Ok(digest) => {
            eprintln!("{BUSYBOX_IMAGE} ({digest}) in {}", out.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "cannot build the busybox test image from {} (install busybox-static): {}",
                busybox.display(),
                cairn_api::error_chain(&err)
            );
            ExitCode::FAILURE
        }
    }
}
