//! Loop devices backed by sparse temp files, created with `losetup -f --show` and detached in
//! `Drop`. Only devices created here are ever touched.
//!
//! The host kernel of this project's machines does not create `loopNpK` nodes for partition
//! tables on loop devices (no partscan), so tests read partitions from the backing file by byte
//! offset; a kernel that does create them is handled too ([`LoopDevice::partition_node`]).

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device attached to a temp file.
pub struct LoopDevice {
    device: PathBuf,
    backing: tempfile::TempPath,
    size: u64,
}

/// Why loop devices cannot be used here (not root, no `losetup`, no `/dev/loop-control`).
pub fn unavailable_reason() -> Option<String> {
    if !crate::util::is_root() {
        return Some("not running as root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing".into());
    }
    match Command::new("losetup").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("losetup --version failed: {}", o.status)),
        Err(e) => Some(format!("losetup not runnable: {e}")),
    }
}

impl LoopDevice {
    /// Creates a sparse file of `size_bytes` (in the temp dir) and attaches it.
    pub fn create(size_bytes: u64) -> io::Result<LoopDevice> {
        let file = tempfile::Builder::new()
            .prefix("ferric-loop-")
            .suffix(".img")
            .tempfile()?;
        file.as_file().set_len(size_bytes)?;
        let backing = file.into_temp_path();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&*backing)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "losetup -f --show {} failed: {}",
                backing.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let digits = name.strip_prefix("/dev/loop").unwrap_or("");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            // Not a name we can trust to detach later: refuse rather than guess.
            return Err(io::Error::other(format!(
                "losetup printed an unexpected device name {name:?} for {}",
                backing.display()
            )));
        }
        let device = PathBuf::from(name);
        Ok(LoopDevice {
            device,
            backing,
            size: size_bytes,
        })
    }

    /// Creates one, or applies the CI rule (panic under CI, `None` + loud skip elsewhere).
    pub fn create_or_skip(test: &str, size_bytes: u64) -> Option<LoopDevice> {
        if let Some(why) = unavailable_reason() {
            crate::util::skip_or_fail(test, &why);
            return None;
        }
        match LoopDevice::create(size_bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                crate::util::skip_or_fail(test, &format!("cannot create a loop device: {e}"));
                None
            }
        }
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// The backing file.
    pub fn backing_file(&self) -> &Path {
        &self.backing
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `/dev/loopNpK` if the kernel created it.
    pub fn partition_node(&self, k: u32) -> Option<PathBuf> {
        let p = PathBuf::from(format!("{}p{k}", self.device.display()));
        p.exists().then_some(p)
    }

    /// Fills the whole device with `byte` (through the device, then syncs).
    pub fn fill(&self, byte: u8) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).open(&self.device)?;
        let buf = vec![byte; 1 << 20];
        let mut left = self.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    }

    /// Reads `len` bytes at `offset` through the device node.
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(&self.device)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // Only our own device, by the exact name losetup gave us. A process that just closed
        // it (or udev probing it) can keep it busy for a moment: retry briefly.
        let mut last = String::new();
        for _ in 0..20 {
            match Command::new("losetup").arg("-d").arg(&self.device).output() {
                Ok(o) if o.status.success() => return,
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => last = format!("cannot run losetup: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!(
            "warning: losetup -d {} failed: {last}",
            self.device.display()
        );
    }
}
