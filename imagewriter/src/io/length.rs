//! Hold the server to its Content-Length.
//!
//! hyper already fails a body that ends before its Content-Length, but the writer also takes
//! plain `Read`s (tests, future adaptors), and a short or long stream must never reach the
//! checksum step looking complete.

use std::fmt;
use std::io::{self, Read};

/// The payload of the `io::Error` a [`LengthCheckReader`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthMismatch {
    /// Announced length.
    pub expected: u64,
    /// Bytes seen (so far, when the stream ran long).
    pub received: u64,
}

impl fmt::Display for LengthMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream announced {} bytes but delivered {}",
            self.expected, self.received
        )
    }
}

impl std::error::Error for LengthMismatch {}

/// Fails with [`LengthMismatch`] when the stream ends early or runs past `expected`.
pub struct LengthCheckReader<R> {
    inner: R,
    expected: Option<u64>,
    seen: u64,
}

impl<R: Read> LengthCheckReader<R> {
    /// Check `inner` against `expected` (no check when `None`).
    pub fn new(inner: R, expected: Option<u64>) -> Self {
        LengthCheckReader {
            inner,
            expected,
            seen: 0,
        }
    }

    fn mismatch(&self) -> io::Error {
        let expected = self.expected.unwrap_or_default();
        let kind = if self.seen < expected {
            io::ErrorKind::UnexpectedEof
        } else {
            io::ErrorKind::InvalidData
        };
        io::Error::new(
            kind,
            LengthMismatch {
                expected,
                received: self.seen,
            },
        )
    }
}

impl<R: Read> Read for LengthCheckReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if let Some(expected) = self.expected {
            if self.seen > expected || (n == 0 && !buf.is_empty() && self.seen != expected) {
                return Err(self.mismatch());
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::Dribble;

    fn run(len: usize, expected: Option<u64>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        LengthCheckReader::new(Dribble::new(vec![7; len], 3), expected).read_to_end(&mut out)?;
        Ok(out)
    }

    fn payload(e: &io::Error) -> LengthMismatch {
        *e.get_ref()
            .unwrap()
            .downcast_ref::<LengthMismatch>()
            .unwrap()
    }

    #[test]
    fn exact_length_passes() {
        assert_eq!(run(10, Some(10)).unwrap().len(), 10);
        assert_eq!(run(10, None).unwrap().len(), 10);
        assert_eq!(run(0, Some(0)).unwrap().len(), 0);
    }

    #[test]
    fn short_stream_fails() {
        let e = run(9, Some(10)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            payload(&e),
            LengthMismatch {
                expected: 10,
                received: 9
            }
        );
    }

    #[test]
    fn long_stream_fails() {
        let e = run(11, Some(10)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(payload(&e).expected, 10);
        assert!(payload(&e).received > 10);
    }
}
