//! Overwrite passes: `agent_erase_devices_iterations` passes of
//! pseudo-random data, then one pass of zeroes when
//! `agent_erase_devices_zeroize` is set — IPA's `shred --force [--zero]
//! --iterations N` (IPA `_shred_block_device`).
//!
//! Random data comes from xoshiro256++ seeded from the kernel once per pass
//! (the point is to leave nothing recognisable, not secrecy; streaming
//! /dev/urandom would be an order of magnitude slower than the disk). Writes
//! are 4 MiB, 4 KiB-aligned and `O_DIRECT` so a multi-terabyte pass does not
//! churn the ramdisk's page cache; devices that refuse `O_DIRECT` are written
//! through the cache with a sync per pass.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::clean::{Operation, Progress, Ticker};
use crate::manager::{StepContext, StepError};
use crate::sys;

/// Size of one write.
const CHUNK: usize = 4 << 20;
/// Alignment of the write buffer (a multiple of every logical sector size).
const ALIGN: usize = 4096;

/// xoshiro256++ (Blackman & Vigna, 2019): fast, 256-bit state, good enough
/// that no two passes or devices repeat.
pub(crate) struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    /// A generator from a 256-bit seed (an all-zero seed is replaced).
    pub(crate) fn from_seed(seed: [u64; 4]) -> Xoshiro256pp {
        if seed == [0; 4] {
            return Xoshiro256pp {
                s: [0x9E37_79B9_7F4A_7C15, 1, 2, 3],
            };
        }
        Xoshiro256pp { s: seed }
    }

    /// A generator seeded from the kernel's random pool (falling back to the
    /// clock and the thread id, which is still fine for overwriting).
    pub(crate) fn from_entropy() -> Xoshiro256pp {
        let mut bytes = [0u8; 32];
        let ok = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        if ok.is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            bytes[..16].copy_from_slice(&t.to_le_bytes());
            let id = format!("{:?}", std::thread::current().id());
            for (i, b) in id.bytes().enumerate() {
                bytes[16 + i % 16] ^= b;
            }
        }
        let mut s = [0u64; 4];
        for (i, w) in s.iter_mut().enumerate() {
            *w = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        Xoshiro256pp::from_seed(s)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Fills `buf` (any length).
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// The passes for `iterations` random passes and an optional zero pass.
pub(crate) fn passes(iterations: u32, zeroize: bool) -> Vec<Operation> {
    let mut v = vec![Operation::RandomPass; iterations as usize];
    if zeroize {
        v.push(Operation::ZeroPass);
    }
    v
}

/// A 4 KiB-aligned buffer of `len` bytes, without unsafe code: an
/// over-allocated Vec and the aligned window inside it.
struct AlignedBuf {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + ALIGN];
        let offset = storage.as_ptr().align_offset(ALIGN);
        AlignedBuf {
            storage,
            offset,
            len,
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

fn open_for_overwrite(path: &Path, direct: bool) -> io::Result<File> {
    let mut flags = nix::libc::O_EXCL | nix::libc::O_CLOEXEC;
    if direct {
        flags |= nix::libc::O_DIRECT;
    }
    crate::clean::metadata::retry_busy(|| {
        OpenOptions::new()
            .write(true)
            .custom_flags(flags)
            .open(path)
    })
}

/// Overwrites all of the device at `path` with `passes`, reporting progress
/// as `device`. Returns the device size.
pub(crate) fn overwrite(
    ctx: &StepContext<'_>,
    device: &str,
    path: &Path,
    passes: &[Operation],
) -> Result<u64, StepError> {
    let fail = |what: String, e: io::Error| {
        StepError::BlockDeviceErase(format!("Erasing block device {device} failed: {what}: {e}"))
    };
    let (f, mut direct) = match open_for_overwrite(path, true) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => (
            open_for_overwrite(path, false)
                .map_err(|e| fail(format!("cannot open {}", path.display()), e))?,
            false,
        ),
        Err(e) => return Err(fail(format!("cannot open {}", path.display()), e)),
    };
    let size = sys::device_size(&f)
        .or_else(|_| f.metadata().map(|m| m.len()))
        .map_err(|e| fail("cannot read the device size".into(), e))?;
    let mut f = f;
    let mut buf = AlignedBuf::new(CHUNK);
    let total_passes = passes.len() as u32;
    for (i, op) in passes.iter().enumerate() {
        let pass = i as u32 + 1;
        let mut rng = Xoshiro256pp::from_entropy();
        if *op == Operation::ZeroPass {
            buf.as_mut().fill(0);
        }
        let report = |done: u64| {
            (ctx.progress)(&Progress {
                device,
                operation: *op,
                pass,
                passes: total_passes,
                bytes_done: done,
                bytes_total: size,
            })
        };
        report(0);
        let mut ticker = Ticker::new();
        let mut off = 0u64;
        while off < size {
            if ctx.cancelled() {
                return Err(StepError::Cancelled);
            }
            let n = (size - off).min(CHUNK as u64) as usize;
            let chunk = &mut buf.as_mut()[..n];
            if *op == Operation::RandomPass {
                rng.fill(chunk);
            }
            match f.write_all_at(chunk, off) {
                Ok(()) => {}
                // A device that takes O_DIRECT opens but not an unaligned
                // tail (size not a multiple of 4 KiB): finish through the cache.
                Err(e) if direct && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    f = open_for_overwrite(path, false)
                        .map_err(|e| fail(format!("cannot reopen {}", path.display()), e))?;
                    direct = false;
                    continue;
                }
                Err(e) => {
                    return Err(fail(format!("{op} pass {pass}: write at offset {off}"), e));
                }
            }
            off += n as u64;
            if ticker.due() {
                report(off);
            }
        }
        f.sync_data()
            .map_err(|e| fail(format!("{op} pass {pass}: fsync"), e))?;
        report(size);
    }
    if let Err(e) = sys::flush_buffers(&f) {
        log::debug!("BLKFLSBUF on {device}: {e}");
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_the_reference_implementation() {
        // First outputs of the reference C code (prng.di.unimi.it) for the
        // state {1, 2, 3, 4}.
        let mut r = Xoshiro256pp::from_seed([1, 2, 3, 4]);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            vec![
                41_943_041,
                58_720_359,
                3_588_806_011_781_223,
                3_591_011_842_654_386
            ]
        );
    }

    #[test]
    fn fill_handles_odd_lengths_and_is_not_constant() {
        let mut r = Xoshiro256pp::from_seed([7, 7, 7, 7]);
        let mut b = vec![0u8; 4099];
        r.fill(&mut b);
        let zeros = b.iter().filter(|&&x| x == 0).count();
        assert!(zeros < 100, "{zeros} zero bytes in 4099 random bytes");
        let mut r2 = Xoshiro256pp::from_entropy();
        let mut r3 = Xoshiro256pp::from_entropy();
        assert_ne!(r2.next_u64(), r3.next_u64());
    }

    #[test]
    fn pass_lists_follow_shred() {
        use Operation::*;
        assert_eq!(passes(1, true), vec![RandomPass, ZeroPass]);
        assert_eq!(passes(3, false), vec![RandomPass, RandomPass, RandomPass]);
        assert_eq!(passes(0, true), vec![ZeroPass]);
        assert!(passes(0, false).is_empty());
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        let mut b = AlignedBuf::new(CHUNK);
        assert_eq!(b.as_mut().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_mut().len(), CHUNK);
    }
}
