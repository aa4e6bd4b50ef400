//! The node's persistent state: a partition labelled `CAIRN-STATE` on the install disk,
//! formatted ext4 by Cairn itself on first boot and mounted at [`STATE_DIR`].
//!
//! Safety first: Cairn partitions a disk only when it has no partition table at all;
//! a disk with someone else's partitions is refused, never wiped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use tracing::info;

use crate::sys::Syscalls;

/// The GPT partition name and filesystem label of the state partition.
pub const STATE_LABEL: &str = "CAIRN-STATE";
/// Where the state partition is mounted.
pub const STATE_DIR: &str = "/var/lib/cairn";

/// Why the state partition could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum StateDiskError {
    /// The disk could not be opened or read.
    #[error("cannot use install disk {disk}")]
    Open {
        /// The disk.
        disk: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The disk has partitions that are not ours.
    #[error(
        "install disk {0} already has a partition table without a {STATE_LABEL} partition; Cairn will not overwrite it (wipe the disk to let Cairn use it)"
    )]
    Foreign(String),
    /// Writing the partition table failed.
    #[error("cannot partition {disk}: {reason}")]
    Partition {
        /// The disk.
        disk: String,
        /// What the GPT writer said.
        reason: String,
    },
    /// The new partition did not show up.
    #[error("partition {0} did not appear after re-reading the partition table")]
    NoPartition(String),
    /// Formatting failed.
    #[error("cannot format {device} as ext4: {reason}")]
    Format {
        /// The partition.
        device: String,
        /// What mkfs said.
        reason: String,
    },
    /// Mounting failed.
    #[error("cannot mount {device} at {STATE_DIR}")]
    Mount {
        /// The partition.
        device: String,
        /// The kernel's answer.
        #[source]
        source: nix::errno::Errno,
    },
}

/// Finds a partition named [`STATE_LABEL`] on any disk (from `/sys/class/block`).
pub fn find_state_partition(sys_class_block: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_class_block).ok()?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let uevent = std::fs::read_to_string(entry.path().join("uevent")).ok()?;
            let is_ours = uevent
                .lines()
                .any(|l| l == format!("PARTNAME={STATE_LABEL}"));
            is_ours.then(|| Path::new("/dev").join(entry.file_name()))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Mounts an existing state partition at [`STATE_DIR`].
pub fn mount_state(sys: &dyn Syscalls, device: &Path) -> Result<(), StateDiskError> {
    let _ = sys.create_dir_all(Path::new(STATE_DIR));
    sys.mount(
        &device.to_string_lossy(),
        Path::new(STATE_DIR),
        "ext4",
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None,
    )
    .map_err(|source| StateDiskError::Mount {
        device: device.display().to_string(),
        source,
    })
}

/// Whether the first sectors of a disk carry a partition table (MBR or GPT).
pub fn has_partition_table(first_sectors: &[u8]) -> bool {
    let mbr = first_sectors.get(510..512) == Some(&[0x55, 0xaa]);
    let gpt = first_sectors.get(512..520) == Some(b"EFI PART");
    mbr || gpt
}

