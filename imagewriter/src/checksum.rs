//! Streaming md5/sha256/sha512 and checksum-file parsing.
//!
//! Ironic gives the agent either `os_hash_algo` + `os_hash_value` (Glance's multihash), or a
//! legacy `checksum`. Either value may also be the URL of a checksums file (`SHA256SUMS`,
//! CentOS `CHECKSUM`), from which the line for the image's file name is picked. The rules here
//! follow IPA `ironic_python_agent/extensions/standby.py` (`_fetch_checksum`) and Ironic
//! `ironic/common/checksum_utils.py` (`get_checksum_from_url`, algorithm-by-length).

use std::fmt;
use std::str::FromStr;

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

use crate::error::ImageError;

/// A supported digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// MD5: legacy `checksum`; accepted only while Ironic's `agent_md5_checksum_enable` allows.
    Md5,
    /// SHA-256.
    Sha256,
    /// SHA-512 (Glance's default `os_hash_algo`).
    Sha512,
}

impl HashAlgo {
    /// Length of the hex digest.
    pub fn hex_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 32,
            HashAlgo::Sha256 => 64,
            HashAlgo::Sha512 => 128,
        }
    }

    /// Guess the algorithm of a bare hex digest from its length, as Ironic does for a
    /// `checksum` without an algorithm (`checksum_utils.get_checksum_and_algo`: 128 → sha512,
    /// 64 → sha256, 32 → md5).
    pub fn from_hex_len(len: usize) -> Option<HashAlgo> {
        match len {
            32 => Some(HashAlgo::Md5),
            64 => Some(HashAlgo::Sha256),
            128 => Some(HashAlgo::Sha512),
            _ => None,
        }
    }

    /// Lowercase name as Glance/Ironic spell it.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = ImageError;

    /// Parses `md5`, `sha256`, `sha512` (any case; `sha-256` style dashes tolerated).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "").as_str() {
            "md5" => Ok(HashAlgo::Md5),
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            other => Err(ImageError::InvalidChecksum(format!(
                "unsupported hash algorithm {other:?} (supported: md5, sha256, sha512)"
            ))),
        }
    }
}

enum Inner {
    Md5(Md5),
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Incremental hasher over one of the [`HashAlgo`]s.
pub struct StreamHasher {
    algo: HashAlgo,
    inner: Inner,
}

impl StreamHasher {
    /// A fresh hasher for `algo`.
    pub fn new(algo: HashAlgo) -> Self {
        let inner = match algo {
            HashAlgo::Md5 => Inner::Md5(Md5::new()),
            HashAlgo::Sha256 => Inner::Sha256(Sha256::new()),
            HashAlgo::Sha512 => Inner::Sha512(Sha512::new()),
        };
        StreamHasher { algo, inner }
    }

    /// The algorithm in use.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.inner {
            Inner::Md5(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
            Inner::Sha512(h) => h.update(data),
        }
    }

