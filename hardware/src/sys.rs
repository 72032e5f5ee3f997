//! Every ioctl this crate issues, behind safe wrappers.
//!
//! This is the only module of `ferric-hardware` allowed to use `unsafe`
//! (`lib.rs` denies it everywhere else). Each wrapper takes a borrowed open
//! file, so the descriptor is valid for the duration of the call, and owns or
//! borrows every buffer the kernel reads or writes, so the pointers handed to
//! the kernel are valid and large enough.
//!
//! Struct layouts are those of the Linux UAPI headers (`linux/fs.h`,
//! `linux/blkpg.h`, `linux/nvme_ioctl.h`, `scsi/sg.h`); the unit tests pin
//! their sizes, field offsets and request numbers.

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::libc::{c_int, c_longlong};

/// `struct nvme_passthru_cmd` (alias `nvme_admin_cmd`), `linux/nvme_ioctl.h`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NvmePassthruCmd {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub metadata: u64,
    pub addr: u64,
    pub metadata_len: u32,
    pub data_len: u32,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
    pub timeout_ms: u32,
    pub result: u32,
}

/// `struct sg_io_hdr`, `scsi/sg.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct SgIoHdr {
    pub interface_id: c_int,
    pub dxfer_direction: c_int,
    pub cmd_len: u8,
    pub mx_sb_len: u8,
    pub iovec_count: u16,
    pub dxfer_len: u32,
    pub dxferp: *mut c_void,
    pub cmdp: *mut u8,
    pub sbp: *mut u8,
    pub timeout: u32,
    pub flags: u32,
    pub pack_id: c_int,
    pub usr_ptr: *mut c_void,
    pub status: u8,
    pub masked_status: u8,
    pub msg_status: u8,
    pub sb_len_wr: u8,
    pub host_status: u16,
    pub driver_status: u16,
    pub resid: c_int,
    pub duration: u32,
    pub info: u32,
}

