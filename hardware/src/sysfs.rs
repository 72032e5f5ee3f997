//! Small, bounded readers for sysfs/procfs attribute files.
//!
//! sysfs attributes are at most a page; procfs tables can be longer. Reads
//! are capped so that a hostile or broken fixture tree cannot make the agent
//! allocate without bound.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Largest file we read in full (procfs tables such as mountinfo on a busy host
/// stay well below this).
const MAX_READ: u64 = 4 * 1024 * 1024;

/// `root` joined with an absolute-looking path such as `sys/block`.
pub(crate) fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// Reads at most [`MAX_READ`] bytes of `path`.
pub(crate) fn read_bytes(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(MAX_READ).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads `path` as (lossy) UTF-8 text.
pub(crate) fn read_string(path: &Path) -> io::Result<String> {
    Ok(String::from_utf8_lossy(&read_bytes(path)?).into_owned())
}

/// Reads an attribute, trimmed; `None` when it is missing, unreadable or blank.
///
/// Optional attributes vary by driver and kernel version, so their absence is
/// not an error.
pub(crate) fn attr(path: &Path) -> Option<String> {
    let s = read_string(path).ok()?;
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Reads an attribute as an unsigned integer; `None` when missing or not a number.
pub(crate) fn attr_u64(path: &Path) -> Option<u64> {
    attr(path)?.parse().ok()
}

/// Parses a `major:minor` device number as found in `dev` files and mountinfo.
pub(crate) fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.trim().split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

/// Names of the entries of a directory, sorted; empty when it does not exist.
pub(crate) fn dir_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(path) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Parses the `KEY=value` lines of a sysfs `uevent` file and returns `key`'s value.
pub(crate) fn uevent_value(path: &Path, key: &str) -> Option<String> {
    let text = read_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k == key && !v.trim().is_empty()).then(|| v.trim().to_string())
    })
}
