//! The byte stream of `labsrv`'s `/stream`: byte `i` is `i mod 251`. A prime period means a
//! lost, duplicated or reordered segment (whose length is rarely a multiple of 251) shows up
//! as a mismatch at a known offset, and the FNV-1a digest lets a client that only has the
//! body (curl) compare it with the `X-Stream-Fnv1a` header.

/// The byte at stream offset `i`.
pub fn byte_at(i: u64) -> u8 {
    (i % 251) as u8
}

/// Fills `buf` with the stream starting at `offset`.
pub fn fill(offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = byte_at(offset + k as u64);
    }
}

/// The offset of the first byte of `buf` (read from stream `offset` on) that differs from the
/// stream, or `None` if all match.
pub fn first_mismatch(offset: u64, buf: &[u8]) -> Option<u64> {
    buf.iter()
        .enumerate()
        .find(|(k, b)| **b != byte_at(offset + *k as u64))
        .map(|(k, _)| offset + k as u64)
}

/// 64-bit FNV-1a, for digests of whole bodies.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(pub u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The FNV-1a digest of the first `n` bytes of the stream.
pub fn digest(n: u64) -> u64 {
    let mut h = Fnv1a::default();
    let mut buf = vec![0u8; 8192];
    let mut off = 0;
    while off < n {
        let k = (n - off).min(buf.len() as u64) as usize;
        fill(off, &mut buf[..k]);
        h.update(&buf[..k]);
        off += k as u64;
    }
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_checks() {
        let mut buf = vec![0u8; 1000];
        fill(500, &mut buf);
        assert_eq!(first_mismatch(500, &buf), None);
        assert_eq!(first_mismatch(501, &buf), Some(501));
        buf[10] ^= 1;
        assert_eq!(first_mismatch(500, &buf), Some(510));
        // FNV-1a of the empty input is the offset basis; digest agrees with a manual pass.
        assert_eq!(digest(0), 0xcbf2_9ce4_8422_2325);
        let mut all = vec![0u8; 20000];
        fill(0, &mut all);
        let mut h = Fnv1a::default();
        h.update(&all);
        assert_eq!(digest(20000), h.0);
    }
}
