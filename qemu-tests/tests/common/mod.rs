//! Helpers the QEMU scenarios share: the busybox test image as a tar archive to
//! import over the machine API, and commands run in a pod as `cairnctl exec` runs them.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use cairn_api::remote_command::ExecRequest;
use cairn_runtime::test_images::{BUSYBOX_IMAGE, write_busybox_layout_as};
use cairnctl::client::NodeClient;
use cairnctl::exec::LocalStreams;

/// The busybox test image as an OCI layout in a tar archive (`POST /v1/images`).
pub fn busybox_archive() -> Vec<u8> {
    busybox_archive_as(BUSYBOX_IMAGE)
}

/// The busybox test image under another `reference`, as [`busybox_archive`].
pub fn busybox_archive_as(reference: &str) -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("busybox");
    write_busybox_layout_as(Path::new("/bin/busybox"), &layout, reference).unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    archive.append_dir_all(".", &layout).unwrap();
    archive.into_inner().unwrap()
}

/// Runs `command` in the `main` container of the pod `default/pod` as `cairnctl exec`
/// does; its exit code and standard output.
pub async fn exec_capture(
    client: &NodeClient,
    pod: &str,
    command: &[&str],
    tty: bool,
) -> (i32, String) {
    let request = ExecRequest {
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: false,
        stdout: true,
        stderr: false,
        tty,
    };
    let output = Arc::new(Mutex::new(Vec::new()));
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let streams = LocalStreams {
        stdin: Box::new(std::io::empty()),
        stdout: Box::new(Sink(Arc::clone(&output))),
        stderr: Box::new(std::io::sink()),
        terminal_size: false,
    };
    let code = cairnctl::exec::exec(client, "default", pod, "main", &request, streams)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    (code, text)
}
