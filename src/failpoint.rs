//! Failpoints at etcd's names (gofail's), for etcd's robustness suite: the `failpoint!` macro,
//! the list of failpoints this build has, gofail's term language, and gofail's controls (the
//! `GOFAIL_HTTP` endpoint and the `GOFAIL_FAILPOINTS` variable).
//!
//! Everything here is compiled only with the cargo feature `failpoints`; without it
//! `failpoint!` expands to nothing, and start-up only warns when a GOFAIL variable is set. The
//! failpoints themselves run on the `fail` crate (tikv/fail-rs): gofail's terms are parsed
//! here, checked, and handed to `fail::cfg` in fail-rs's syntax. See docs/robustness.md for
//! where each failpoint sits in rusd and which etcd point it stands for.

/// A failpoint at etcd's name: does nothing unless the build has the `failpoints` feature and
/// the failpoint was enabled (`PUT /<name>` on `GOFAIL_HTTP`, or `GOFAIL_FAILPOINTS`). Then it
/// runs the enabled term on the calling thread: `panic` stops the process (rusd aborts on any
/// panic, `server::stop_on_panic`, as a Go panic ends etcd), `sleep(N)` blocks the thread (an executor thread blocks its whole core,
/// as gofail's sleep blocks etcd's goroutine), `return` and `print` change nothing here (etcd's
/// failpoints at these names have no body).
///
/// Every name must be in [`FAILPOINTS`] (checked by a test), so the endpoint lists exactly the
/// failpoints the build can hit. For a new one: add its line to [`FAILPOINTS`] and to the table
/// in docs/robustness.md, then put `crate::failpoint!("name");` at the point.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    }};
}

/// The failpoints this build has, with where each sits in rusd. `GET /` lists these names.
/// Only names with a `failpoint!` call belong here: the robustness suite picks failpoints from
/// this list and waits for them to fire.
pub const FAILPOINTS: &[(&str, &str)] = &[
    (
        "raftBeforeSave",
        "WAL writer thread, before one Ready's records are written and fdatasynced",
    ),
    (
        "raftAfterSave",
        "WAL writer thread, after one Ready's records are written and fdatasynced",
    ),
    (
        "beforeCommit",
        "shard worker, checkpoint: before the segment log is synced and rotated",
    ),
    (
        "afterCommit",
        "shard worker, checkpoint: after the segment log is synced and rotated",
    ),
    (
        "commitBeforePreCommitHook",
        "checkpoint writer: before member/snap/checkpoint (the applied index) is replaced",
    ),
    (
        "commitAfterPreCommitHook",
        "checkpoint writer: after member/snap/checkpoint is replaced and its dir synced",
    ),
    (
        "compactBeforeCommitScheduledCompact",
        "shard worker: before a compaction's record is appended to the segment log",
    ),
    (
        "compactAfterCommitScheduledCompact",
        "shard worker: after a compaction's record is appended to the segment log",
    ),
    (
        "compactBeforeCommitBatch",
        "shard worker: before one bounded step of rewriting old segments after a compaction",
    ),
    (
        "compactAfterCommitBatch",
        "shard worker: after one bounded step of rewriting old segments after a compaction",
    ),
    (
        "defragBeforeCopy",
        "Maintenance.Defragment, after the admin check, health NOT_SERVING if so configured",
    ),
    (
        "defragBeforeRename",
        "Maintenance.Defragment, just before it answers",
    ),
    (
        "beforeSendWatchResponse",
        "watch stream, before each response is handed to the connection",
    ),
];

