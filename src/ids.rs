//! etcd's member and cluster IDs.
//!
//! Response headers carry these IDs and clients compare them byte for byte, so they are computed
//! exactly as etcd v3.5 does (server/etcdserver/api/membership):
//! - member ID: SHA-1 over the member's peer URLs (sorted, concatenated with no separator), then
//!   the cluster token, then (for a runtime member add) the Unix time in decimal seconds; the ID
//!   is the first 8 bytes of the digest read big-endian;
//! - cluster ID: SHA-1 over the sorted member IDs, each as 8 big-endian bytes; first 8 bytes
//!   read big-endian.

// An API surface for the whole server: not every item is used yet.
#![allow(dead_code)]

use sha1::{Digest, Sha1};

use crate::config::Config;

fn first_u64_be(digest: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// etcd's `computeMemberId`. `peer_urls` are URL strings in Go's `url.String()` form (what
/// `config::Url::raw` holds). `now_unix_secs` is `Some` for members added at run time
/// (MemberAdd), `None` for members of the initial cluster.
pub fn member_id(peer_urls: &[String], cluster_token: &str, now_unix_secs: Option<i64>) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(|s| s.as_str()).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(cluster_token.as_bytes());
    if let Some(t) = now_unix_secs {
        h.update(t.to_string().as_bytes());
    }
    first_u64_be(&h.finalize())
}

/// etcd's `RaftCluster.genID`.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64_be(&h.finalize())
}

/// IDs print as etcd's `types.ID.String()`: lowercase hex without padding.
pub fn format_id(id: u64) -> String {
    format!("{id:x}")
}

/// Parses an ID printed by [`format_id`] (or by etcdctl's hex output).
pub fn parse_id(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// The members of `--initial-cluster`: (name, member ID, peer URLs sorted as etcd sorts them),
/// in order of each name's first appearance. Entries that share a name form one member with
/// several peer URLs, as in etcd.
pub fn members_from_initial_cluster(cfg: &Config) -> Vec<(String, u64, Vec<String>)> {
    members_from_pairs(
        cfg.initial_cluster
            .iter()
            .map(|(n, u)| (n.as_str(), u.raw.as_str())),
        &cfg.initial_cluster_token,
    )
}

/// Same as [`members_from_initial_cluster`] over plain (name, url) pairs.
pub fn members_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    token: &str,
) -> Vec<(String, u64, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (name, url) in pairs {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    out.into_iter()
        .map(|(name, mut urls)| {
            urls.sort();
            let id = member_id(&urls, token, None);
            (name, id, urls)
        })
        .collect()
}

/// The cluster ID of the initial cluster in `cfg`.
pub fn initial_cluster_id(cfg: &Config) -> u64 {
    let ids: Vec<u64> = members_from_initial_cluster(cfg)
        .iter()
        .map(|m| m.1)
        .collect();
    cluster_id(&ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    // Every expected value below was read from the log lines ("starting local member",
    // "added member") of a real etcd v3.5.17 started with the same flags.

    #[test]
    fn default_config_ids() {
        // etcd with no flags: name default, token etcd-cluster, peer http://localhost:2380.
        let m = member_id(&s(&["http://localhost:2380"]), "etcd-cluster", None);
        assert_eq!(m, 0x8e9e05c52164694d);
        assert_eq!(cluster_id(&[m]), 0xcdf818194e3a8c32);
        assert_eq!(format_id(m), "8e9e05c52164694d");
    }

    #[test]
    fn single_member_custom_token() {
        // --name m1 --initial-cluster-token tok --initial-advertise-peer-urls http://localhost:20001
        // --initial-cluster m1=http://localhost:20001
        let m = member_id(&s(&["http://localhost:20001"]), "tok", None);
        assert_eq!(m, 0x625c564b79d9956e);
        assert_eq!(cluster_id(&[m]), 0xdbe24b73e088e95d);
    }

    #[test]
    fn three_members() {
        // --initial-cluster-token etcd-cluster-1 --initial-cluster
        // infra1=http://localhost:20001,infra2=http://localhost:20006,infra3=http://localhost:20011
        let pairs = [
            ("infra1", "http://localhost:20001"),
            ("infra2", "http://localhost:20006"),
            ("infra3", "http://localhost:20011"),
        ];
        let ms = members_from_pairs(pairs, "etcd-cluster-1");
        assert_eq!(ms[0].1, 0x5502e4f7acf38d85);
        assert_eq!(ms[1].1, 0x9ff24954ac4b6d1c);
        assert_eq!(ms[2].1, 0x87594b3d9ce2bad3);
        let ids: Vec<u64> = ms.iter().map(|m| m.1).collect();
        assert_eq!(cluster_id(&ids), 0x686c56f573d7ce6a);
        // order of the input does not matter
        assert_eq!(cluster_id(&[ids[2], ids[0], ids[1]]), 0x686c56f573d7ce6a);
    }

    #[test]
    fn member_with_two_peer_urls() {
        // --name x --initial-cluster-token tok2
        // --initial-cluster x=http://localhost:20001,x=http://127.0.0.1:20001
        let ms = members_from_pairs(
            [
                ("x", "http://localhost:20001"),
                ("x", "http://127.0.0.1:20001"),
            ],
            "tok2",
        );
        assert_eq!(ms.len(), 1);
        assert_eq!(
            ms[0].2,
            s(&["http://127.0.0.1:20001", "http://localhost:20001"])
        );
        assert_eq!(ms[0].1, 0x87d8156bd0e1279d);
        assert_eq!(cluster_id(&[ms[0].1]), 0x1bb7fef1321e6a1d);
        // URL order does not matter
        let again = member_id(
            &s(&["http://localhost:20001", "http://127.0.0.1:20001"]),
            "tok2",
            None,
        );
        assert_eq!(again, 0x87d8156bd0e1279d);
    }

    #[test]
    fn member_add_uses_time() {
        let a = member_id(&s(&["http://localhost:20016"]), "tok", Some(1_700_000_000));
        let b = member_id(&s(&["http://localhost:20016"]), "tok", None);
        assert_ne!(a, b);
        // the time is appended as decimal text
        let mut h = Sha1::new();
        h.update(b"http://localhost:20016tok1700000000");
        assert_eq!(a, first_u64_be(&h.finalize()));
    }

    #[test]
    fn from_config() {
        let cfg = crate::config::Config::default();
        let ms = members_from_initial_cluster(&cfg);
        assert_eq!(
            ms,
            vec![(
                "default".to_string(),
                0x8e9e05c52164694d,
                s(&["http://localhost:2380"])
            )]
        );
        assert_eq!(initial_cluster_id(&cfg), 0xcdf818194e3a8c32);
        assert_eq!(parse_id("8e9e05c52164694d"), Some(0x8e9e05c52164694d));
    }
}
