//! The floor of an image deploy, for scripts/bench.sh: the least work any agent must do.
//!
//! `floor URL DEVICE [sha256|sha512]`: one blocking reqwest GET, every byte through the digest
//! and written sequentially to DEVICE in 4 MiB O_DIRECT writes (like `dd oflag=direct`; buffered
//! for a ragged tail or when O_DIRECT is refused), then fsync. No format detection, no held-back
//! MiB, no zero detection, no second thread. Prints
//! `floor: <bytes> bytes in <seconds> s, <algo> <hex>`.

use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

use ferric_imagewriter::io::read_full;
use ferric_imagewriter::sys::AlignedBuf;

use sha2::Digest;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: floor URL DEVICE [sha256|sha512]");
        std::process::exit(2);
    }
    let (url, device) = (&args[1], &args[2]);
    let algo = args.get(3).map(String::as_str).unwrap_or("sha256");
    let started = Instant::now();
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .expect("HTTP client");
    let mut resp = client
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .expect("GET");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .expect("open device");
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
        .ok();
    let mut sha256 = sha2::Sha256::new();
    let mut sha512 = sha2::Sha512::new();
    let mut buf = AlignedBuf::new(4 << 20);
    let mut total = 0u64;
    loop {
        let n = read_full(&mut resp, &mut buf).expect("read body");
        if n == 0 {
            break;
        }
        if algo == "sha512" {
            sha512.update(&buf[..n]);
        } else {
            sha256.update(&buf[..n]);
        }
        match &direct {
            Some(d) if n % 4096 == 0 => d.write_all_at(&buf[..n], total).expect("write"),
            _ => out.write_all_at(&buf[..n], total).expect("write"),
        }
        total += n as u64;
        if n < buf.len() {
            break;
        }
    }
    out.flush().expect("flush");
    out.sync_all().expect("fsync");
    let digest: Vec<u8> = if algo == "sha512" {
        sha512.finalize().to_vec()
    } else {
        sha256.finalize().to_vec()
    };
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "floor: {total} bytes in {:.3} s, {algo} {hex}",
        started.elapsed().as_secs_f64()
    );
}
