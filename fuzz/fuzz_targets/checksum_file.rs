//! Checksum files fetched from an image server: `parse_checksum_file(text, name)`.
//!
//! Input: the image file name on the first line, the checksum file after it (UTF-8, invalid
//! bytes become U+FFFD as the agent's `from_utf8_lossy` of the body does).
#![no_main]

use ferric_imagewriter::checksum::{parse_checksum_file, HashAlgo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, body) = text.split_once('\n').unwrap_or(("", &text));
    if let Ok(hex) = parse_checksum_file(body, name) {
        // Whatever was picked must be a lowercase hex digest of a supported length.
        assert!(
            HashAlgo::from_hex_len(hex.len()).is_some(),
            "digest {hex:?} has no supported length"
        );
        assert!(
            hex.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "digest {hex:?} is not lowercase hex"
        );
    }
});