/// `struct blkpg_partition`, `linux/blkpg.h`.
#[repr(C)]
struct BlkpgPartition {
    start: c_longlong,
    length: c_longlong,
    pno: c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg`, `linux/blkpg.h`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

const BLKPG_DEL_PARTITION: c_int = 2;
const SG_INTERFACE_ID: c_int = b'S' as c_int;
const SG_DXFER_NONE: c_int = -1;
const SG_DXFER_TO_DEV: c_int = -2;
const SG_DXFER_FROM_DEV: c_int = -3;
/// Largest sense buffer a SCSI target returns (SPC-4 §4.5.1: 252 bytes).
const SENSE_LEN: usize = 252;

mod ioctls {
    use super::{BlkpgIoctlArg, NvmePassthruCmd, SgIoHdr};
    use nix::libc::c_int;

    // BLKGETSIZE64 is _IOR(0x12, 114, size_t): the size argument of the request
    // number is the width of size_t, although the kernel writes a u64.
    nix::ioctl_read_bad!(
        blkgetsize64,
        nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()),
        u64
    );
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), c_int);
    nix::ioctl_none!(blkrrpart, 0x12, 95);
    // FS_IOC_GETFLAGS/SETFLAGS are _IOR/_IOW('f', 1/2, long); the kernel moves an int.
    nix::ioctl_read!(fs_ioc_getflags, b'f', 1, nix::libc::c_long);
    nix::ioctl_write_ptr!(fs_ioc_setflags, b'f', 2, nix::libc::c_long);
    nix::ioctl_none!(blkflsbuf, 0x12, 97);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);
    nix::ioctl_none!(nvme_ioctl_id, b'N', 0x40);
    nix::ioctl_readwrite!(nvme_ioctl_admin_cmd, b'N', 0x41, NvmePassthruCmd);
    nix::ioctl_readwrite_bad!(sg_io, 0x2285, SgIoHdr);
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Size of a block device in bytes (`BLKGETSIZE64`).
pub(crate) fn device_size(f: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the duration of the call (borrowed File) and
    // `size` is a valid, writable u64, which is what BLKGETSIZE64 stores.
    unsafe { ioctls::blkgetsize64(f.as_raw_fd(), &mut size) }.map_err(errno)?;
    Ok(size)
}

/// Logical sector size of a block device in bytes (`BLKSSZGET`).
pub(crate) fn logical_sector_size(f: &File) -> io::Result<u32> {
    let mut size: c_int = 0;
    // SAFETY: valid fd; `size` is a writable int, which BLKSSZGET stores.
    unsafe { ioctls::blksszget(f.as_raw_fd(), &mut size) }.map_err(errno)?;
    u32::try_from(size).map_err(|_| io::Error::other(format!("BLKSSZGET returned {size}")))
}

/// Clear `FS_IMMUTABLE_FL` (`chattr -i`) on an open file; `Ok(false)` when it was not set.
pub(crate) fn clear_immutable(f: &File) -> io::Result<bool> {
    const FS_IMMUTABLE_FL: nix::libc::c_long = 0x10;
    let mut flags: nix::libc::c_long = 0;
    // SAFETY: valid fd; `flags` is a writable long, wider than the int the kernel stores.
    unsafe { ioctls::fs_ioc_getflags(f.as_raw_fd(), &mut flags) }.map_err(errno)?;
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(false);
    }
    flags &= !FS_IMMUTABLE_FL;
    // SAFETY: valid fd; the kernel only reads `flags`.
    unsafe { ioctls::fs_ioc_setflags(f.as_raw_fd(), &flags) }.map_err(errno)?;
    Ok(true)
}

/// Ethertype of LLDP frames.
pub(crate) const ETH_P_LLDP: u16 = 0x88cc;

/// A non-blocking `AF_PACKET` socket that receives the LLDP frames arriving on interface
/// `ifindex`, with promiscuous membership (dropped by the kernel when the socket closes, so
/// the interface's own flags are never changed), as IPA's `netutils` listens.
pub(crate) fn lldp_socket(ifindex: u32) -> io::Result<std::os::fd::OwnedFd> {
    use nix::libc;
    use std::os::fd::FromRawFd;
    let ifindex = c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    let proto = ETH_P_LLDP.to_be();
    // SAFETY: plain socket(2) call with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            c_int::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    // SAFETY: valid fd; `addr` is a sockaddr_ll that lives across the call and its size is
    // passed with it.
    let r = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: packet_mreq is plain old data; all-zero is a valid value.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = ifindex;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    // SAFETY: valid fd; `mreq` lives across the call and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            std::ptr::from_ref(&mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// Asks the kernel to re-read the partition table (`BLKRRPART`).
pub(crate) fn reread_partitions(f: &File) -> io::Result<()> {
    // SAFETY: valid fd; BLKRRPART takes no argument.
    unsafe { ioctls::blkrrpart(f.as_raw_fd()) }.map_err(errno)?;
    Ok(())
}

/// Flushes and drops the device's buffer cache (`BLKFLSBUF`), so that later
/// readers of this device node see what was written through another one.
pub(crate) fn flush_buffers(f: &File) -> io::Result<()> {
    // SAFETY: valid fd; BLKFLSBUF takes no argument.
    unsafe { ioctls::blkflsbuf(f.as_raw_fd()) }.map_err(errno)?;
    Ok(())
}

/// Discards (`BLKDISCARD`) `len` bytes from `offset`; both must be multiples
/// of the logical sector size.
pub(crate) fn discard(f: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: valid fd; `range` is the [start, length] pair of u64 that
    // BLKDISCARD reads, and lives until the call returns.
    unsafe { ioctls::blkdiscard(f.as_raw_fd(), &range) }.map_err(errno)?;
    Ok(())
}

/// Removes partition `pno` from the kernel's view of the disk
/// (`BLKPG_DEL_PARTITION`), as `partprobe`/`delpart` do when no table
/// re-read is possible (loop devices without partition scanning).
pub(crate) fn delete_partition(f: &File, pno: u32) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: 0,
        length: 0,
        pno: c_int::try_from(pno).map_err(|_| io::Error::other("partition number too large"))?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgIoctlArg {
        op: BLKPG_DEL_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: valid fd; `arg.data` points at `part`, a live blkpg_partition of
    // `datalen` bytes, and both outlive the call.
    unsafe { ioctls::blkpg(f.as_raw_fd(), &arg) }.map_err(errno)?;
    Ok(())
}

/// The namespace id behind an NVMe namespace block device (`NVME_IOCTL_ID`).
pub(crate) fn nvme_namespace_id(f: &File) -> io::Result<u32> {
    // SAFETY: valid fd; NVME_IOCTL_ID takes no argument and returns the nsid.
    let id = unsafe { ioctls::nvme_ioctl_id(f.as_raw_fd()) }.map_err(errno)?;
    u32::try_from(id).map_err(|_| io::Error::other(format!("NVME_IOCTL_ID returned {id}")))
}

/// Sends an NVMe admin command (`NVME_IOCTL_ADMIN_CMD`). `cmd.addr` and
/// `cmd.data_len` are set here from `data`. Returns the NVMe status field
/// (0 = success) and the completion's dword 0.
pub(crate) fn nvme_admin(
    f: &File,
    mut cmd: NvmePassthruCmd,
    data: Option<&mut [u8]>,
) -> io::Result<(u32, u32)> {
    match data {
        Some(buf) => {
            cmd.addr = buf.as_mut_ptr() as u64;
            cmd.data_len = u32::try_from(buf.len())
                .map_err(|_| io::Error::other("NVMe data buffer too large"))?;
        }
        None => {
            cmd.addr = 0;
            cmd.data_len = 0;
        }
    }
    cmd.metadata = 0;
    cmd.metadata_len = 0;
    // SAFETY: valid fd; `cmd` is a live nvme_passthru_cmd; `addr`/`data_len`
    // describe a buffer we borrow mutably for the whole call (the kernel may
    // read or write it according to the opcode), or are 0; no metadata buffer.
    let status = unsafe { ioctls::nvme_ioctl_admin_cmd(f.as_raw_fd(), &mut cmd) }.map_err(errno)?;
    Ok((status as u32, cmd.result))
}

/// Data phase of an SG_IO command.
pub(crate) enum SgData<'a> {
    /// No data transfer.
    None,
    /// Device to host.
    FromDevice(&'a mut [u8]),
    /// Host to device.
    ToDevice(&'a [u8]),
}

/// What came back from SG_IO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SgResult {
    /// SCSI status byte (0 good, 2 check condition).
    pub status: u8,
    pub host_status: u16,
    pub driver_status: u16,
    /// Sense data the target returned (possibly empty).
    pub sense: Vec<u8>,
}

/// Sends a SCSI command through the block layer's SG_IO (`scsi/sg.h`).
pub(crate) fn sg_io(
    f: &File,
    cdb: &[u8],
    data: SgData<'_>,
    timeout_ms: u32,
) -> io::Result<SgResult> {
    let mut cdb_buf = cdb.to_vec();
    let mut sense = [0u8; SENSE_LEN];
    let (direction, ptr, len) = match data {
        SgData::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0usize),
        SgData::FromDevice(buf) => (SG_DXFER_FROM_DEV, buf.as_mut_ptr().cast(), buf.len()),
        // The kernel only reads a TO_DEV buffer; the pointer type is shared.
        SgData::ToDevice(buf) => (SG_DXFER_TO_DEV, buf.as_ptr() as *mut c_void, buf.len()),
    };
    let mut hdr = SgIoHdr {
        interface_id: SG_INTERFACE_ID,
        dxfer_direction: direction,
        cmd_len: u8::try_from(cdb_buf.len()).map_err(|_| io::Error::other("CDB too long"))?,
        mx_sb_len: SENSE_LEN as u8,
        iovec_count: 0,
        dxfer_len: u32::try_from(len).map_err(|_| io::Error::other("SG_IO buffer too large"))?,
        dxferp: ptr,
        cmdp: cdb_buf.as_mut_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: valid fd; `hdr` is a live sg_io_hdr whose cmdp (cmd_len bytes),
    // sbp (mx_sb_len bytes) and dxferp (dxfer_len bytes, or null with
    // SG_DXFER_NONE) point into buffers owned or borrowed here that outlive
    // the synchronous call; a TO_DEV buffer is only read by the kernel.
    unsafe { ioctls::sg_io(f.as_raw_fd(), &mut hdr) }.map_err(errno)?;
    let n = usize::from(hdr.sb_len_wr).min(SENSE_LEN);
    Ok(SgResult {
        status: hdr.status,
        host_status: hdr.host_status,
        driver_status: hdr.driver_status,
        sense: sense[..n].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn nvme_passthru_layout_matches_uapi() {
        assert_eq!(size_of::<NvmePassthruCmd>(), 72);
        assert_eq!(offset_of!(NvmePassthruCmd, nsid), 4);
        assert_eq!(offset_of!(NvmePassthruCmd, metadata), 16);
        assert_eq!(offset_of!(NvmePassthruCmd, addr), 24);
        assert_eq!(offset_of!(NvmePassthruCmd, data_len), 36);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw10), 40);
        assert_eq!(offset_of!(NvmePassthruCmd, cdw15), 60);
        assert_eq!(offset_of!(NvmePassthruCmd, timeout_ms), 64);
        assert_eq!(offset_of!(NvmePassthruCmd, result), 68);
        // NVME_IOCTL_ADMIN_CMD = _IOWR('N', 0x41, struct nvme_admin_cmd) as in nvme-cli.
        assert_eq!(
            nix::request_code_readwrite!(b'N', 0x41, size_of::<NvmePassthruCmd>()) as u32,
            0xC048_4E41
        );
        assert_eq!(nix::request_code_none!(b'N', 0x40) as u32, 0x4E40);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn sg_io_hdr_layout_matches_uapi() {
        assert_eq!(size_of::<SgIoHdr>(), 88);
        assert_eq!(offset_of!(SgIoHdr, cmd_len), 8);
        assert_eq!(offset_of!(SgIoHdr, dxfer_len), 12);
        assert_eq!(offset_of!(SgIoHdr, dxferp), 16);
        assert_eq!(offset_of!(SgIoHdr, cmdp), 24);
        assert_eq!(offset_of!(SgIoHdr, sbp), 32);
        assert_eq!(offset_of!(SgIoHdr, timeout), 40);
        assert_eq!(offset_of!(SgIoHdr, usr_ptr), 56);
        assert_eq!(offset_of!(SgIoHdr, status), 64);
        assert_eq!(offset_of!(SgIoHdr, host_status), 68);
        assert_eq!(offset_of!(SgIoHdr, resid), 72);
        assert_eq!(offset_of!(SgIoHdr, info), 80);
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn block_request_numbers_match_linux_fs_h() {
        // Values as printed by a C program including <linux/fs.h> on x86_64.
        assert_eq!(
            nix::request_code_read!(0x12, 114, size_of::<usize>()) as u32,
            0x8008_1272 // BLKGETSIZE64
        );
        assert_eq!(nix::request_code_none!(0x12, 95) as u32, 0x125F); // BLKRRPART
        assert_eq!(nix::request_code_none!(0x12, 97) as u32, 0x1261); // BLKFLSBUF
        assert_eq!(nix::request_code_none!(0x12, 104) as u32, 0x1268); // BLKSSZGET
        assert_eq!(nix::request_code_none!(0x12, 105) as u32, 0x1269); // BLKPG
        assert_eq!(nix::request_code_none!(0x12, 119) as u32, 0x1277); // BLKDISCARD
        assert_eq!(size_of::<BlkpgPartition>(), 8 + 8 + 4 + 64 + 64 + 4);
    }
}
