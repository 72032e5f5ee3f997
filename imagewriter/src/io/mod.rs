//! Small `Read` adaptors for the image pipeline, one concern each.
//!
//! [`crate::write::write_stream`] composes them, innermost first:
//! source → [`LengthCheckReader`] (Content-Length honoured) → [`HashingReader`] (digest of exactly
//! the bytes written) → [`ProgressReader`] (rate-limited callback). [`sniff`] looks at the first
//! bytes to refuse non-raw images. Future adaptors (gzip, qcow2, resume with Range) slot into the
//! same chain.

pub mod hash;
pub mod length;
pub mod progress;
pub mod sniff;

pub use hash::HashingReader;
pub use length::{LengthCheckReader, LengthMismatch};
pub use progress::ProgressReader;

use std::io::{self, Read};

/// Read until `buf` is full or the source is exhausted; returns the count (less than
/// `buf.len()` only at end of stream). Retries `Interrupted`.
pub fn read_full<R: Read + ?Sized>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::io::{self, Read};

    /// Yields `data` in reads of at most `step` bytes, then optionally fails instead of EOF.
    pub struct Dribble {
        pub data: Vec<u8>,
        pub pos: usize,
        pub step: usize,
        pub fail_at_end: bool,
    }

    impl Dribble {
        pub fn new(data: Vec<u8>, step: usize) -> Self {
            Dribble {
                data,
                pos: 0,
                step,
                fail_at_end: false,
            }
        }
    }

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.data.len() {
                if self.fail_at_end {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
                }
                return Ok(0);
            }
            let n = buf.len().min(self.step).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::Dribble;
    use super::*;

    #[test]
    fn read_full_fills_across_short_reads() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut src = Dribble::new(data.clone(), 7);
        let mut buf = [0u8; 64];
        assert_eq!(read_full(&mut src, &mut buf).unwrap(), 64);
        assert_eq!(&buf[..], &data[..64]);
        assert_eq!(read_full(&mut src, &mut buf).unwrap(), 36);
        assert_eq!(&buf[..36], &data[64..]);
        assert_eq!(read_full(&mut src, &mut buf).unwrap(), 0);
    }

    #[test]
    fn read_full_propagates_errors() {
        let mut src = Dribble::new(vec![1; 10], 4);
        src.fail_at_end = true;
        let mut buf = [0u8; 64];
        let err = read_full(&mut src, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }
}
