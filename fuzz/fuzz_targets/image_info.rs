//! Ironic's `image_info`: `write::ImageSpec::from_image_info(&json, md5_allowed, &http)`, run
//! with md5 allowed and refused.
//!
//! No network, ever: a checksum that is an http(s) URL makes the parser fetch a checksums
//! file, so before parsing the harness points such a value at a closed port on 127.0.0.1
//! (and every proxy at the same closed port), with no retries and short timeouts. The fetch
//! then fails at once with "connection refused", which is still a path worth fuzzing.
//!
//! Input: `image_info` as JSON.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use ferric_imagewriter::checksum::HashAlgo;
use ferric_imagewriter::download::HttpOptions;
use ferric_imagewriter::write::ImageSpec;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A loopback port nothing listens on: bound once to get a free number, then released.
fn closed_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        l.local_addr().expect("local address").port()
    })
}

fn looks_fetchable(s: &str) -> bool {
    let s = s.trim_start().to_ascii_lowercase();
    s.starts_with("http") || s.contains("://")
}

/// Keep the parser off the network (see the module comment).
fn confine(info: &mut Value) {
    let Some(obj) = info.as_object_mut() else {
        return;
    };
    let local = format!("http://127.0.0.1:{}", closed_port());
    let mut fetches = false;
    for key in ["checksum", "os_hash_value"] {
        if let Some(Value::String(s)) = obj.get_mut(key) {
            if looks_fetchable(s) {
                *s = format!("{local}/SHA256SUMS");
                fetches = true;
            }
        }
    }
    if fetches {
        if let Some(Value::Object(proxies)) = obj.get_mut("proxies") {
            for v in proxies.values_mut() {
                if v.is_string() {
                    *v = Value::String(local.clone());
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut info) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    confine(&mut info);
    let base = HttpOptions {
        retries: 0,
        connect_timeout: Duration::from_millis(200),
        read_timeout: Duration::from_millis(200),
        retry_interval: Duration::ZERO,
        ..Default::default()
    };
    let strict = ImageSpec::from_image_info(&info, false, &base);
    let lenient = ImageSpec::from_image_info(&info, true, &base);
    for (spec, md5_allowed) in [(&strict, false), (&lenient, true)] {
        if let Ok(spec) = spec {
            assert!(!spec.urls.is_empty());
            for u in &spec.urls {
                assert!(u.starts_with("http://") || u.starts_with("https://"), "{u}");
            }
            assert_eq!(spec.expected.hex.len(), spec.expected.algo.hex_len());
            assert!(md5_allowed || spec.expected.algo != HashAlgo::Md5);
        }
    }
    // Allowing md5 only ever widens what is accepted, and never changes an accepted result.
    if let Ok(s) = &strict {
        assert_eq!(Some(s), lenient.as_ref().ok());
    }
});
