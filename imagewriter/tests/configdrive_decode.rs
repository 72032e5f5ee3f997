//! `configdrive::decode`: what Ironic sends (base64 gzip ISO, or a URL) into ISO bytes, with
//! the 64 MiB bound enforced at every stage, gzip bombs included.

#[path = "fixtures/helpers.rs"]
mod helpers;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ferric_imagewriter::configdrive::{
    decode, ConfigDriveError, MAX_CONFIG_DRIVE_BYTES, MAX_ENCODED_BYTES,
};
use flate2::{Compress, Compression, FlushCompress};
use helpers::*;
use std::cell::RefCell;
use std::io::Write;

fn no_fetch(url: &str) -> Result<Vec<u8>, String> {
    panic!("unexpected fetch of {url}")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Raw deflate of `input` appended to `out`, all input consumed, then `flush` applied.
fn deflate_into(c: &mut Compress, input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
    let start = c.total_in();
    while ((c.total_in() - start) as usize) < input.len() {
        let consumed = (c.total_in() - start) as usize;
        out.reserve(256 * 1024);
        c.compress_vec(&input[consumed..], out, FlushCompress::None)
            .unwrap();
    }
    loop {
        out.reserve(256 * 1024);
        let status = c.compress_vec(&[], out, flush).unwrap();
        // Done when the stream ended or the flush did not fill the buffer.
        if status == flate2::Status::StreamEnd || out.len() < out.capacity() {
            break;
        }
    }
}

/// A single-member gzip stream that inflates to `mib` MiB of zeros, built in milliseconds:
/// after a sync flush the deflate blocks for "1 MiB more zeros" only reference the zeros
/// before them, so one such chunk repeated is a valid stream. CRC and size trailer are
/// correct (CRC combined, not recomputed over the whole output).
fn gzip_zeros(mib: u32) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut c = Compress::new(Compression::best(), false);
    let (mut first, mut next, mut end) = (Vec::new(), Vec::new(), Vec::new());
    deflate_into(&mut c, &zeros, FlushCompress::Sync, &mut first);
    deflate_into(&mut c, &zeros, FlushCompress::Sync, &mut next);
    deflate_into(&mut c, &[], FlushCompress::Finish, &mut end);
    let mut crc = crc32fast::Hasher::new();
    let mut one = crc32fast::Hasher::new();
    one.update(&zeros);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&first);
    crc.combine(&one);
    for _ in 1..mib {
        out.extend_from_slice(&next);
        crc.combine(&one);
    }
    out.extend_from_slice(&end);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&((u64::from(mib) << 20) as u32).to_le_bytes());
    out
}

#[test]
fn the_recorded_config_drive_decodes_to_its_iso() {
    let b64 = std::fs::read_to_string(fixture("configdrive.b64")).unwrap();
    let iso = decode(&b64, &no_fetch).unwrap();
    assert_eq!(iso, recorded_iso());
    assert_eq!(iso.len(), 395_264);
    assert_eq!(&iso[0x8001..0x8006], b"CD001");
    assert_eq!(&iso[0x8028..0x8030], b"config-2");
}

#[test]
fn plain_and_wrapped_base64_decode() {
    let iso = recorded_iso();
    // Not gzipped: accepted as the image itself (IPA would insist on gzip).
    assert_eq!(decode(&STANDARD.encode(&iso), &no_fetch).unwrap(), iso);
    // Line-wrapped at 76 like base64(1), surrounding whitespace, missing padding.
    let gz = gzip(&iso);
    let wrapped: Vec<String> = STANDARD
        .encode(&gz)
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    let value = format!("\n  {}\r\n", wrapped.join("\r\n"));
    assert_eq!(decode(&value, &no_fetch).unwrap(), iso);
    let b64 = STANDARD.encode(&iso);
    assert_eq!(decode(b64.trim_end_matches('='), &no_fetch).unwrap(), iso);
}

#[test]
fn bytes_that_are_no_filesystem_are_refused() {
    // IPA fails on whatever does not gunzip; Ferric also takes a bare ISO or FAT image, but
    // never writes bytes cloud-init could not read as a config drive.
    let garbage: Vec<u8> = (0..256u32 << 10)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (what, value) in [
        ("plain", STANDARD.encode(&garbage)),
        ("gzipped", STANDARD.encode(gzip(&garbage))),
        ("tiny", STANDARD.encode(b"abcd")),
    ] {
        let err = decode(&value, &no_fetch).unwrap_err();
        assert!(
            matches!(err, ConfigDriveError::NotAFilesystem { .. }),
            "{what}: {err}"
        );
        assert!(
            err.to_string().contains("neither ISO 9660 nor FAT"),
            "{err}"
        );
    }
    let err = decode("http://h/cd", &|_| Ok(garbage.clone())).unwrap_err();
    assert!(
        matches!(err, ConfigDriveError::NotAFilesystem { .. }),
        "{err}"
    );
    // A FAT boot sector without a label is a filesystem (written, with a warning).
    let mut fat = vec![0u8; 4096];
    fat[0] = 0xeb;
    fat[11..13].copy_from_slice(&512u16.to_le_bytes());
    fat[510..512].copy_from_slice(&[0x55, 0xaa]);
    assert_eq!(decode(&STANDARD.encode(&fat), &no_fetch).unwrap(), fat);
}

