//! The lease table: replicated grants and revokes (raft entries) plus, on the leader only, the
//! expiry clock. Which keys are attached to which lease is derived from the events every apply
//! produces, so it is rebuilt exactly by replaying the log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shards::{Event, EventKind};

/// etcd's MaxLeaseTTL, in seconds.
pub const LEASE_TTL_MAX_SECS: i64 = 9_000_000_000;

/// Leases proposed for revocation per expiry check: etcd caps revocation at a rate too, so a
/// burst of expiries cannot flood the log. The rest go in the next check.
pub const REVOKES_PER_CHECK_MAX: usize = 500;

#[derive(Debug)]
pub struct Lease {
    pub ttl_secs: i64,
    pub keys: BTreeSet<Bytes>,
    /// Leader only: when the lease runs out. `None` on followers (leases never expire there).
    expiry: Option<Instant>,
    /// A revoke for it is in the log but not applied yet; don't propose another.
    revoking: bool,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    pub min_ttl_secs: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum GrantError {
    Exists,
    TtlTooLarge,
    NoId,
}

impl LeaseTable {
    pub fn new(min_ttl_secs: i64) -> Self {
        LeaseTable {
            leases: BTreeMap::new(),
            min_ttl_secs,
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn ids(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Applies a grant; returns the TTL actually granted (raised to the minimum as etcd does).
    pub fn grant(
        &mut self,
        id: i64,
        ttl_secs: i64,
        now: Option<Instant>,
    ) -> Result<i64, GrantError> {
        if id == 0 {
            return Err(GrantError::NoId);
        }
        if ttl_secs > LEASE_TTL_MAX_SECS {
            return Err(GrantError::TtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(GrantError::Exists);
        }
        let ttl = ttl_secs.max(self.min_ttl_secs);
        self.leases.insert(
            id,
            Lease {
                ttl_secs: ttl,
                keys: BTreeSet::new(),
                expiry: now.map(|n| n + Duration::from_secs(ttl as u64)),
                revoking: false,
            },
        );
        Ok(ttl)
    }

    /// Removes a lease (after its keys were deleted); returns whether it existed.
    pub fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Leader only: restarts the clock of a lease; returns its TTL, or None if unknown.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get_mut(&id)?;
        l.expiry = Some(now + Duration::from_secs(l.ttl_secs as u64));
        Some(l.ttl_secs)
    }

    /// Seconds left (truncated, as etcd reports it); the TTL itself where no clock runs.
    pub fn remaining_secs(&self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get(&id)?;
        Some(match l.expiry {
            Some(e) => e.saturating_duration_since(now).as_secs() as i64,
            None => l.ttl_secs,
        })
    }

    /// On becoming leader every lease gets a full TTL from now, as etcd's lessor promotion
    /// does: a new leader cannot know how long the old one had left.
    pub fn start_clocks(&mut self, now: Instant) {
        for l in self.leases.values_mut() {
            l.expiry = Some(now + Duration::from_secs(l.ttl_secs as u64));
            l.revoking = false;
        }
    }

    pub fn stop_clocks(&mut self) {
        for l in self.leases.values_mut() {
            l.expiry = None;
            l.revoking = false;
        }
    }

    /// Leases past their expiry that nobody is revoking yet; marks them as being revoked.
    pub fn take_expired(&mut self, now: Instant) -> Vec<i64> {
        let mut out = Vec::new();
        for (id, l) in self.leases.iter_mut() {
            if out.len() >= REVOKES_PER_CHECK_MAX {
                break;
            }
            if !l.revoking && l.expiry.is_some_and(|e| e <= now) {
                l.revoking = true;
                out.push(*id);
            }
        }
        out
    }

    /// A proposed revoke failed to get into the log: let the next check try again.
    pub fn revoke_failed(&mut self, id: i64) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.revoking = false;
        }
    }

    /// Keeps key attachments in step with what an apply did.
    /// Every lease and its TTL, for a checkpoint.
    pub fn records(&self) -> Vec<(i64, i64)> {
        self.leases
            .iter()
            .map(|(id, l)| (*id, l.ttl_secs))
            .collect()
    }

    /// A checkpoint's lease, with no clock running (the leader starts clocks on promotion).
    pub fn restore(&mut self, id: i64, ttl_secs: i64) {
        self.leases.insert(
            id,
            Lease {
                ttl_secs,
                keys: BTreeSet::new(),
                expiry: None,
                revoking: false,
            },
        );
    }

    /// Attaches a key found in a shard after a restart; false if the lease is unknown.
    pub fn attach(&mut self, id: i64, key: Bytes) -> bool {
        match self.leases.get_mut(&id) {
            Some(l) => {
                l.keys.insert(key);
                true
            }
            None => false,
        }
    }

    pub fn observe(&mut self, events: &[Event]) {
        for e in events {
            let old = e.prev_kv.as_ref().map_or(0, |p| p.lease);
            let new = match e.kind {
                EventKind::Put => e.kv.lease,
                EventKind::Delete => 0,
            };
            if old != 0 && old != new {
                if let Some(l) = self.leases.get_mut(&old) {
                    l.keys.remove(&e.kv.key);
                }
            }
            if new != 0 {
                if let Some(l) = self.leases.get_mut(&new) {
                    l.keys.insert(e.kv.key.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shards::KeyValue;

    fn put(key: &'static str, lease: i64, prev_lease: Option<i64>) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: Bytes::from_static(key.as_bytes()),
                lease,
                ..Default::default()
            },
            prev_kv: prev_lease.map(|l| KeyValue {
                key: Bytes::from_static(key.as_bytes()),
                lease: l,
                ..Default::default()
            }),
            sub_revision: 0,
        }
    }

    #[test]
    fn grant_rules_and_attachment() {
        let mut t = LeaseTable::new(2);
        assert_eq!(t.grant(5, 1, None), Ok(2), "raised to the minimum TTL");
        assert_eq!(t.grant(5, 10, None), Err(GrantError::Exists));
        assert_eq!(
            t.grant(6, LEASE_TTL_MAX_SECS + 1, None),
            Err(GrantError::TtlTooLarge)
        );
        assert_eq!(t.grant(7, 30, None), Ok(30));
        t.observe(&[put("a", 5, None), put("b", 5, None)]);
        t.observe(&[put("a", 7, Some(5))]);
        assert_eq!(t.get(5).unwrap().keys.len(), 1);
        assert_eq!(t.get(7).unwrap().keys.len(), 1);
    }

    #[test]
    fn expiry_is_leader_only_and_taken_once() {
        let mut t = LeaseTable::new(1);
        let now = Instant::now();
        t.grant(1, 1, None).unwrap();
        assert!(t.take_expired(now + Duration::from_secs(100)).is_empty());
        t.start_clocks(now);
        assert!(t.take_expired(now).is_empty());
        assert_eq!(t.take_expired(now + Duration::from_secs(2)), vec![1]);
        assert!(t.take_expired(now + Duration::from_secs(3)).is_empty());
        t.revoke_failed(1);
        assert_eq!(t.take_expired(now + Duration::from_secs(3)), vec![1]);
    }
}
