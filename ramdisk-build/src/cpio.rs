//! A reproducible writer (and a strict reader) for the `newc` cpio format, the only format
//! the Linux kernel unpacks into the initramfs (`Documentation/driver-api/early-userspace/
//! buffer-format.rst`, `init/initramfs.c`).
//!
//! Reproducibility: entries are kept in a `BTreeMap` keyed by path, so they are written in
//! byte order of their paths, which also puts every directory before its contents; every
//! entry has mtime 0, uid/gid 0, and inode numbers are assigned 1, 2, 3… in that order. The
//! same set of entries therefore always gives the same bytes, whatever order they were added
//! in.
//!
//! The reader exists for tests and for inspecting an archive; it refuses anything malformed
//! with an error instead of panicking.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// `newc` magic: "new ASCII" format without checksums.
const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends the archive.
const TRAILER: &str = "TRAILER!!!";
/// Size of a `newc` header: 6 bytes magic + 13 fields of 8 hex digits.
const HEADER_LEN: usize = 110;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const S_IFMT: u32 = 0o170000;

/// Errors from building or parsing an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The path is empty, contains `.`/`..` components, NUL bytes or empty components.
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Adding the entry would replace or nest under a different kind of entry.
    #[error("archive path {path:?} already exists as a {existing}")]
    Conflict {
        /// The path as normalised.
        path: String,
        /// Kind of the entry already there.
        existing: &'static str,
    },
    /// A file is larger than the format's 32-bit size field.
    #[error("{path:?} is {size} bytes, more than newc's 4 GiB limit")]
    TooLarge {
        /// The path.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The bytes are not a well-formed newc archive.
    #[error("malformed cpio at offset {offset}: {reason}")]
    Malformed {
        /// Byte offset where parsing failed.
        offset: usize,
        /// What was wrong.
        reason: String,
    },
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link with its target.
    Symlink(String),
    /// A character device node.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

impl EntryKind {
    fn type_bits(&self) -> u32 {
        match self {
            EntryKind::Dir => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::Symlink(_) => S_IFLNK,
            EntryKind::CharDevice { .. } => S_IFCHR,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            EntryKind::Dir => "directory",
            EntryKind::File(_) => "file",
            EntryKind::Symlink(_) => "symlink",
            EntryKind::CharDevice { .. } => "character device",
        }
    }
}

/// One archive member: permission bits (`0o7777` part of the mode) and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Permission bits, e.g. `0o755`.
    pub perm: u32,
    /// What the entry is.
    pub kind: EntryKind,
}

