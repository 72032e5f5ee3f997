//! Block-device ioctls. Every `unsafe` block of the crate lives here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

mod ioctl {
    // <linux/fs.h>: BLKRRPART = _IO(0x12, 95), BLKGETSIZE64 = _IOR(0x12, 114, size_t),
    // BLKSSZGET = _IO(0x12, 104), BLKPBSZGET = _IO(0x12, 123), BLKZEROOUT = _IO(0x12, 127),
    // BLKDISCARD = _IO(0x12, 119), BLKPG = _IO(0x12, 105).
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read_bad!(blkpbszget, nix::request_code_none!(0x12, 123), libc::c_uint);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    nix::ioctl_write_ptr_bad!(
        blkpg,
        nix::request_code_none!(0x12, 105),
        super::BlkpgIoctlArg
    );
}

/// `struct blkpg_ioctl_arg` from `<linux/blkpg.h>`.
#[repr(C)]
pub struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `struct blkpg_partition` from `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_DEL_PARTITION: libc::c_int = 2;

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// True when `file` is a block device (as opposed to a regular file used as a test disk).
pub fn is_block_device(file: &File) -> io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    Ok(file.metadata()?.file_type().is_block_device())
}

/// Size in bytes of a block device, or the length of a regular file.
pub fn device_size(file: &File) -> io::Result<u64> {
    if !is_block_device(file)? {
        return Ok(file.metadata()?.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live local.
    unsafe { ioctl::blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(errno)?;
    Ok(size)
}

/// Logical sector size of a block device (512 for a regular file).
pub fn logical_sector_size(file: &File) -> io::Result<u32> {
    if !is_block_device(file)? {
        return Ok(512);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live local.
    unsafe { ioctl::blksszget(file.as_raw_fd(), &mut size) }.map_err(errno)?;
    Ok(size as u32)
}

/// Physical sector size of a block device (4096 for a regular file).
pub fn physical_sector_size(file: &File) -> io::Result<u32> {
    if !is_block_device(file)? {
        return Ok(4096);
    }
    let mut size: libc::c_uint = 0;
    // SAFETY: BLKPBSZGET writes one unsigned int through the pointer, to a live local.
    unsafe { ioctl::blkpbszget(file.as_raw_fd(), &mut size) }.map_err(errno)?;
    Ok(size)
}

/// Ask the kernel to re-read the partition table. A no-op for regular files.
pub fn reread_partitions(file: &File) -> io::Result<()> {
    if !is_block_device(file)? {
        return Ok(());
    }
    // SAFETY: BLKRRPART takes no argument.
    unsafe { ioctl::blkrrpart(file.as_raw_fd()) }.map_err(errno)?;
    Ok(())
}

/// Zero `len` bytes at `offset` with BLKZEROOUT (the device may offload it).
pub fn zero_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer, a live local array.
    unsafe { ioctl::blkzeroout(file.as_raw_fd(), &range) }.map_err(errno)?;
    Ok(())
}

/// Discard `len` bytes at `offset` with BLKDISCARD.
pub fn discard(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 (start, length) from the pointer, a live local array.
    unsafe { ioctl::blkdiscard(file.as_raw_fd(), &range) }.map_err(errno)?;
    Ok(())
}

fn blkpg(file: &File, op: libc::c_int, pno: u32, start: u64, length: u64) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: start as i64,
        length: length as i64,
        pno: pno as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: the kernel reads `arg` and, through `arg.data`, `part`; both are live locals
    // of the declared C layout for the duration of the call.
    unsafe { ioctl::blkpg(file.as_raw_fd(), &arg) }.map_err(errno)?;
    Ok(())
}

/// Tell the kernel about partition `pno` at byte `start` of `length` bytes (what `partx -a`
/// does). Needed on kernels that do not parse partition tables of loop devices.
pub fn add_partition(file: &File, pno: u32, start: u64, length: u64) -> io::Result<()> {
    blkpg(file, BLKPG_ADD_PARTITION, pno, start, length)
}

/// Remove the kernel's view of partition `pno` (the table on disk is not touched).
pub fn delete_partition(file: &File, pno: u32) -> io::Result<()> {
    blkpg(file, BLKPG_DEL_PARTITION, pno, 0, 0)
}
