//! Joining a running cluster (`--initial-cluster-state existing` with an empty data dir): before
//! this member's own transport starts, ask the peers named in `--initial-cluster` for the
//! cluster's ID and members (etcd's `GetClusterFromRemotePeers`), then find this member's ID
//! among them (etcd's `ValidateClusterAndAssignIDs`).
//!
//! The request goes over the peer protocol's REQUEST connection with cluster ID 0 and member
//! ID 0 (accepted on REQUEST only, see docs/peer-protocol.md), from a short-lived executor of
//! its own: the member's executors are built only once its identity is known.

use std::rc::Rc;
use std::time::Duration;

use super::client::{self, Target};
use super::conn::with_timeout;
use super::transport::{Inner, PeerOptions};
use crate::coordinator::members::Member;
use crate::coordinator::rpc::{self, PeerRequest, PeerResponse};
use crate::ids::format_id;

/// How long one peer may take to answer (etcd's 10 s per `/members` request).
pub const MEMBER_LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a running member said about its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingCluster {
    pub cluster_id: u64,
    pub members: Vec<Member>,
}

impl std::fmt::Display for ExistingCluster {
    /// etcd's `RaftCluster.String()` shape, for its error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "&{{ID:{} RaftAttributes:{{PeerURLs:[{}] IsLearner:{}}} Attributes:{{Name:{} ClientURLs:[{}]}}}}",
                    format_id(m.id),
                    m.peer_urls.join(" "),
                    m.is_learner,
                    m.name,
                    m.client_urls.join(" ")
                )
            })
            .collect();
        write!(
            f,
            "{{ClusterID:{} Members:[{}] RemovedMemberIDs:[]}}",
            format_id(self.cluster_id),
            members.join(" ")
        )
    }
}

/// Asks each URL in turn (etcd sorts them) until one answers with a member list; `options`
/// are this member's (TLS, dial timeout), its IDs are not used. Blocks the calling thread.
pub fn fetch_existing_cluster(
    options: &PeerOptions,
    urls: &[String],
    timeout: Duration,
) -> Result<ExistingCluster, String> {
    let mut options = options.clone();
    options.member_id = 0;
    options.cluster_id = 0;
    let urls = urls.to_vec();
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("rusd-join")
        .io_memory(crate::runtime::IO_MEMORY_BYTES)
        .spawn(move || async move {
            // Nothing is delivered to this inbox: this side only dials.
            let (inbox, _unused) = flume::bounded(1);
            let inner = Inner::new(options, inbox, None);
            let found = ask_each(&inner, &urls, timeout).await;
            inner.tasks.shutdown();
            found
        })
        .map_err(|e| format!("starting the executor to ask the peers: {e}"))?;
    handle
        .join()
        .map_err(|e| format!("asking the peers for the member list: {e}"))?
}

async fn ask_each(
    inner: &Rc<Inner>,
    urls: &[String],
    timeout: Duration,
) -> Result<ExistingCluster, String> {
    let body = rpc::encode_request(&PeerRequest::MemberList);
    for url in urls {
        let call = client::call(inner, Target::Url(url.clone()), body.clone());
        let answer = match with_timeout(timeout, call).await {
            Some(Ok(answer)) => answer,
            Some(Err(e)) => {
                log_warn!("failed to get cluster response", "address" => url.clone(), "error" => e.to_string());
                continue;
            }
            None => {
                log_warn!("failed to get cluster response", "address" => url.clone(), "error" => "timed out");
                continue;
            }
        };
        match rpc::decode_response(&answer) {
            Ok(PeerResponse::MemberList {
                cluster_id,
                members,
            }) => {
                if members.is_empty() {
                    return Err("failed to get raft cluster member(s) from the given URLs".into());
                }
                return Ok(ExistingCluster {
                    cluster_id,
                    members,
                });
            }
            Ok(other) => {
                log_warn!(
                    "failed to unmarshal cluster response",
                    "address" => url.clone(),
                    "error" => format!("unexpected answer {other:?}")
                );
            }
            Err(e) => {
                log_warn!("failed to unmarshal cluster response", "address" => url.clone(), "error" => e.to_string());
            }
        }
    }
    Err("could not retrieve cluster information from the given URLs".into())
}

/// etcd's `ValidateClusterAndAssignIDs`: the local view (`--initial-cluster`: name, ID made
/// from the flags, sorted peer URLs) must have as many members as the running cluster, and
/// each running member's peer URLs must equal one local member's; that local member takes the
/// running member's ID. URLs are compared as written (sorted), where etcd also compares them
/// after resolving host names.
pub fn assign_ids(
    local: &[(String, u64, Vec<String>)],
    existing: &[Member],
) -> Result<Vec<(String, u64, Vec<String>)>, String> {
    if local.len() != existing.len() {
        return Err("member count is unequal".into());
    }
    let mut assigned = local.to_vec();
    for member in existing {
        let mut theirs = member.peer_urls.clone();
        theirs.sort();
        let mut last_error = "<nil>".to_string();
        let mut found = false;
        for (_, id, urls) in assigned.iter_mut() {
            let mut ours = urls.clone();
            ours.sort();
            if ours == theirs {
                *id = member.id;
                found = true;
                break;
            }
            last_error = if ours.len() != theirs.len() {
                format!("len({theirs:?}) != len({ours:?})")
            } else {
                let (a, b) = theirs
                    .iter()
                    .zip(&ours)
                    .find(|(a, b)| a != b)
                    .expect("different lists of one length differ somewhere");
                format!("resolved urls: {a:?} != {b:?}")
            };
        }
        if !found {
            return Err(format!(
                "PeerURLs: no match found for existing member ({}, [{}]), last resolver error ({last_error})",
                format_id(member.id),
                member.peer_urls.join(" ")
            ));
        }
    }
    Ok(assigned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, urls: &[&str]) -> Member {
        Member {
            id,
            name: String::new(),
            peer_urls: urls.iter().map(|u| u.to_string()).collect(),
            client_urls: Vec::new(),
            is_learner: false,
        }
    }

    fn local(name: &str, urls: &[&str]) -> (String, u64, Vec<String>) {
        (
            name.to_string(),
            0,
            urls.iter().map(|u| u.to_string()).collect(),
        )
    }

    #[test]
    fn ids_come_from_the_running_members_with_the_same_urls() {
        let existing = [
            member(0xa, &["http://h:1"]),
            member(0xb, &["http://h:3", "http://h:2"]),
        ];
        let assigned = assign_ids(
            &[
                local("n2", &["http://h:2", "http://h:3"]),
                local("n1", &["http://h:1"]),
            ],
            &existing,
        )
        .unwrap();
        assert_eq!(assigned[0].1, 0xb);
        assert_eq!(assigned[1].1, 0xa);
    }

    #[test]
    fn a_different_count_or_an_unmatched_member_is_refused_with_etcds_text() {
        let existing = [member(0xa, &["http://h:1"]), member(0xb, &["http://h:2"])];
        assert_eq!(
            assign_ids(&[local("n1", &["http://h:1"])], &existing).unwrap_err(),
            "member count is unequal"
        );
        let err = assign_ids(
            &[local("n1", &["http://h:1"]), local("n2", &["http://h:9"])],
            &existing,
        )
        .unwrap_err();
        assert!(
            err.starts_with("PeerURLs: no match found for existing member (b, [http://h:2])"),
            "{err}"
        );
    }
}