/// An in-memory set of entries that serialises to a reproducible newc archive.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// Normalises an archive path: strips leading `/`, refuses empty, `.`, `..` and empty
/// components (the kernel would happily create `../x` relative to rootfs's cwd).
fn normalize(path: &str) -> Result<String, CpioError> {
    let invalid = |reason| CpioError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(invalid("empty path"));
    }
    if trimmed.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    for comp in trimmed.split('/') {
        match comp {
            "" => return Err(invalid("empty component")),
            "." | ".." => return Err(invalid("`.` or `..` component")),
            _ => {}
        }
    }
    if trimmed == TRAILER {
        return Err(invalid("reserved trailer name"));
    }
    Ok(trimmed.to_string())
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (directories included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize(path).ok().and_then(|p| self.entries.get(&p))
    }

    /// Iterates entries in archive order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Adds a directory (and its missing parents, mode 0755). Re-adding a directory updates
    /// its permissions.
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry {
                perm,
                kind: EntryKind::Dir,
            },
        )
    }

    /// Adds (or replaces) a regular file, creating missing parent directories.
    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), CpioError> {
        if data.len() as u64 > u64::from(u32::MAX) {
            return Err(CpioError::TooLarge {
                path: path.to_string(),
                size: data.len() as u64,
            });
        }
        self.insert(
            path,
            Entry {
                perm,
                kind: EntryKind::File(data),
            },
        )
    }

    /// Adds (or replaces) a symbolic link, creating missing parent directories.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::InvalidPath {
                path: target.to_string(),
                reason: "invalid symlink target",
            });
        }
        self.insert(
            path,
            Entry {
                perm: 0o777,
                kind: EntryKind::Symlink(target.to_string()),
            },
        )
    }

    /// Adds a character device node (e.g. `dev/console`, which the kernel opens before it
    /// runs `/init`, so it must exist in the archive itself).
    pub fn add_char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.insert(
            path,
            Entry {
                perm,
                kind: EntryKind::CharDevice { major, minor },
            },
        )
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let path = normalize(path)?;
        // Every proper prefix must be (or become) a directory.
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.entries.get(parent) {
                Some(Entry {
                    kind: EntryKind::Dir,
                    ..
                }) => {}
                Some(other) => {
                    return Err(CpioError::Conflict {
                        path: parent.to_string(),
                        existing: other.kind.describe(),
                    })
                }
                None => {
                    self.entries.insert(
                        parent.to_string(),
                        Entry {
                            perm: 0o755,
                            kind: EntryKind::Dir,
                        },
                    );
                }
            }
            end += pos + 1;
        }
        if let Some(existing) = self.entries.get(&path) {
            let both_dirs = existing.kind == EntryKind::Dir && entry.kind == EntryKind::Dir;
            let dir_involved = existing.kind == EntryKind::Dir || entry.kind == EntryKind::Dir;
            if dir_involved && !both_dirs {
                return Err(CpioError::Conflict {
                    path,
                    existing: existing.kind.describe(),
                });
            }
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Writes the archive (entries in path order, then the trailer) and returns the number of
    /// bytes written.
    pub fn write_to<W: Write>(&self, mut w: W) -> io::Result<u64> {
        let mut written = 0u64;
        for (ino, (path, entry)) in (1u32..).zip(self.entries.iter()) {
            let (data, nlink, rdev): (&[u8], u32, (u32, u32)) = match &entry.kind {
                EntryKind::Dir => (&[], 2, (0, 0)),
                EntryKind::File(d) => (d, 1, (0, 0)),
                EntryKind::Symlink(t) => (t.as_bytes(), 1, (0, 0)),
                EntryKind::CharDevice { major, minor } => (&[], 1, (*major, *minor)),
            };
            let mode = entry.kind.type_bits() | (entry.perm & 0o7777);
            written += write_header(&mut w, ino, mode, nlink, data.len() as u32, rdev, path)?;
            w.write_all(data)?;
            written += data.len() as u64 + write_pad(&mut w, data.len())?;
        }
        written += write_header(&mut w, 0, 0, 1, 0, (0, 0), TRAILER)?;
        Ok(written)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing to a Vec cannot fail");
        out
    }
}

fn write_pad<W: Write>(w: &mut W, len: usize) -> io::Result<u64> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])?;
    Ok(pad as u64)
}

fn write_header<W: Write>(
    w: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<u64> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        filesize,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check
    ];
    let mut header = Vec::with_capacity(HEADER_LEN + namesize + 3);
    header.extend_from_slice(MAGIC);
    for f in fields {
        header.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    header.extend_from_slice(name.as_bytes());
    header.push(0);
    let pad = (4 - header.len() % 4) % 4;
    header.extend_from_slice(&[0u8; 3][..pad]);
    w.write_all(&header)?;
    Ok(header.len() as u64)
}

/// One member as read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    /// Path inside the archive.
    pub path: String,
    /// Full mode (type and permission bits).
    pub mode: u32,
    /// Inode number.
    pub ino: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: u32,
    /// Device numbers for device nodes.
    pub rdev: (u32, u32),
    /// Contents (symlink target for links).
    pub data: Vec<u8>,
}

