//! Test images built without any network from files of the host: a busybox image
//! from Debian's `busybox-static`, usable by every test tier, and the demo's web
//! server image (the same busybox serving a page with its `httpd` applet).

use std::io::Write;
use std::path::Path;
use std::process::Command;

use oci_spec::image::{
    Arch, ConfigBuilder, ImageConfigurationBuilder, MediaType, Os, RootFsBuilder,
};

use crate::digest::Digest;
use crate::images::{ImageError, invalid, io_at};
use crate::layout::write_oci_layout;

/// The name the busybox test image is imported under.
/// (A version tag, not `latest`: Kubernetes pulls `latest` images on every start.)
pub const BUSYBOX_IMAGE: &str = "cairn.test/busybox:1.35";

/// The name the demo's web server image is imported under.
pub const HTTPD_IMAGE: &str = "cairn.demo/httpd:1.0";

/// The port the demo's web server listens on.
pub const HTTPD_PORT: u16 = 8080;

/// The page the demo's web server serves at `/`.
const HTTPD_INDEX: &str = "<html><body><h1>Hello from a pod on Cairn</h1></body></html>\n";

/// The applets `busybox --list` names.
fn applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(io_at(busybox))?;
    if !output.status.success() {
        return Err(invalid(busybox.display(), "`--list` failed"));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect())
}

/// The root file system of the busybox image, with `extra` files (path, contents),
/// as an uncompressed tar.
fn busybox_layer(busybox: &Path, extra: &[(&str, &str)]) -> Result<Vec<u8>, ImageError> {
    let binary = std::fs::read(busybox).map_err(io_at(busybox))?;
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header
    };
    let fail = |e: std::io::Error| invalid("busybox layer", e);
    for dir in ["bin", "etc", "proc", "sys", "dev", "root", "var"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .map_err(fail)?;
    }
    let mut h = header(tar::EntryType::Directory, 0o1777, 0);
    tar.append_data(&mut h, "tmp/", std::io::empty())
        .map_err(fail)?;
    let mut h = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    tar.append_data(&mut h, "bin/busybox", &binary[..])
        .map_err(fail)?;
    for applet in applets(busybox)? {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .map_err(fail)?;
    }
    let base = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ];
    let mut made_dirs: Vec<String> = Vec::new();
    for (path, text) in base.iter().chain(extra) {
        if let Some((dir, _)) = path.rsplit_once('/')
            && !["etc", "bin", "root", "var", "tmp"].contains(&dir)
            && !made_dirs.iter().any(|d| d == dir)
        {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
                .map_err(fail)?;
            made_dirs.push(dir.to_owned());
        }
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes())
            .map_err(fail)?;
    }
    tar.into_inner().map_err(fail)
}

/// Writes the busybox image (one gzip layer, `Cmd ["sh"]`) as an OCI layout in `out`,
/// from the static busybox at `busybox`. Returns the manifest digest.
pub fn write_busybox_layout(busybox: &Path, out: &Path) -> Result<Digest, ImageError> {
    write_busybox_layout_as(busybox, out, BUSYBOX_IMAGE)
}

/// [`write_busybox_layout`] under another reference (a second "version" of the image
/// for rolling updates).
pub fn write_busybox_layout_as(
    busybox: &Path,
    out: &Path,
    reference: &str,
) -> Result<Digest, ImageError> {
    write_layout(busybox, out, reference, &[], &["sh"])
}

/// Writes the demo's web server image ([`HTTPD_IMAGE`]): busybox with a page in
/// `/www`, serving it on [`HTTPD_PORT`] in the foreground (`httpd -f -v`).
pub fn write_httpd_layout(busybox: &Path, out: &Path) -> Result<Digest, ImageError> {
    let port = HTTPD_PORT.to_string();
    write_layout(
        busybox,
        out,
        HTTPD_IMAGE,
        &[("www/index.html", HTTPD_INDEX)],
        &["httpd", "-f", "-v", "-p", &port, "-h", "/www"],
    )
}

/// Writes a busybox image with `extra` files and command `cmd` as an OCI layout.
fn write_layout(
    busybox: &Path,
    out: &Path,
    reference: &str,
    extra: &[(&str, &str)],
    cmd: &[&str],
) -> Result<Digest, ImageError> {
    let layer = busybox_layer(busybox, extra)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer)
        .and_then(|()| gz.flush())
        .map_err(|e| invalid("busybox layer", e))?;
    let compressed = gz.finish().map_err(|e| invalid("busybox layer", e))?;
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                ])
                .cmd(cmd.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>())
                .build()
                .map_err(|e| invalid("config", e))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![Digest::of(&layer).to_string()])
                .build()
                .map_err(|e| invalid("config", e))?,
        )
        .build()
        .map_err(|e| invalid("config", e))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io_at(out))?;
    }
    write_oci_layout(
        out,
        reference,
        &config,
        &[(MediaType::ImageLayerGzip, compressed)],
    )
}