    /// Consume the hasher and return the lowercase hex digest.
    pub fn finalize_hex(self) -> String {
        match self.inner {
            Inner::Md5(h) => to_hex(&h.finalize()),
            Inner::Sha256(h) => to_hex(&h.finalize()),
            Inner::Sha512(h) => to_hex(&h.finalize()),
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// The digest an image must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDigest {
    /// Algorithm.
    pub algo: HashAlgo,
    /// Lowercase hex digest of `algo.hex_len()` characters.
    pub hex: String,
}

impl ExpectedDigest {
    /// Validate `hex` (any case, surrounding whitespace ignored) for `algo`.
    pub fn new(algo: HashAlgo, hex: &str) -> Result<Self, ImageError> {
        let hex = hex.trim();
        if !is_hex(hex) {
            return Err(ImageError::InvalidChecksum(format!(
                "{algo} digest {hex:?} is not a hexadecimal string"
            )));
        }
        if hex.len() != algo.hex_len() {
            return Err(ImageError::InvalidChecksum(format!(
                "{algo} digest {hex:?} has {} hex digits, expected {}",
                hex.len(),
                algo.hex_len()
            )));
        }
        Ok(ExpectedDigest {
            algo,
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// True when `actual_hex` (any case) is this digest.
    pub fn matches(&self, actual_hex: &str) -> bool {
        self.hex.eq_ignore_ascii_case(actual_hex)
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A hex string of a length some supported algorithm produces.
fn is_digest(s: &str) -> bool {
    is_hex(s) && HashAlgo::from_hex_len(s.len()).is_some()
}

/// Upper bound for the text of a checksums file; real ones (distribution `SHA256SUMS`) are a
/// few KiB, and the agent should not buffer an arbitrary body a hostile server sends.
pub const CHECKSUM_FILE_LIMIT: u64 = 4 * 1024 * 1024;

/// Pick the image's digest out of a checksums file.
///
/// Rules (IPA `standby._fetch_checksum`, Ironic `checksum_utils.get_checksum_from_url`):
/// - a file whose only non-empty line is one bare digest (no space) → that digest;
/// - otherwise the first non-comment line naming `image_file_name`, in GNU coreutils form
///   (`HASH  name`, `HASH *name`, also `./name`) or BSD/CentOS form (`SHA256 (name) = HASH`).
///
/// The file name must match exactly (the Python implementations interpolate it into a regex
/// unescaped, so `.` matches anything; we do not copy that). Returns the lowercase hex digest;
/// its algorithm is for the caller to determine.
pub fn parse_checksum_file(text: &str, image_file_name: &str) -> Result<String, ImageError> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(ImageError::InvalidChecksum("checksum file is empty".into()));
    }
    if let [only] = lines[..] {
        if !only.contains(char::is_whitespace) {
            return if is_digest(only) {
                Ok(only.to_ascii_lowercase())
            } else {
                Err(ImageError::InvalidChecksum(format!(
                    "checksum file holds {only:?}, not a md5/sha256/sha512 hex digest"
                )))
            };
        }
    }
    for line in lines {
        if line.starts_with('#') {
            continue;
        }
        if let Some(hash) =
            bsd_line(line, image_file_name).or_else(|| gnu_line(line, image_file_name))
        {
            return Ok(hash.to_ascii_lowercase());
        }
    }
    Err(ImageError::InvalidChecksum(format!(
        "checksum file does not contain a line for {image_file_name:?}"
    )))
}

fn same_name(candidate: &str, wanted: &str) -> bool {
    candidate.strip_prefix("./").unwrap_or(candidate) == wanted
}

/// `ALGO (name) = HASH`
fn bsd_line<'a>(line: &'a str, wanted: &str) -> Option<&'a str> {
    let open = line.find(" (")?;
    let close = line.rfind(") = ")?;
    if close <= open + 2 {
        return None;
    }
    let name = &line[open + 2..close];
    let hash = line[close + 4..].trim();
    (same_name(name, wanted) && is_digest(hash)).then_some(hash)
}

/// `HASH  name` (text mode) or `HASH *name` (binary mode).
fn gnu_line<'a>(line: &'a str, wanted: &str) -> Option<&'a str> {
    let (hash, rest) = line.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let name = rest.strip_prefix('*').unwrap_or(rest).trim_end();
    (same_name(name, wanted) && is_digest(hash)).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(algo: HashAlgo, data: &[u8]) -> String {
        let mut h = StreamHasher::new(algo);
        h.update(data);
        h.finalize_hex()
    }

    #[test]
    fn known_vectors() {
        // FIPS 180-2 / RFC 1321 test vectors.
        assert_eq!(
            digest(HashAlgo::Md5, b""),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            digest(HashAlgo::Md5, b"abc"),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            digest(HashAlgo::Sha256, b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest(HashAlgo::Sha256, b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest(HashAlgo::Sha512, b"abc"),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
        for algo in [HashAlgo::Md5, HashAlgo::Sha256, HashAlgo::Sha512] {
            let mut h = StreamHasher::new(algo);
            for chunk in data.chunks(997) {
                h.update(chunk);
            }
            assert_eq!(h.finalize_hex(), digest(algo, &data), "{algo}");
        }
    }

    #[test]
    fn algo_names() {
        assert_eq!("SHA256".parse::<HashAlgo>().unwrap(), HashAlgo::Sha256);
        assert_eq!("sha-512".parse::<HashAlgo>().unwrap(), HashAlgo::Sha512);
        assert_eq!("md5".parse::<HashAlgo>().unwrap(), HashAlgo::Md5);
        assert!(matches!(
            "sha1".parse::<HashAlgo>(),
            Err(ImageError::InvalidChecksum(_))
        ));
        assert_eq!(HashAlgo::from_hex_len(64), Some(HashAlgo::Sha256));
        assert_eq!(HashAlgo::from_hex_len(40), None);
    }

    #[test]
    fn expected_digest_validation() {
        let hex = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        let d = ExpectedDigest::new(HashAlgo::Sha256, hex).unwrap();
        assert_eq!(d.hex, hex.to_ascii_lowercase());
        assert!(d.matches(&hex.to_ascii_lowercase()));
        assert!(!d.matches("00"));
        assert!(ExpectedDigest::new(HashAlgo::Sha512, hex).is_err());
        assert!(ExpectedDigest::new(HashAlgo::Md5, "zz0150983cd24fb0d6963f7d28e17f72").is_err());
        assert!(ExpectedDigest::new(HashAlgo::Md5, "").is_err());
    }

    const A64: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B64: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn single_hash_file() {
        assert_eq!(
            parse_checksum_file(&format!("{A64}\n"), "x.img").unwrap(),
            A64
        );
        let upper = A64.to_ascii_uppercase();
        assert_eq!(
            parse_checksum_file(&format!("\n  {upper}  \n\n"), "x").unwrap(),
            A64
        );
        assert!(matches!(
            parse_checksum_file("not-a-hash\n", "x.img"),
            Err(ImageError::InvalidChecksum(_))
        ));
        assert!(matches!(
            parse_checksum_file(" \n\n", "x.img"),
            Err(ImageError::InvalidChecksum(_))
        ));
    }

    #[test]
    fn gnu_format() {
        let text = format!(
            "# comment {A64}  disk.raw\n{A64}  other.raw\n{B64}  disk.raw\n{A64}  disk.raw.2\n"
        );
        assert_eq!(parse_checksum_file(&text, "disk.raw").unwrap(), B64);
        let text = format!("{A64} *other.img\n{B64} *disk.img\n");
        assert_eq!(parse_checksum_file(&text, "disk.img").unwrap(), B64);
        let text = format!("{A64}  ./other.img\n{B64}  ./disk.img\n");
        assert_eq!(parse_checksum_file(&text, "disk.img").unwrap(), B64);
        // A single GNU line is a line to match, not a bare hash.
        let text = format!("{A64}  disk.img\n");
        assert_eq!(parse_checksum_file(&text, "disk.img").unwrap(), A64);
    }

    #[test]
    fn bsd_format() {
        let text = format!(
            "SHA256 (CentOS-Stream-GenericCloud-9.qcow2.MANIFEST) = {A64}\n\
             SHA256 (CentOS-Stream-GenericCloud-9.qcow2) = {B64}\n"
        );
        assert_eq!(
            parse_checksum_file(&text, "CentOS-Stream-GenericCloud-9.qcow2").unwrap(),
            B64
        );
    }

    #[test]
    fn missing_or_wrong_name() {
        let text = format!("{A64}  disk.raw\n{B64}  disk.qcow2\n");
        let err = parse_checksum_file(&text, "image.raw").unwrap_err();
        assert!(err.to_string().contains("image.raw"), "{err}");
        // Prefix and suffix of the wanted name do not count, nor does a regex-like match.
        let text = format!("{A64}  mydisk.raw\n{B64}  disk.raw.sig\n{B64}  diskXraw\n");
        assert!(parse_checksum_file(&text, "disk.raw").is_err());
        // A matching name with a malformed hash is not a match.
        let text = "zzzz  disk.raw\n";
        assert!(parse_checksum_file(text, "disk.raw").is_err());
    }
}
