//! Report progress at a bounded rate.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::write::Progress;

/// Counts bytes and calls the callback at most once per `interval` (and once at the end, from
/// [`ProgressReader::finish`]), never per chunk: the agent forwards these to logs and status.
pub struct ProgressReader<'p, R> {
    inner: R,
    done: u64,
    total: Option<u64>,
    callback: &'p (dyn Fn(Progress) + Sync),
    interval: Duration,
    last: Instant,
}

impl<'p, R: Read> ProgressReader<'p, R> {
    /// Wrap `inner`; `total` is the expected size if known.
    pub fn new(
        inner: R,
        total: Option<u64>,
        callback: &'p (dyn Fn(Progress) + Sync),
        interval: Duration,
    ) -> Self {
        ProgressReader {
            inner,
            done: 0,
            total,
            callback,
            interval,
            last: Instant::now(),
        }
    }

    /// Bytes read so far.
    pub fn bytes_done(&self) -> u64 {
        self.done
    }

    /// Emit the final report.
    pub fn finish(&self) {
        (self.callback)(Progress {
            bytes_done: self.done,
            bytes_total: self.total,
        });
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if self.last.elapsed() >= self.interval {
            self.last = Instant::now();
            (self.callback)(Progress {
                bytes_done: self.done,
                bytes_total: self.total,
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::Dribble;
    use std::sync::Mutex;

    #[test]
    fn rate_limited_and_final_report() {
        let calls = Mutex::new(Vec::new());
        let cb = |p: Progress| calls.lock().unwrap().push(p);
        let mut r = ProgressReader::new(
            Dribble::new(vec![0; 100_000], 10),
            Some(100_000),
            &cb,
            Duration::from_secs(3600),
        );
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        r.finish();
        // 10,000 reads, an interval longer than the test: only the final report.
        let calls = calls.into_inner().unwrap();
        assert_eq!(
            calls,
            vec![Progress {
                bytes_done: 100_000,
                bytes_total: Some(100_000)
            }]
        );
    }

    #[test]
    fn zero_interval_reports_every_read() {
        let count = Mutex::new(0u32);
        let cb = |_: Progress| *count.lock().unwrap() += 1;
        let mut r = ProgressReader::new(Dribble::new(vec![0; 30], 10), None, &cb, Duration::ZERO);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert!(*count.lock().unwrap() >= 3);
    }
}
