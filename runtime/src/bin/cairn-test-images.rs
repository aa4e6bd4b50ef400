//! `cairn-test-images <dir> [busybox]`: writes the OCI test images (busybox, from the
//! static busybox at `/bin/busybox` unless another is named, and the demo's web server
//! made of it) as OCI layouts under `<dir>/busybox` and `<dir>/httpd`, for the
//! runtime's tests, the QEMU scenarios, the benchmarks and `cargo xtask demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_runtime::test_images::{
    BUSYBOX_IMAGE, HTTPD_IMAGE, write_busybox_layout, write_httpd_layout,
};

type WriteLayout = fn(
    &std::path::Path,
    &std::path::Path,
) -> Result<cairn_runtime::digest::Digest, cairn_runtime::images::ImageError>;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: cairn-test-images <dir> [busybox]");
        return ExitCode::from(2);
    };
    let busybox = args
        .next()
        .map_or_else(|| PathBuf::from("/bin/busybox"), PathBuf::from);
    let images: [(&str, &str, WriteLayout); 2] = [
        ("busybox", BUSYBOX_IMAGE, write_busybox_layout),
        ("httpd", HTTPD_IMAGE, write_httpd_layout),
    ];
    for (dir_name, reference, write) in images {
        let out = dir.join(dir_name);
        match write(&busybox, &out) {
            Ok(digest) => eprintln!("{reference} ({digest}) in {}", out.display()),
            Err(err) => {
                eprintln!(
                    "cannot build {reference} from {} (install busybox-static): {}",
                    busybox.display(),
                    cairn_api::error_chain(&err)
                );
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
