//! Keys and values as etcd's benchmark makes them: a key is the zig-zag
//! varint of its index (Go's `binary.PutVarint`) written at the start of a
//! zero-filled `--key-size` buffer; values are random bytes generated once.
//! Also the send-time stamp that watch workloads put in values to measure
//! put-to-event latency.

use std::time::Instant;

use anyhow::{bail, Result};
use rand::RngCore;

/// Bytes of the zig-zag varint of `n`.
fn varint_len(n: i64) -> usize {
    let mut u = ((n << 1) ^ (n >> 63)) as u64;
    let mut len = 1;
    while u >= 0x80 {
        u >>= 7;
        len += 1;
    }
    len
}

/// Fails when keys `0..key_space` do not fit in `key_size` bytes (Go's
/// `PutVarint` would panic) or the key space is empty.
pub fn check_key_space(key_size: usize, key_space: u64) -> Result<()> {
    if key_space == 0 || key_space > i64::MAX as u64 {
        bail!("expected positive --key-space-size, got ({key_space})");
    }
    let need = varint_len(key_space as i64 - 1);
    if key_size < need {
        bail!("--key-size {key_size} is too small for --key-space-size {key_space} (needs {need} bytes)");
    }
    Ok(())
}

/// Writes key `n` into `buf` (zero-filled, `buf.len()` is the key size).
/// The caller has checked the size with [`check_key_space`].
pub fn write_key(buf: &mut [u8], n: u64) {
    buf.fill(0);
    let mut u = ((n as i64) << 1 ^ ((n as i64) >> 63)) as u64;
    let mut i = 0;
    while u >= 0x80 {
        buf[i] = (u as u8) | 0x80;
        u >>= 7;
        i += 1;
    }
    buf[i] = u as u8;
}

/// Key `n` of `key_size` bytes.
pub fn key(n: u64, key_size: usize) -> Vec<u8> {
    let mut k = vec![0; key_size];
    write_key(&mut k, n);
    k
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// A value of `size` bytes (at least 8) whose first 8 bytes are the
/// nanoseconds since `epoch`, little-endian; the rest is `pad`.
pub fn stamped_value(epoch: Instant, size: usize, pad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(8));
    v.extend_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
    if size > 8 {
        v.extend_from_slice(&pad[..size - 8]);
    }
    v
}

/// The stamp of a [`stamped_value`], if the value is long enough.
pub fn stamp_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_go_put_varint() {
        // Go: binary.PutVarint(k, 0) → 00; 1 → 02; 63 → 7e; 64 → 80 01; 300 → d8 04.
        assert_eq!(key(0, 4), [0, 0, 0, 0]);
        assert_eq!(key(1, 4), [2, 0, 0, 0]);
        assert_eq!(key(63, 4), [0x7e, 0, 0, 0]);
        assert_eq!(key(64, 4), [0x80, 0x01, 0, 0]);
        assert_eq!(key(300, 3), [0xd8, 0x04, 0]);
        let all: std::collections::HashSet<_> = (0..5000).map(|n| key(n, 8)).collect();
        assert_eq!(all.len(), 5000);
    }

    #[test]
    fn key_space_checks() {
        assert!(check_key_space(8, 0).is_err());
        assert!(check_key_space(1, 64).is_ok());
        assert!(check_key_space(1, 65).is_err());
        assert!(check_key_space(8, 1 << 40).is_ok());
    }

    #[test]
    fn stamps_round_trip() {
        let epoch = Instant::now();
        let v = stamped_value(epoch, 32, &[7; 32]);
        assert_eq!(v.len(), 32);
        assert!(stamp_of(&v).unwrap() <= epoch.elapsed().as_nanos() as u64);
        assert_eq!(stamped_value(epoch, 3, &[]).len(), 8);
        assert_eq!(stamp_of(b"short"), None);
    }
}