#[test]
fn urls_are_fetched_through_the_closure() {
    let iso = recorded_iso();
    let gz = gzip(&iso);
    let asked = RefCell::new(Vec::new());
    // Base64 of gzip (what Ironic's configdrive URLs usually serve).
    let body = STANDARD.encode(&gz).into_bytes();
    let fetch = |url: &str| {
        asked.borrow_mut().push(url.to_owned());
        Ok(body.clone())
    };
    let url = "http://127.0.0.1:8080/cd/node-1";
    assert_eq!(decode(url, &fetch).unwrap(), iso);
    assert_eq!(*asked.borrow(), [url]);
    // Binary gzip, binary ISO, and an upper-case scheme.
    assert_eq!(decode("HTTPS://h/cd", &|_| Ok(gz.clone())).unwrap(), iso);
    assert_eq!(decode("https://h/cd", &|_| Ok(iso.clone())).unwrap(), iso);
}

#[test]
fn fetch_failures_name_the_url() {
    let err = decode("http://127.0.0.1:1/cd", &|_| {
        Err("connection refused".into())
    })
    .unwrap_err();
    match &err {
        ConfigDriveError::Fetch { url, reason } => {
            assert_eq!(url, "http://127.0.0.1:1/cd");
            assert_eq!(reason, "connection refused");
        }
        e => panic!("{e}"),
    }
    assert!(err.to_string().contains("http://127.0.0.1:1/cd"));
}

#[test]
fn not_base64_is_a_clear_error() {
    for value in ["this is not base64!", "ftp://example.com/cd", "H4sI@@@@"] {
        let err = decode(value, &no_fetch).unwrap_err();
        assert!(
            matches!(err, ConfigDriveError::NotBase64 { .. }),
            "{value}: {err}"
        );
        assert!(err.to_string().contains("base64"), "{err}");
    }
    assert!(matches!(
        decode("  ", &no_fetch),
        Err(ConfigDriveError::Empty)
    ));
    assert!(matches!(
        decode("https://h/empty", &|_| Ok(Vec::new())),
        Err(ConfigDriveError::Empty)
    ));
}

#[test]
fn corrupt_gzip_is_a_clear_error() {
    let mut gz = gzip(&recorded_iso());
    let mid = gz.len() / 2;
    gz[mid..mid + 16].fill(0xff);
    let err = decode(&STANDARD.encode(&gz), &no_fetch).unwrap_err();
    assert!(matches!(err, ConfigDriveError::Gunzip { .. }), "{err}");
    // A truncated stream too.
    let gz = gzip(&recorded_iso());
    let err = decode(&STANDARD.encode(&gz[..gz.len() / 2]), &no_fetch).unwrap_err();
    assert!(matches!(err, ConfigDriveError::Gunzip { .. }), "{err}");
}

#[test]
fn sixty_four_mib_is_accepted_and_one_byte_more_is_not() {
    // Through the URL path with binary bodies (cheap: no base64 of 64 MiB in a debug build).
    // Not base64: taken as binary. An ISO padded with zeros to the limit.
    let mut exact = recorded_iso();
    exact.resize(MAX_CONFIG_DRIVE_BYTES as usize, 0);
    assert_eq!(
        decode("http://h/cd", &|_| Ok(exact.clone())).unwrap().len(),
        exact.len()
    );
    let over = vec![0u8; MAX_CONFIG_DRIVE_BYTES as usize + 1];
    let err = decode("http://h/cd", &|_| Ok(over.clone())).unwrap_err();
    match err {
        ConfigDriveError::TooLarge { size, limit, .. } => {
            assert_eq!(
                (size, limit),
                (MAX_CONFIG_DRIVE_BYTES + 1, MAX_CONFIG_DRIVE_BYTES)
            );
        }
        e => panic!("{e}"),
    }
    // Inline base64 of 64 MiB + 1.
    let err = decode(&STANDARD.encode(&over), &no_fetch).unwrap_err();
    assert!(matches!(err, ConfigDriveError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("67108864"), "{err}");
    // Encoded values beyond any possible config drive are refused before decoding.
    let huge = "A".repeat(MAX_ENCODED_BYTES as usize + 1);
    let err = decode(&huge, &no_fetch).unwrap_err();
    assert!(
        matches!(err, ConfigDriveError::TooLarge { size, .. } if size == MAX_ENCODED_BYTES + 1)
    );
}

#[test]
fn gzip_zeros_generator_is_valid() {
    let gz = gzip_zeros(3);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
    assert_eq!(out.len(), 3 << 20);
    assert!(out.iter().all(|&b| b == 0));
    // And it is small: the point of a bomb.
    assert!(gzip_zeros(1024).len() < 2 << 20);
}

#[test]
fn gzip_bomb_stops_at_the_limit() {
    // 1 GiB of zeros in about 1 MiB of gzip: inflating it fully would take 1 GiB of memory.
    let bomb = gzip_zeros(1024);
    let value = STANDARD.encode(&bomb);
    let err = decode(&value, &no_fetch).unwrap_err();
    match err {
        ConfigDriveError::TooLarge { size, limit, .. } => {
            assert_eq!(limit, MAX_CONFIG_DRIVE_BYTES);
            // Stopped within one read buffer past the limit, not after 1 GiB.
            assert!(size > MAX_CONFIG_DRIVE_BYTES && size <= MAX_CONFIG_DRIVE_BYTES + (1 << 20));
        }
        e => panic!("{e}"),
    }
    // The same through a URL, and a multi-member bomb (Python's gzip reads all members).
    let multi: Vec<u8> = std::iter::repeat_n(gzip_zeros(16), 8).flatten().collect();
    let err = decode("http://h/cd", &|_| Ok(multi.clone())).unwrap_err();
    assert!(matches!(err, ConfigDriveError::TooLarge { .. }), "{err}");
}
