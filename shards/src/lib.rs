//! One shard of rusd's keyspace: the MVCC index, the segment log that makes it durable, and
//! the routing of keys to shards. Pure and synchronous; it never depends on an async runtime.

pub mod routing;
pub mod segment;
pub mod storage;
pub mod store;
pub mod types;

pub use routing::{key_hash, shard_for_key};
pub use segment::{SegmentError, SegmentLog};
pub use storage::{FaultyStorage, MemStorage, Storage};
pub use store::{
    combine_compare, combine_hash_records, encode_key_value, key_in_range, key_value_encoded_len,
    CompareOutcome, HashRecord, MvccStore, SnapshotVersion, SnapshotView, TxnOutcome,
};
pub use types::*;