/// Partitions an empty disk with one [`STATE_LABEL`] partition, formats it ext4 and
/// returns the partition's device path (not yet mounted).
pub fn install(disk: &Path) -> Result<PathBuf, StateDiskError> {
    let disk_name = disk.display().to_string();
    let open_error = |source| StateDiskError::Open {
        disk: disk_name.clone(),
        source,
    };
    let mut device = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(open_error)?;
    let mut head = vec![0u8; 1024];
    device.read_exact(&mut head).map_err(open_error)?;
    if has_partition_table(&head) {
        return Err(StateDiskError::Foreign(disk_name));
    }
    device.seek(SeekFrom::Start(0)).map_err(open_error)?;
    let size = device.seek(SeekFrom::End(0)).map_err(open_error)?;
    device.seek(SeekFrom::Start(0)).map_err(open_error)?;
    let partition_error = |reason: String| StateDiskError::Partition {
        disk: disk_name.clone(),
        reason,
    };

    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(size / 512 - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut device)
        .map_err(|e| partition_error(e.to_string()))?;
    let mut table = gpt::GptConfig::new()
        .writable(true)
        .create_from_device(device, None)
        .map_err(|e| partition_error(e.to_string()))?;
    let free = table
        .find_free_sectors()
        .into_iter()
        .max_by_key(|(_, length)| *length)
        .ok_or_else(|| partition_error("no free space".into()))?;
    let bytes = free.1.saturating_sub(2048) * 512;
    table
        .add_partition(
            STATE_LABEL,
            bytes,
            gpt::partition_types::LINUX_FS,
            0,
            Some(2048),
        )
        .map_err(|e| partition_error(e.to_string()))?;
    let device = table.write().map_err(|e| partition_error(e.to_string()))?;
    device.sync_all().map_err(open_error)?;
    crate::ioctl::reread_partition_table(&device)
        .map_err(|errno| partition_error(format!("re-reading the partition table: {errno}")))?;
    drop(device);

    let partition = partition_path(disk);
    let appeared = Instant::now();
    while !partition.exists() {
        if appeared.elapsed() > Duration::from_secs(5) {
            return Err(StateDiskError::NoPartition(partition.display().to_string()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    format_ext4(&partition)?;
    info!(disk = %disk.display(), partition = %partition.display(), "state partition created and formatted ext4");
    Ok(partition)
}

/// `/dev/vda` → `/dev/vda1`; `/dev/nvme0n1` → `/dev/nvme0n1p1`.
pub fn partition_path(disk: &Path) -> PathBuf {
    let text = disk.display().to_string();
    if text.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{text}p1"))
    } else {
        PathBuf::from(format!("{text}1"))
    }
}

/// A partition as a block device for the ext4 formatter (positioned reads and writes).
struct PartitionDevice {
    file: File,
    blocks: u64,
}

const BLOCK: u32 = 512;
/// One ext4 block group with 4 KiB blocks: 8 × 4096 blocks of 4096 bytes.
const GROUP_BYTES: u64 = 128 * 1024 * 1024;

impl ext4_lwext4::BlockDevice for PartitionDevice {
    fn read_blocks(&self, block_id: u64, buf: &mut [u8]) -> ext4_lwext4::Result<u32> {
        self.file.read_exact_at(buf, block_id * u64::from(BLOCK))?;
        Ok(u32::try_from(buf.len() / BLOCK as usize).unwrap_or(u32::MAX))
    }

    fn write_blocks(&mut self, block_id: u64, buf: &[u8]) -> ext4_lwext4::Result<u32> {
        self.file.write_all_at(buf, block_id * u64::from(BLOCK))?;
        Ok(u32::try_from(buf.len() / BLOCK as usize).unwrap_or(u32::MAX))
    }

    fn flush(&mut self) -> ext4_lwext4::Result<()> {
        self.file.sync_all()?;
        Ok(())
    }

    fn block_size(&self) -> u32 {
        BLOCK
    }

    fn block_count(&self) -> u64 {
        self.blocks
    }
}

/// Formats a block device (or a file) as ext4 labelled [`STATE_LABEL`].
pub fn format_ext4(device: &Path) -> Result<(), StateDiskError> {
    let format_error = |reason: String| StateDiskError::Format {
        device: device.display().to_string(),
        reason,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|e| format_error(e.to_string()))?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|e| format_error(e.to_string()))?;
    // lwext4 miscounts the free blocks of a partial last block group (the kernel then
    // finds the filesystem inconsistent and remounts it read-only), so the filesystem
    // covers whole groups only: 32768 blocks of 4 KiB, 128 MiB each.
    let usable = size / GROUP_BYTES * GROUP_BYTES;
    if usable == 0 {
        return Err(format_error(format!(
            "{size} bytes is less than the 128 MiB the state partition needs"
        )));
    }
    let blocks = usable / u64::from(BLOCK);
    let mut uuid = [0u8; 16];
    random_bytes(&mut uuid);
    let mut options = ext4_lwext4::MkfsOptions::ext4();
    options.label = Some(STATE_LABEL.to_owned());
    options.uuid = Some(uuid);
    ext4_lwext4::mkfs(PartitionDevice { file, blocks }, &options)
        .map_err(|e| format_error(e.to_string()))
}

fn random_bytes(bytes: &mut [u8]) {
    // A weak filesystem UUID is harmless, so an error leaves the bytes as they are.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_follow_the_kernel() {
        assert_eq!(
            partition_path(Path::new("/dev/vda")),
            PathBuf::from("/dev/vda1")
        );
        assert_eq!(
            partition_path(Path::new("/dev/nvme0n1")),
            PathBuf::from("/dev/nvme0n1p1")
        );
    }

    #[test]
    fn foreign_partition_tables_are_recognised() {
        let mut mbr = vec![0u8; 1024];
        assert!(!has_partition_table(&mbr));
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert!(has_partition_table(&mbr));
        let mut gpt = vec![0u8; 1024];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert!(has_partition_table(&gpt));
    }

    #[test]
    fn a_formatted_file_is_consistent_ext4_with_our_label() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("state.img");
        let file = File::create(&image).unwrap();
        // Not a whole number of block groups, like a real partition.
        file.set_len(300 * 1024 * 1024 + 4096 * 7).unwrap();
        drop(file);
        format_ext4(&image).unwrap();
        // e2fsprogs is on every Debian; where it is, it must find nothing to fix.
        if let Ok(output) = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&image)
            .output()
        {
            assert!(
                output.status.success(),
                "e2fsck found problems:\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        let mut superblock = vec![0u8; 2048];
        File::open(&image)
            .unwrap()
            .read_exact(&mut superblock)
            .unwrap();
        // ext2/3/4 magic at 1024 + 0x38, volume name at 1024 + 0x78.
        assert_eq!(&superblock[1024 + 0x38..1024 + 0x3a], &[0x53, 0xef]);
        assert_eq!(
            &superblock[1024 + 0x78..1024 + 0x78 + STATE_LABEL.len()],
            STATE_LABEL.as_bytes()
        );
    }
}
