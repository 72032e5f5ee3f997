//! Small `Read` adaptors for the image pipeline, one concern each.
//!
//! [`crate::write::write_stream`] composes them, innermost first:
//! source → [`LengthCheckReader`] (Content-Length honoured) → [`HashingReader`] (digest of exactly
//! the bytes written) → [`ProgressReader`] (rate-limited callback). [`sniff`] looks at the first
//! bytes to tell the format, [`decompress`] unwraps gzip/zstd. Resuming an interrupted
//! download happens below all of them, in [`crate::download::ImageStream`].

pub mod decompress;
pub mod hash;
pub mod length;
pub mod progress;
pub mod sniff;

pub use hash::HashingReader;
pub use length::{LengthCheckReader, LengthMismatch};
pub use progress::ProgressReader;

use std::io::{self, Read};

use crate::error::ImageError;

/// Random access to the image file, for the rare qcow2 whose L2 tables come after the data they
/// map (see [`crate::qcow2`]). Over HTTP: Range requests with If-Range.
pub trait RangeSource: Sync {
    /// The bytes `[start, end)` of the image file.
    fn open_range(&self, start: u64, end: u64) -> Result<Box<dyn Read + Send + '_>, ImageError>;
}

/// An in-memory image (tests, examples).
impl RangeSource for Vec<u8> {
    fn open_range(&self, start: u64, end: u64) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let len = self.len() as u64;
        let (s, e) = (start.min(len) as usize, end.min(len) as usize);
        Ok(Box::new(&self[s..e]))
    }
}

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
