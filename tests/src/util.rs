//! Small helpers shared by the fakes and the suites: query-string decoding, free ports,
//! polling with a deadline, truncation for failure dumps, and the CI skip/fail rule.

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Decodes `application/x-www-form-urlencoded` text (`%XX` escapes and `+` for space), the way
/// python-requests encodes query strings. Invalid escapes are kept literally.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query component (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits a raw query string into decoded `(key, value)` pairs, in order.
pub fn parse_query(raw: Option<&str>) -> Vec<(String, String)> {
    let Some(raw) = raw else { return Vec::new() };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
/// Used to hand the agent a `--listen` address; the tiny race is acceptable in tests.
pub fn free_local_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Polls `cond` every `every` until it returns `Some` or `timeout` elapses.
pub fn poll_until<T>(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Shortens `s` to at most `max` characters, saying how long it was.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max).collect();
    format!("{head}…<{} chars>", s.chars().count())
}

/// Replaces every JSON string longer than `max` characters by a truncated version, for dumps.
pub fn truncate_json(v: &serde_json::Value, max: usize) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(truncate(s, max)),
        Value::Array(a) => Value::Array(a.iter().map(|x| truncate_json(x, max)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), truncate_json(x, max)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// True when running under CI (`CI` set to anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false")),
        Err(_) => false,
    }
}

/// Applies the project rule for tests that need a host facility (root, loop devices): in CI
/// a missing facility is a failure (panic); elsewhere the test is skipped with a loud message.
/// Returns `true` when the caller should return early (skip).
pub fn skip_or_fail(test: &str, why: &str) -> bool {
    if in_ci() {
        panic!("{test}: required facility missing in CI: {why}");
    }
    eprintln!("\n!!!!!!!! SKIPPING {test}: {why} (this would FAIL under CI=true) !!!!!!!!\n");
    true
}

/// True when this process runs as root (effective uid 0), read from `/proc/self/status`
/// so that no `unsafe` call is needed.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_requests_style_query() {
        let q = parse_query(Some("addresses=52%3A54%3A00%3A12%3A34%3A56,aa&x=a+b&flag"));
        assert_eq!(
            q,
            vec![
                ("addresses".into(), "52:54:00:12:34:56,aa".into()),
                ("x".into(), "a b".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41%42"), "AB");
        assert_eq!(percent_encode("a:b c"), "a%3Ab%20c");
    }

    #[test]
    fn truncates_long_json_strings() {
        let v = serde_json::json!({"a": "x".repeat(50), "b": [1, "short"]});
        let t = truncate_json(&v, 10);
        assert_eq!(
            t["a"],
            serde_json::json!(format!("{}…<50 chars>", "x".repeat(10)))
        );
        assert_eq!(t["b"], serde_json::json!([1, "short"]));
    }
}
