//! The agent's logger: stderr (the ramdisk's init sends it to the serial and VGA consoles),
//! an optional file, and a bounded in-memory copy that `log.collect_system_logs` ships to
//! the conductor. Secrets registered with [`redact`] never leave the process: the logger
//! replaces them before a line is written anywhere.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much of the log is kept in memory for log collection.
const RING_BYTES: usize = 4 * 1024 * 1024;

struct Logger {
    level: log::LevelFilter,
    file: Mutex<Option<File>>,
    ring: Mutex<(VecDeque<String>, usize)>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Register a secret (the agent token): every later log line has it replaced by `***`.
pub fn redact(secret: &str) {
    if secret.len() < 4 || secret.chars().all(|c| c == '*') {
        return;
    }
    let mut s = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !s.iter().any(|x| x == secret) {
        s.push(secret.to_string());
    }
}

/// Replace every registered secret in `text`.
pub fn scrub(text: &str) -> String {
    let s = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for secret in s.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}", d.subsec_millis())
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
            && (metadata.target().starts_with("ferric") || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = scrub(&format!(
            "{} {:<5} {}: {}\n",
            timestamp(),
            record.level(),
            record.target(),
            record.args()
        ));
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Ok(mut f) = self.file.lock() {
            if let Some(f) = f.as_mut() {
                let _ = f.write_all(line.as_bytes());
            }
        }
        if let Ok(mut ring) = self.ring.lock() {
            let (lines, size) = &mut *ring;
            *size += line.len();
            lines.push_back(line);
            while *size > RING_BYTES {
                match lines.pop_front() {
                    Some(l) => *size -= l.len(),
                    None => break,
                }
            }
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Install the logger (once). `debug` lowers the level to DEBUG.
pub fn init(debug: bool, file: Option<&Path>) {
    let file = file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("cannot open log file {}: {e}", p.display()))
            .ok()
    });
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let logger = LOGGER.get_or_init(|| Logger {
        level,
        file: Mutex::new(file),
        ring: Mutex::new((VecDeque::new(), 0)),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// The log lines kept in memory, oldest first.
pub fn snapshot() -> String {
    match LOGGER.get() {
        Some(l) => {
            let ring = l.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.0.iter().map(String::as_str).collect()
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_and_short_or_masked_ones_ignored() {
        redact("s3cr3t-token-value");
        redact("******");
        redact("ab");
        assert_eq!(
            scrub("token=s3cr3t-token-value&x=ab ******"),
            "token=***&x=ab ******"
        );
    }
}
