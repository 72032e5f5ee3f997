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

/// Punch a hole of `len` bytes at `offset` in a regular file, keeping its size: the range reads
/// back as zeros (fallocate(2) `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    fallocate(
        file.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
    .map_err(errno)
}

/// Alignment of [`AlignedBuf`]: a page, which satisfies O_DIRECT on every device (logical block
/// sizes are 512 or 4096 and DMA alignment at most that).
pub const BUF_ALIGN: usize = 4096;

/// A zero-initialised heap buffer aligned to [`BUF_ALIGN`], usable for O_DIRECT writes.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl AlignedBuf {
    /// Allocate `len` zeroed bytes (`len` > 0). Aborts on allocation failure like `Vec`.
    pub fn new(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (len.max(1)) and a valid power-of-two alignment.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len.max(1), BUF_ALIGN)
            .expect("buffer size overflows the address space")
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at allocation) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with exactly this layout and not freed before.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

// SAFETY: AlignedBuf uniquely owns its allocation (like Vec<u8>); nothing is shared between
// copies, so moving it to another thread is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give `&[u8]`, which is Sync.
unsafe impl Sync for AlignedBuf {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_zeroed_and_writable() {
        let mut b = AlignedBuf::new(3 * BUF_ALIGN + 5);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[7] = 9;
        assert_eq!(b[7], 9);
        assert_eq!(b.len(), 3 * BUF_ALIGN + 5);
    }

    #[test]
    fn punch_hole_reads_back_zeros_and_keeps_size() {
        use std::os::unix::fs::FileExt;
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(&[0xAAu8; 65536], 0).unwrap();
        punch_hole(&f, 4096, 8192).unwrap();
        let mut back = vec![0u8; 65536];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..4096].iter().all(|&x| x == 0xAA));
        assert!(back[4096..12288].iter().all(|&x| x == 0));
        assert!(back[12288..].iter().all(|&x| x == 0xAA));
        assert_eq!(f.metadata().unwrap().len(), 65536);
    }
}
