//! Loop devices for cleaning tests: created from temp files with
//! `losetup -f --show`, detached (and any partitions the test added
//! removed) on drop. Nothing here touches a device it did not create.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Root, loop devices, losetup and blkid. Missing: fail under CI, else skip loudly.
pub fn root_facility(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let ok = root && Path::new("/dev/loop-control").exists() && have("losetup") && have("blkid");
    if !ok {
        let msg = format!("{test}: needs root, /dev/loop-control, losetup and blkid (root={root})");
        if in_ci() {
            panic!("{msg}; CI is set, so this fails instead of skipping");
        }
        eprintln!("\n*** SKIPPING {msg} ***\n");
    }
    ok
}

/// A tool one part of a test needs. Missing: fail under CI (scripts/lib.sh
/// installs it there), else skip that part loudly.
pub fn tool(test: &str, name: &str) -> bool {
    if have(name) {
        return true;
    }
    if in_ci() {
        panic!("{test}: {name} is missing (CI is set; scripts/lib.sh PACKAGES should install it)");
    }
    eprintln!("\n*** {test}: {name} is missing, SKIPPING the part that needs it ***\n");
    false
}

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    run_env(cmd, args, &[])
}

pub fn run_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A backing file filled with a byte pattern.
pub struct Backing {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub size: u64,
}

impl Backing {
    pub fn new(size: u64, pattern: u8) -> Backing {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let mut f = File::create(&path).expect("create backing file");
        let chunk = vec![pattern; MIB as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(MIB);
            f.write_all(&chunk[..n as usize])
                .expect("fill backing file");
            left -= n;
        }
        f.sync_all().expect("sync backing file");
        Backing {
            _dir: dir,
            path,
            size,
        }
    }

    /// The whole file.
    pub fn read(&self) -> Vec<u8> {
        let mut v = Vec::new();
        File::open(&self.path)
            .expect("open backing file")
            .read_to_end(&mut v)
            .expect("read backing file");
        v
    }

    /// Writes bytes at an offset of the file (before a loop device is attached).
    pub fn write_at(&self, offset: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("open");
        f.write_all_at(data, offset).expect("write");
        f.sync_all().expect("sync");
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

/// An attached loop device.
pub struct Loop {
    pub dev: PathBuf,
    pub kname: String,
    added: Vec<u32>,
}

fn kernel_partitions_of(kname: &str) -> Vec<String> {
    let dir = Path::new("/sys/block").join(kname);
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(kname) && dir.join(n).join("partition").exists())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Loop {
    fn attach_args(args: &[&str]) -> Loop {
        // A loop device can keep partitions another user added with BLKPG
        // after it was detached; such a device is not used (and not touched):
        // it stays attached while another one is picked, then is released.
        let mut rejects = Vec::new();
        let mut picked = None;
        for _ in 0..8 {
            let mut a = vec!["-f", "--show"];
            a.extend_from_slice(args);
            let dev = run("losetup", &a).trim().to_string();
            let kname = dev.trim_start_matches("/dev/").to_string();
            let l = Loop {
                dev: PathBuf::from(&dev),
                kname,
                added: Vec::new(),
            };
            if kernel_partitions_of(&l.kname).is_empty() {
                picked = Some(l);
                break;
            }
            rejects.push(l);
        }
        drop(rejects);
        picked.expect("no loop device without stale partitions after 8 tries")
    }

    /// The whole backing file.
    pub fn attach(b: &Backing) -> Loop {
        Loop::attach_args(&[b.path_str()])
    }

    /// The whole backing file, read-only.
    pub fn attach_read_only(b: &Backing) -> Loop {
        Loop::attach_args(&["-r", b.path_str()])
    }

    /// A window of the backing file (to put a filesystem "into a partition").
    pub fn attach_range(b: &Backing, offset: u64, len: u64) -> Loop {
        let o = offset.to_string();
        let l = len.to_string();
        Loop::attach_args(&["-o", &o, "--sizelimit", &l, b.path_str()])
    }

    pub fn path_str(&self) -> &str {
        self.dev.to_str().expect("utf-8 device path")
    }

    /// Adds a kernel partition with BLKPG (`addpart`); removed again on drop.
    pub fn add_partition(&mut self, pno: u32, start: u64, len: u64) {
        run(
            "addpart",
            &[
                self.path_str(),
                &pno.to_string(),
                &(start / 512).to_string(),
                &(len / 512).to_string(),
            ],
        );
        self.added.push(pno);
    }

    /// Partitions the kernel lists for this device.
    pub fn kernel_partitions(&self) -> Vec<String> {
        kernel_partitions_of(&self.kname)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // Partitions added with BLKPG outlive the loop device's binding, so
        // they are removed first (retrying while a prober holds them open).
        for pno in &self.added {
            let name = format!("{}p{pno}", self.kname);
            for _ in 0..20 {
                if !self.kernel_partitions().contains(&name) {
                    break;
                }
                let _ = Command::new("delpart")
                    .args([self.path_str(), &pno.to_string()])
                    .status();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let _ = Command::new("losetup")
            .args(["-d", self.path_str()])
            .status();
    }
}

/// What `blkid -p` finds at `offset` (a region of `len` bytes) of `dev`:
/// the `TYPE` or `PTTYPE` values, empty when it finds nothing.
pub fn blkid_types(dev: &Path, offset: u64, len: u64) -> Vec<String> {
    let out = Command::new("blkid")
        .args([
            "-p",
            "-O",
            &offset.to_string(),
            "-S",
            &len.to_string(),
            dev.to_str().expect("utf-8"),
        ])
        .output()
        .expect("run blkid");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut types = Vec::new();
    for key in [" TYPE=\"", " PTTYPE=\""] {
        if let Some(i) = text.find(key) {
            let rest = &text[i + key.len()..];
            types.push(rest[..rest.find('"').unwrap_or(rest.len())].to_string());
        }
    }
    // Exit 2 = nothing found; anything else without output is an error.
    if types.is_empty() {
        assert_eq!(
            out.status.code(),
            Some(2),
            "blkid failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    types
}