impl ReadEntry {
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    /// True for symbolic links.
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
    /// True for regular files.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

/// Parses a complete newc archive (up to and including its trailer). Trailing zero padding
/// after the trailer is accepted; anything else is an error.
pub fn read_newc(bytes: &[u8]) -> Result<Vec<ReadEntry>, CpioError> {
    let mut off = 0usize;
    let mut out = Vec::new();
    let err = |offset: usize, reason: String| CpioError::Malformed { offset, reason };
    loop {
        let header = bytes
            .get(off..off + HEADER_LEN)
            .ok_or_else(|| err(off, "truncated header".into()))?;
        if &header[..6] != MAGIC {
            return Err(err(off, "bad magic (not newc)".into()));
        }
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let hex = &header[6 + i * 8..14 + i * 8];
            let s = std::str::from_utf8(hex).map_err(|_| err(off, "non-ASCII header".into()))?;
            *f = u32::from_str_radix(s, 16)
                .map_err(|_| err(off + 6 + i * 8, format!("bad hex field {s:?}")))?;
        }
        let [ino, mode, uid, gid, _nlink, mtime, filesize, _dmaj, _dmin, rmaj, rmin, namesize, _check] =
            fields;
        let namesize = namesize as usize;
        if namesize == 0 {
            return Err(err(off, "zero name size".into()));
        }
        let name_start = off + HEADER_LEN;
        let name = bytes
            .get(name_start..name_start + namesize)
            .ok_or_else(|| err(name_start, "truncated name".into()))?;
        if name[namesize - 1] != 0 {
            return Err(err(name_start, "name not NUL-terminated".into()));
        }
        let name = std::str::from_utf8(&name[..namesize - 1])
            .map_err(|_| err(name_start, "name is not UTF-8".into()))?
            .to_string();
        let data_start = align4(name_start + namesize);
        let data_end = data_start
            .checked_add(filesize as usize)
            .ok_or_else(|| err(data_start, "size overflow".into()))?;
        let data = bytes
            .get(data_start..data_end)
            .ok_or_else(|| err(data_start, format!("truncated data for {name:?}")))?;
        off = align4(data_end);
        if name == TRAILER {
            let rest = bytes.get(off..).unwrap_or(&[]);
            if rest.iter().any(|&b| b != 0) {
                return Err(err(off, "data after trailer".into()));
            }
            return Ok(out);
        }
        out.push(ReadEntry {
            path: name,
            mode,
            ino,
            uid,
            gid,
            mtime,
            rdev: (rmaj, rmin),
            data: data.to_vec(),
        });
    }
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("/usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .unwrap();
        a.add_symlink("bin/sh", "busybox").unwrap();
        a.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        a.add_dir("tmp", 0o1777).unwrap();
        a.add_file("init", 0o755, b"x".to_vec()).unwrap();
        a
    }

