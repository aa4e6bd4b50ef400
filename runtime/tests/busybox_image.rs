//! The busybox test image end to end as far as the runtime goes today: built from the
//! host's `busybox-static`, imported (verified) into an image store, its layer
//! unpacked into a root file system that holds a runnable busybox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cairn_runtime::images::ImageStore;
use cairn_runtime::layer::{UnpackOptions, unpack};
use cairn_runtime::test_images::{BUSYBOX_IMAGE, write_busybox_layout};

#[test]
fn the_busybox_image_imports_and_unpacks_into_a_runnable_root() {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "needs Debian's busybox-static (cargo xtask deps installs it)"
    );
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("busybox");
    write_busybox_layout(busybox, &layout).unwrap();
    let store = ImageStore::open(&work.path().join("store")).unwrap();
    let imported = store.import(&layout).unwrap();
    assert_eq!(imported[0].name, BUSYBOX_IMAGE);
    let image = store.get(BUSYBOX_IMAGE).unwrap();
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let options = UnpackOptions {
        preserve_owners: false,
        ..UnpackOptions::default()
    };
    for layer in &image.layers {
        unpack(store.blobs().open_blob(layer).unwrap(), &rootfs, &options).unwrap();
    }
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let output = std::process::Command::new(rootfs.join("bin/busybox"))
        .args(["echo", "from the image"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "from the image\n");
}
