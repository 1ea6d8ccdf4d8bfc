//! Cluster membership as the coordinator knows it: every member's name, URLs and learner flag,
//! seeded from --initial-cluster and changed only by applied raft entries (add, remove and
//! promote by conf-change entries, peer URLs and attributes by normal ones).

use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

#[derive(Debug, Default)]
pub struct Members {
    by_id: BTreeMap<u64, Member>,
    /// Every member removed so far (etcd's `members_removed`): a removal is permanent.
    removed: BTreeSet<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberError {
    IdExists,
    PeerUrlExists,
    NotFound,
    NotLearner,
    TooManyLearners,
}

/// etcd allows one learner at a time (membership's maxLearners).
pub const LEARNERS_MAX: usize = 1;

impl Members {
    pub fn new(initial: Vec<Member>) -> Self {
        Members {
            by_id: initial.into_iter().map(|m| (m.id, m)).collect(),
            removed: BTreeSet::new(),
        }
    }

    /// The IDs of every member removed so far, ascending.
    pub fn removed_ids(&self) -> Vec<u64> {
        self.removed.iter().copied().collect()
    }

    /// The removed members a checkpoint recorded.
    pub fn restore_removed(&mut self, ids: &[u64]) {
        self.removed.extend(ids.iter().copied());
    }

    pub fn list(&self) -> Vec<Member> {
        self.by_id.values().cloned().collect()
    }

    fn url_taken(&self, urls: &[String], except: Option<u64>) -> bool {
        self.by_id
            .values()
            .filter(|m| Some(m.id) != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.by_id.get(&id)
    }

    /// Adds a member, with etcd's checks in etcd's order (ValidateConfigurationChange).
    pub fn add(&mut self, m: Member) -> Result<(), MemberError> {
        if self.by_id.contains_key(&m.id) {
            return Err(MemberError::IdExists);
        }
        if self.url_taken(&m.peer_urls, None) {
            return Err(MemberError::PeerUrlExists);
        }
        if m.is_learner && self.by_id.values().filter(|m| m.is_learner).count() >= LEARNERS_MAX {
            return Err(MemberError::TooManyLearners);
        }
        self.by_id.insert(m.id, m);
        Ok(())
    }

    pub fn remove(&mut self, id: u64) -> Result<Member, MemberError> {
        let member = self.by_id.remove(&id).ok_or(MemberError::NotFound)?;
        self.removed.insert(id);
        Ok(member)
    }

    /// Makes a learner a voting member.
    pub fn promote(&mut self, id: u64) -> Result<(), MemberError> {
        let m = self.by_id.get_mut(&id).ok_or(MemberError::NotFound)?;
        if !m.is_learner {
            return Err(MemberError::NotLearner);
        }
        m.is_learner = false;
        Ok(())
    }

    /// After a restart: this member's name and client URLs are the ones it runs with now.
    pub fn refresh_local(&mut self, me: &Member) {
        if let Some(m) = self.by_id.get_mut(&me.id) {
            m.name = me.name.clone();
            m.client_urls = me.client_urls.clone();
        }
    }

    /// A member's published name and client URLs (etcd's attribute update). A member removed
    /// meanwhile is not an error for the log: its publication just has nothing to update.
    pub fn set_attributes(
        &mut self,
        id: u64,
        name: String,
        client_urls: Vec<String>,
    ) -> Result<(), MemberError> {
        let m = self.by_id.get_mut(&id).ok_or(MemberError::NotFound)?;
        m.name = name;
        m.client_urls = client_urls;
        Ok(())
    }

    pub fn update_peer_urls(&mut self, id: u64, peer_urls: Vec<String>) -> Result<(), MemberError> {
        if !self.by_id.contains_key(&id) {
            return Err(MemberError::NotFound);
        }
        if self.url_taken(&peer_urls, Some(id)) {
            return Err(MemberError::PeerUrlExists);
        }
        self.by_id.get_mut(&id).expect("checked").peer_urls = peer_urls;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, url: &str) -> Member {
        Member {
            id,
            name: String::new(),
            peer_urls: vec![url.to_string()],
            client_urls: vec![],
            is_learner: false,
        }
    }

    #[test]
    fn peer_urls_are_unique_and_updates_need_a_member() {
        let mut ms = Members::new(vec![m(1, "http://a:1")]);
        assert_eq!(ms.add(m(2, "http://a:1")), Err(MemberError::PeerUrlExists));
        assert_eq!(ms.add(m(1, "http://b:1")), Err(MemberError::IdExists));
        ms.add(m(2, "http://b:1")).unwrap();
        assert_eq!(
            ms.update_peer_urls(2, vec!["http://a:1".into()]),
            Err(MemberError::PeerUrlExists)
        );
        ms.update_peer_urls(1, vec!["http://a:1".into(), "http://c:1".into()])
            .unwrap();
        assert_eq!(ms.update_peer_urls(9, vec![]), Err(MemberError::NotFound));
        assert_eq!(ms.list().len(), 2);
    }

    #[test]
    fn one_learner_at_a_time_and_only_learners_are_promoted() {
        let mut ms = Members::new(vec![m(1, "http://a:1")]);
        let learner = |id, url: &str| Member {
            is_learner: true,
            ..m(id, url)
        };
        ms.add(learner(2, "http://b:1")).unwrap();
        assert_eq!(
            ms.add(learner(3, "http://c:1")),
            Err(MemberError::TooManyLearners)
        );
        assert_eq!(ms.promote(1), Err(MemberError::NotLearner));
        assert_eq!(ms.promote(9), Err(MemberError::NotFound));
        ms.promote(2).unwrap();
        assert!(!ms.get(2).unwrap().is_learner);
        ms.add(learner(3, "http://c:1")).unwrap();
        assert_eq!(ms.remove(3).map(|m| m.id), Ok(3));
        assert_eq!(ms.remove(3), Err(MemberError::NotFound));
        assert_eq!(ms.removed_ids(), vec![3]);
    }
}
