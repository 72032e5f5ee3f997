//! Hash the bytes as they pass.

use std::io::{self, Read};

use crate::checksum::StreamHasher;

/// Feeds every byte read through it into a [`StreamHasher`].
pub struct HashingReader<'h, R> {
    inner: R,
    hasher: &'h mut StreamHasher,
}

impl<'h, R: Read> HashingReader<'h, R> {
    /// Wrap `inner`; the hasher is borrowed so the caller finalizes it after the reader is gone.
    pub fn new(inner: R, hasher: &'h mut StreamHasher) -> Self {
        HashingReader { inner, hasher }
    }
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::HashAlgo;
    use crate::io::testutil::Dribble;

    #[test]
    fn hashes_exactly_what_passes() {
        let mut h = StreamHasher::new(HashAlgo::Sha256);
        let mut out = Vec::new();
        HashingReader::new(Dribble::new(b"abc".to_vec(), 1), &mut h)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(
            h.finalize_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