/// Failpoints whose point lies in the raft node (`src/coordinator/`), left for its owner: the
/// macro call goes where the comment says, and the name moves to [`FAILPOINTS`].
pub const FAILPOINTS_TODO: &[(&str, &str)] = &[
    (
        "raftBeforeLeaderSend",
        "raft node: the leader, before it hands a Ready's messages to the transport",
    ),
    (
        "raftBeforeFollowerSend",
        "raft node: a follower, before it hands a Ready's messages to the transport",
    ),
    (
        "raftBeforeSaveSnap",
        "raft node: before a received snapshot is saved",
    ),
    (
        "raftAfterSaveSnap",
        "raft node: after a received snapshot is saved",
    ),
    (
        "raftBeforeApplySnap",
        "raft node: before a received snapshot is applied to the shards",
    ),
    (
        "raftAfterApplySnap",
        "raft node: after a received snapshot is applied to the shards",
    ),
    (
        "raftAfterWALRelease",
        "raft node: after WAL files before a saved snapshot are released",
    ),
    (
        "applyBeforeOpenSnapshot",
        "applier: before the shards open a received snapshot",
    ),
    (
        "beforeApplyOneConfChange",
        "applier: before one membership change is applied",
    ),
];

/// Whether `name` is a failpoint of this build.
pub fn is_known(name: &str) -> bool {
    FAILPOINTS.iter().any(|(n, _)| *n == name)
}

#[cfg(feature = "failpoints")]
mod enabled;
#[cfg(feature = "failpoints")]
pub use enabled::{hit, serve_http, set, status, unset};

pub mod terms;

/// Reads `GOFAIL_FAILPOINTS` and starts the `GOFAIL_HTTP` endpoint, as gofail does when etcd
/// starts. Without the `failpoints` feature it only warns that the variables do nothing.
pub fn init_from_env() -> Result<(), String> {
    let failpoints = std::env::var("GOFAIL_FAILPOINTS")
        .ok()
        .filter(|s| !s.is_empty());
    let http = std::env::var("GOFAIL_HTTP").ok().filter(|s| !s.is_empty());
    #[cfg(feature = "failpoints")]
    {
        if let Some(list) = failpoints {
            for (name, term) in terms::parse_list(&list)? {
                if !is_known(&name) {
                    // gofail keeps terms of names it has not seen; a name this build never has
                    // would wait forever, so say so.
                    crate::log_warn!("GOFAIL_FAILPOINTS names an unknown failpoint", "failpoint" => name);
                    continue;
                }
                set(&name, &term).map_err(|e| format!("GOFAIL_FAILPOINTS {name}={term}: {e}"))?;
            }
        }
        if let Some(address) = http {
            serve_http(&address).map_err(|e| format!("GOFAIL_HTTP {address}: {e}"))?;
        }
        Ok(())
    }
    #[cfg(not(feature = "failpoints"))]
    {
        if failpoints.is_some() || http.is_some() {
            crate::log_warn!(
                "GOFAIL_FAILPOINTS/GOFAIL_HTTP set, but this build has no failpoints (build with --features failpoints)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `failpoint!("name")` in src/ is listed in FAILPOINTS, and every listed name has
    /// exactly one call site: the endpoint must offer exactly what the build can hit.
    #[test]
    fn listed_failpoints_match_the_call_sites() {
        let mut calls: Vec<String> = Vec::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let needle = concat!("failpoint", "!(\"");
                    // Code lines only: comments show the macro with placeholder names.
                    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                        for (at, _) in line.match_indices(needle) {
                            let rest = &line[at + needle.len()..];
                            let name = &rest[..rest.find('"').unwrap()];
                            calls.push(name.to_string());
                        }
                    }
                }
            }
        }
        calls.sort();
        let mut listed: Vec<String> = FAILPOINTS.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(calls, listed, "failpoint! call sites vs FAILPOINTS");
        for (name, _) in FAILPOINTS_TODO {
            assert!(!is_known(name), "{name} is both listed and still to do");
        }
    }

    #[test]
    fn docs_name_every_failpoint() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/robustness.md"))
                .unwrap();
        for (name, _) in FAILPOINTS.iter().chain(FAILPOINTS_TODO) {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/robustness.md does not name {name}"
            );
        }
    }
}
