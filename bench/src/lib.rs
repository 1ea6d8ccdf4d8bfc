//! Shared fixtures for rusd's criterion benches: deterministic keys and values.

/// An 8-byte, zero-padded decimal key, as etcd's benchmark tool makes with `--key-size=8`.
pub fn key(i: u64) -> bytes::Bytes {
    bytes::Bytes::from(format!("{:08}", i % 100_000_000))
}

/// A value of `len` bytes whose content depends on `seed`, so equal values are not shared.
pub fn value(seed: u64, len: usize) -> bytes::Bytes {
    let mut bytes = vec![0u8; len];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for byte in &mut bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    bytes::Bytes::from(bytes)
}