    #[test]
    fn header_bytes_match_the_newc_layout() {
        let mut a = Archive::new();
        a.add_file("a", 0o644, b"hello".to_vec()).unwrap();
        let bytes = a.to_bytes();
        let expected_header = concat!(
            "070701", "00000001", "000081A4", "00000000", "00000000", "00000001", "00000000",
            "00000005", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
        );
        assert_eq!(&bytes[..110], expected_header.as_bytes());
        // name "a\0" ends at 112, already aligned; data then padding to 120.
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..117], b"hello");
        assert_eq!(&bytes[117..120], &[0, 0, 0]);
        assert_eq!(&bytes[120..126], b"070701");
        assert_eq!(&bytes[230..241], b"TRAILER!!!\0");
        assert_eq!(bytes.len(), 244);
    }

    #[test]
    fn round_trips_through_own_reader() {
        let bytes = sample().to_bytes();
        let entries = read_newc(&bytes).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/tool"
            ]
        );
        let inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        assert_eq!(inos, (1..=9).collect::<Vec<_>>());
        assert!(entries
            .iter()
            .all(|e| e.mtime == 0 && e.uid == 0 && e.gid == 0));
        let sh = &entries[1];
        assert!(sh.is_symlink());
        assert_eq!(sh.data, b"busybox");
        assert_eq!(entries[3].mode, 0o020600);
        assert_eq!(entries[3].rdev, (5, 1));
        assert_eq!(entries[5].mode, 0o041777);
        assert!(entries[8].is_file());
        assert_eq!(entries[8].mode & 0o7777, 0o755);
        assert_eq!(entries[8].data, b"#!/bin/sh\necho hi\n");
    }

    #[test]
    fn insertion_order_does_not_change_bytes() {
        let mut b = Archive::new();
        b.add_file("init", 0o755, b"x".to_vec()).unwrap();
        b.add_dir("tmp", 0o1777).unwrap();
        b.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        b.add_symlink("bin/sh", "busybox").unwrap();
        b.add_file("usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .unwrap();
        assert_eq!(sample().to_bytes(), b.to_bytes());
    }

    #[test]
    fn parents_come_before_children_even_with_sibling_prefixes() {
        let mut a = Archive::new();
        a.add_file("a/b", 0o644, vec![]).unwrap();
        a.add_file("a-b", 0o644, vec![]).unwrap();
        a.add_file("a.b/c", 0o644, vec![]).unwrap();
        let entries = read_newc(&a.to_bytes()).unwrap();
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                assert!(seen.contains(parent), "{} before its parent", e.path);
            }
            seen.insert(e.path.clone());
        }
    }

    #[test]
    fn refuses_bad_paths_and_conflicts() {
        let mut a = Archive::new();
        for bad in ["", "/", "a/../b", "./a", "a//b", "TRAILER!!!", "a\0b"] {
            assert!(
                matches!(
                    a.add_file(bad, 0o644, vec![]),
                    Err(CpioError::InvalidPath { .. })
                ),
                "{bad:?} accepted"
            );
        }
        a.add_file("x", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.add_file("x/y", 0o644, vec![]),
            Err(CpioError::Conflict {
                existing: "file",
                ..
            })
        ));
        a.add_dir("d", 0o755).unwrap();
        assert!(matches!(
            a.add_symlink("d", "x"),
            Err(CpioError::Conflict {
                existing: "directory",
                ..
            })
        ));
        // Replacing a file with a file is allowed (later wins).
        a.add_file("x", 0o600, b"2".to_vec()).unwrap();
        assert_eq!(a.get("/x").unwrap().perm, 0o600);
    }

    /// GNU cpio is an independent reader: it must list the same members and extract the
    /// same bytes, modes and link targets. Fails in CI without cpio, skips loudly elsewhere.
    #[test]
    fn gnu_cpio_reads_the_archive() {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt;
        use std::process::{Command, Stdio};
        if Command::new("cpio").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but GNU cpio is not installed (apt-get install cpio)"
            );
            eprintln!("\n!!! SKIPPING gnu_cpio_reads_the_archive: cpio not installed !!!\n");
            return;
        }
        let run = |args: &[&str], dir: &std::path::Path, input: &[u8]| {
            let mut child = Command::new("cpio")
                .args(args)
                .current_dir(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "cpio {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let listed = run(
            &["-i", "--list", "--quiet"],
            dir.path(),
            &sample().to_bytes(),
        );
        let ours: Vec<String> = sample().iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(listed.lines().collect::<Vec<_>>(), ours);

        // Extract an archive without device nodes and compare what landed on disk.
        let mut a = sample();
        a.entries.remove("dev/console");
        a.entries.remove("dev");
        run(
            &["-i", "-d", "--quiet", "--no-absolute-filenames"],
            dir.path(),
            &a.to_bytes(),
        );
        let root = dir.path();
        assert_eq!(
            std::fs::read(root.join("usr/bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let mode = std::fs::metadata(root.join("usr/bin/tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            std::path::Path::new("busybox")
        );
        let tmp_mode = std::fs::metadata(root.join("tmp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(tmp_mode & 0o7777, 0o1777);
    }

    #[test]
    fn reader_rejects_malformed_input_without_panicking() {
        let good = sample().to_bytes();
        assert!(read_newc(&good[..good.len() - 1]).is_err());
        assert!(read_newc(&good[..50]).is_err());
        assert!(read_newc(b"").is_err());
        let mut bad_magic = good.clone();
        bad_magic[5] = b'2';
        assert!(read_newc(&bad_magic).is_err());
        let mut bad_hex = good.clone();
        bad_hex[10] = b'Z';
        assert!(read_newc(&bad_hex).is_err());
        let mut garbage_after = good.clone();
        garbage_after.extend_from_slice(b"junk");
        assert!(read_newc(&garbage_after).is_err());
        let mut zero_pad = good.clone();
        zero_pad.extend_from_slice(&[0; 512]);
        assert_eq!(read_newc(&zero_pad).unwrap().len(), 9);
        // Every truncation point fails cleanly.
        for cut in (0..good.len()).step_by(7) {
            assert!(read_newc(&good[..cut]).is_err());
        }
    }
}
