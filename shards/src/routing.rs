//! Which shard owns a key. The mapping is persisted (it decides which segment holds a key),
//! so it must never change between versions.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64-bit) of `key`, finished with the murmur3 `fmix64` avalanche, because plain
/// FNV-1a leaves the high bits weak for short keys that differ only in their last byte.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in key {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The shard (0..shards) that owns `key`. Uses the high bits of the hash scaled to `shards`
/// (Lemire's multiply-shift) rather than a modulo: no division on the hot path.
pub fn shard_for_key(key: &[u8], shards: usize) -> usize {
    assert!(shards > 0, "at least one shard");
    ((u128::from(key_hash(key)) * shards as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_values_never_change() {
        // These values are on disk in every data directory; a change here is a format break.
        assert_eq!(key_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(shard_for_key(b"foo", 1), 0);
        assert_eq!(
            (0..8)
                .map(|n| shard_for_key(format!("key{n}").as_bytes(), 4))
                .collect::<Vec<_>>(),
            PINNED_KEY_SHARDS
        );
    }

    const PINNED_KEY_SHARDS: [usize; 8] = [0, 3, 3, 3, 0, 3, 1, 3];

    #[test]
    fn spreads_sequential_keys_evenly() {
        let shards = 4;
        let mut counts = vec![0usize; shards];
        for i in 0..40_000 {
            counts[shard_for_key(format!("{i:08}").as_bytes(), shards)] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "uneven spread: {count}");
        }
    }
}
