//! Config drive decoding: `configdrive::decode(value, fetch)` must stay within
//! `MAX_CONFIG_DRIVE_BYTES` of output for any input (gzip bombs included) and never panic.
//!
//! Input: one mode byte, then the payload. Mutating base64 text only rarely reaches the gzip
//! and ISO code behind it, so the harness can encode the payload itself:
//! - `0`: the payload is the `configdrive` value as Ironic sends it (a string);
//! - `1`: the payload is the decoded bytes; the value is their base64;
//! - `2`: as `1`, base64 wrapped at 76 columns with CRLF (line-wrapped files from a server);
//! - `3`: the value is an http URL and the fetch closure returns the payload as the body
//!   (base64 or binary, IPA's "not base64 encoded, assuming binary");
//! - other: the value is an http URL whose fetch fails (no network is ever used).
#![no_main]

use base64::Engine;
use ferric_imagewriter::configdrive::{decode, MAX_CONFIG_DRIVE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let no_fetch = |_: &str| -> Result<Vec<u8>, String> { Err("no fetch".into()) };
    let serve_payload = |_: &str| -> Result<Vec<u8>, String> { Ok(payload.to_vec()) };
    let result = match mode {
        0 => decode(&String::from_utf8_lossy(payload), &no_fetch),
        1 => decode(&b64.encode(payload), &no_fetch),
        2 => {
            let encoded = b64.encode(payload);
            let wrapped: Vec<&str> = encoded
                .as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
                .collect();
            decode(&wrapped.join("\r\n"), &no_fetch)
        }
        3 => decode("http://127.0.0.1:9/configdrive", &serve_payload),
        _ => decode(
            &format!("https://{}", String::from_utf8_lossy(payload)),
            &no_fetch,
        ),
    };
    if let Ok(image) = result {
        assert!(!image.is_empty(), "decode returned an empty config drive");
        assert!(
            image.len() as u64 <= MAX_CONFIG_DRIVE_BYTES,
            "decode returned {} bytes, over the {MAX_CONFIG_DRIVE_BYTES} limit",
            image.len()
        );
    }
});
