//! The one ioctl Cairn needs that `nix` has no safe wrapper for: asking the kernel to
//! re-read a disk's partition table after Cairn wrote one.

#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd;

// BLKRRPART = _IO(0x12, 95), from <linux/fs.h>.
nix::ioctl_none!(blkrrpart, 0x12, 95);

/// Makes the kernel re-read the partition table of the whole-disk device `disk`.
pub fn reread_partition_table(disk: &File) -> Result<(), nix::errno::Errno> {
    // SAFETY: `disk` is an open file descriptor for the duration of the call, and
    // BLKRRPART takes no argument, so no memory is shared with the kernel.
    unsafe { blkrrpart(disk.as_raw_fd()) }.map(drop)
}
