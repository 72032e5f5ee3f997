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
    started: Instant,
    last: Instant,
    last_done: u64,
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
            started: Instant::now(),
            last: Instant::now(),
            last_done: 0,
        }
    }

    /// Bytes read so far.
    pub fn bytes_done(&self) -> u64 {
        self.done
    }

    /// Emit the final report (its rate is the average over the whole transfer).
    pub fn finish(&self) {
        (self.callback)(Progress {
            bytes_done: self.done,
            bytes_total: self.total,
            rate_bytes_per_sec: rate(self.done, self.started.elapsed()),
        });
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        let since = self.last.elapsed();
        if since >= self.interval {
            let rate_bytes_per_sec = rate(self.done - self.last_done, since);
            self.last = Instant::now();
            self.last_done = self.done;
            (self.callback)(Progress {
                bytes_done: self.done,
                bytes_total: self.total,
                rate_bytes_per_sec,
            });
        }
        Ok(n)
    }
}

/// Bytes per second, 0 for an empty interval.
fn rate(bytes: u64, over: Duration) -> u64 {
    let secs = over.as_secs_f64();
    if secs <= 0.0 {
        0
    } else {
        (bytes as f64 / secs) as u64
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
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].bytes_done, 100_000);
        assert_eq!(calls[0].bytes_total, Some(100_000));
        assert!(calls[0].rate_bytes_per_sec > 0);
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
