//! Start-up of one member: parses nothing itself (see `config`), recovers the WAL, the
//! checkpoint and the shards, starts one executor per core and waits for a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::channel::oneshot;
use glommio::{LocalExecutorBuilder, Placement};

use crate::api::{Context, MemberInfo};
use crate::config::Config;
use crate::coordinator::apply::{Applier, ApplierConfig, ApplierLinks, Restored};
use crate::coordinator::raft::{RaftBoot, RaftNode};
use crate::coordinator::seams::{FileCheckpointStore, FileRaftLog, SystemClock};
use crate::coordinator::{wal, CoordinatorHandle, Published, WriteRequest};
use crate::runtime::mesh::{ShardSet, SHARD_INBOX_MAX};
use crate::{api, coordinator, ids, logging, net, recovery, runtime};

pub fn serve(cfg: Config) -> anyhow::Result<()> {
    logging::init(cfg.log_level, &cfg.log_outputs)?;
    crate::failpoint::init_from_env().map_err(|e| anyhow::anyhow!("failpoints: {e}"))?;
    stop_on_panic();
    cfg.emit_startup_logs();
    // Without discovery this member would start alone from the default --initial-cluster: a
    // silent one-member cluster where the operator asked for a bigger one.
    if !cfg.discovery.is_empty() || !cfg.discovery_srv.is_empty() {
        anyhow::bail!(
            "rusd does not implement cluster discovery (--discovery, --discovery-srv); \
             bootstrap with --initial-cluster instead"
        );
    }
    cfg.verify_bootstrap().map_err(|e| anyhow::anyhow!("{e}"))?;
    log_info!(
        "starting rusd",
        "etcd-version" => api::maintenance::SERVER_VERSION,
        "rusd-version" => env!("CARGO_PKG_VERSION"),
        "name" => cfg.name.clone(),
        "data-dir" => cfg.data_dir.display().to_string()
    );
    let cpus = runtime::allowed_cpus();
    let shard_count = if cfg.shards == 0 {
        cpus.len()
    } else {
        cfg.shards
    };
    // One more executor than the shards: a joining member asks its peers from its own.
    runtime::ensure_memlock(shard_count + 1)?;
    block_signals();

    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // An etcd v3.5 data dir becomes rusd's once, before anything of rusd's layout is read.
    if let Some(imported) =
        crate::etcdfmt::import::import_if_etcd(&cfg.data_dir, cfg.wal_dir.as_deref(), shard_count)?
    {
        imported.log();
    }
    let wal_dir = cfg
        .wal_dir
        .clone()
        .unwrap_or_else(|| wal::wal_dir(&cfg.data_dir));
    // The checkpoint first: it says which WAL entries are still needed and where the shards'
    // segment logs stop.
    let mut checkpoint =
        coordinator::checkpoint::read(&coordinator::checkpoint::checkpoint_dir(&cfg.data_dir))?;
    let checkpoint_index = checkpoint.as_ref().map_or(0, |c| c.raft_index);
    let snap_dir = wal::snap_dir(&cfg.data_dir);
    let mut checkpoint_mark = raft::eraftpb::SnapshotMetadata::default();
    if let Some(c) = &checkpoint {
        checkpoint_mark.index = c.raft_index;
        checkpoint_mark.term = c.raft_term;
        checkpoint_mark.set_conf_state(raft::eraftpb::ConfState::from((
            c.voters.clone(),
            c.learners.clone(),
        )));
    }
    let mut recovered =
        wal::recover(&wal_dir, &snap_dir, &checkpoint_mark).context("recovering the WAL")?;
    if let Some(old) = &recovered.converted_from {
        log_info!(
            "converted the WAL to etcd's format",
            "wal-dir" => wal_dir.display().to_string(),
            "old-wal-moved-to" => old.display().to_string()
        );
    }
    if recovered.truncated_bytes > 0 {
        log_warn!(
            "truncated a torn write at the end of the WAL",
            "bytes" => recovered.truncated_bytes,
            "offset" => recovered.end_offset
        );
    }

    let members = ids::members_from_initial_cluster(&cfg);
    let me = members
        .iter()
        .find(|(name, _, _)| *name == cfg.name)
        .with_context(|| {
            format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                cfg.name
            )
        })?
        .clone();
    // Before the peer options: it checks the peer TLS flags and makes --peer-auto-tls's
    // certificate, which a joining member needs to ask its peers.
    let listen_plan = net::ListenPlan::new(&cfg)?;
    // A member joins a running cluster when it starts with no WAL and
    // --initial-cluster-state existing (as etcd; with a WAL the flag changes nothing), or when
    // it joined before but stopped before the leader caught it up: its WAL then holds only its
    // identity (no checkpoint, no entry), and its ID is none of those --initial-cluster makes.
    let joined_before = recovered.metadata.filter(|m| {
        checkpoint.is_none()
            && recovered.entries.is_empty()
            && !members.iter().any(|(_, id, _)| *id == m.member_id)
    });
    let joining = recovered.metadata.is_none()
        && cfg.initial_cluster_state == crate::config::ClusterState::Existing;
    let existing = if joining || joined_before.is_some() {
        let options = crate::peer::PeerOptions::from_config(&cfg, 0, 0)
            .context("configuring the peer transport")?;
        Some(join_cluster(&cfg, &members, joined_before, &options)?)
    } else {
        None
    };
    let metadata = match (recovered.metadata, &existing) {
        (Some(m), _) => m,
        (None, Some(joined)) => {
            let m = joined.metadata;
            wal::bootstrap(&wal_dir, &snap_dir, &mut recovered, m)?;
            m
        }
        (None, None) => {
            let m = wal::Metadata {
                member_id: me.1,
                cluster_id: ids::initial_cluster_id(&cfg),
            };
            wal::bootstrap(&wal_dir, &snap_dir, &mut recovered, m)?;
            m
        }
    };
    // --force-new-cluster on a member with a WAL (without one the flag changes nothing, as in
    // etcd): what was never committed goes, and the raft node makes this member the only one.
    let force_new_cluster =
        cfg.force_new_cluster && recovered.metadata.is_some() && existing.is_none();
    if force_new_cluster {
        let commit = recovered.hard_state.commit.max(checkpoint_index);
        let before = recovered.entries.len();
        recovered.entries.retain(|e| e.index <= commit);
        let discarded = before - recovered.entries.len();
        if discarded > 0 {
            log_info!(
                "discarding uncommitted WAL entries",
                "commit-index-from-wal" => commit,
                "number-of-discarded-entries" => discarded
            );
        }
    }
    log_info!(
        "member identity",
        "local-member-id" => ids::format_id(metadata.member_id),
        "cluster-id" => ids::format_id(metadata.cluster_id),
        "shards" => shard_count,
        "checkpoint-index" => checkpoint_index,
        "recovered-entries" => recovered.entries.len()
    );
    let started = std::time::Instant::now();
    let recovered_shards =
        recovery::recover_shards(&cfg.data_dir, shard_count, checkpoint.as_mut())?;
    log_info!(
        "recovered the shards",
        "shards" => shard_count,
        "keys" => recovered_shards.shards.iter().map(|s| s.store.key_count()).sum::<usize>(),
        "took" => format!("{:?}", started.elapsed())
    );
    if cfg.experimental_bootstrap_defrag_threshold_megabytes > 0 {
        // etcd defragments at boot when enough space is freeable. Our segments are rewritten
        // after every compaction, so there is never a backlog to reclaim here.
        let size: usize = recovered_shards
            .shards
            .iter()
            .map(|s| s.store.approximate_bytes())
            .sum();
        log_info!(
            "Skipping defragmentation",
            "current-db-size-bytes" => size,
            "current-db-size-in-use-bytes" => size,
            "experimental-bootstrap-defrag-threshold-bytes" =>
                cfg.experimental_bootstrap_defrag_threshold_megabytes * 1024 * 1024
        );
    }
    let restored = Restored {
        checkpoint,
        lease_keys: recovered_shards.lease_keys,
    };
    let mut shard_states: Vec<Option<runtime::shard::Shard>> =
        recovered_shards.shards.into_iter().map(Some).collect();

    let (raft_tx, raft_rx) = flume::bounded(coordinator::COORDINATOR_INBOX_MAX);
    let (queries_tx, queries_rx) = flume::bounded(coordinator::COORDINATOR_INBOX_MAX);
    let (watch_tx, watch_rx) = flume::bounded(coordinator::watch::WATCH_FEED_MAX);
    let mut shard_rxs = Vec::with_capacity(shard_count);
    let mut shard_txs = Vec::with_capacity(shard_count);
    for _ in 0..shard_count {
        let (tx, rx) = flume::bounded(SHARD_INBOX_MAX);
        shard_txs.push(tx);
        shard_rxs.push(rx);
    }
    let published = Arc::new(Published::default());
    let auth_config = Arc::new(api::auth::AuthConfig::new(
        &cfg.auth_token,
        cfg.bcrypt_cost,
        cfg.auth_token_ttl,
        cfg.client_tls.client_cert_auth,
    )?);
    published
        .auth
        .set_simple_token_ttl(auth_config.simple_token_ttl());
    // etcd's ReqTimeout: 5 s plus two election timeouts.
    let request_timeout =
        Duration::from_secs(5) + 2 * Duration::from_millis(cfg.election_timeout_ms);
    let ctx = Context {
        coordinator: CoordinatorHandle::new(
            raft_tx.clone(),
            queries_tx,
            watch_tx.clone(),
            request_timeout,
        ),
        shards: ShardSet::new(shard_txs),
        published: published.clone(),
        member: Arc::new(MemberInfo {
            member_id: metadata.member_id,
            cluster_id: metadata.cluster_id,
            client_urls: cfg
                .advertise_client_urls
                .iter()
                .map(|u| u.raw.clone())
                .collect(),
            election_timeout: Duration::from_millis(cfg.election_timeout_ms),
            strict_reconfig_check: cfg.strict_reconfig_check,
        }),
        max_request_bytes: cfg.max_request_bytes as usize,
        max_txn_ops: cfg.max_txn_ops as usize,
        auth: auth_config,
        gateway_streams: api::gateway::StreamGate::new(cfg.max_concurrent_streams),
        cors: Arc::new(cfg.cors.clone()),
        health: api::health::HealthState::new(cfg.experimental_stop_grpc_service_on_defrag),
        peers: Arc::new(std::sync::OnceLock::new()),
    };

    let peer_options =
        crate::peer::PeerOptions::from_config(&cfg, metadata.member_id, metadata.cluster_id)
            .context("configuring the peer transport")?;

    let (serving_tx, serving_rx) = oneshot::channel();
    let (fatal_tx, fatal_rx) = std::sync::mpsc::channel::<String>();
    let initial_members: Vec<coordinator::members::Member> = match &existing {
        // A joining member starts from the members the cluster reported; the leader's
        // snapshot replaces them with the state as of its index.
        Some(joined) => joined
            .members
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if m.id == metadata.member_id {
                    m.name = cfg.name.clone();
                    m.client_urls = ctx.member.client_urls.clone();
                }
                m
            })
            .collect(),
        None => members
            .iter()
            .map(|(name, id, peer_urls)| {
                // This member keeps the ID its data dir was created with, whatever the flags
                // say now (as etcd does).
                let me = *name == cfg.name;
                coordinator::members::Member {
                    id: if me { metadata.member_id } else { *id },
                    name: name.clone(),
                    peer_urls: peer_urls.clone(),
                    // Other members' client URLs arrive when they publish them.
                    client_urls: if me {
                        ctx.member.client_urls.clone()
                    } else {
                        Vec::new()
                    },
                    is_learner: false,
                }
            })
            .collect(),
    };
    let conf_state = match (restored.checkpoint.as_ref(), &existing) {
        (Some(c), _) => ::raft::eraftpb::ConfState::from((c.voters.clone(), c.learners.clone())),
        // A joining member knows no configuration: it is no voter and cannot campaign until
        // the leader's snapshot brings raft's configuration (which names it).
        (None, Some(_)) => ::raft::eraftpb::ConfState::default(),
        (None, None) => ::raft::eraftpb::ConfState::from((
            initial_members.iter().map(|m| m.id).collect::<Vec<_>>(),
            Vec::new(),
        )),
    };
    let boot = RaftBoot {
        member_id: metadata.member_id,
        checkpoint_index: restored.checkpoint.as_ref().map_or(0, |c| c.raft_index),
        checkpoint_term: restored.checkpoint.as_ref().map_or(0, |c| c.raft_term),
        conf_state: conf_state.clone(),
        entries: std::mem::take(&mut recovered.entries),
        hard_state: recovered.hard_state.clone(),
        heartbeat_interval: Duration::from_millis(cfg.heartbeat_interval_ms.max(1)),
        election_ticks: (cfg.election_timeout_ms / cfg.heartbeat_interval_ms.max(1)).max(2)
            as usize,
        quota_bytes: cfg.effective_quota_backend_bytes(),
        peers: initial_members
            .iter()
            .filter(|m| m.id != metadata.member_id)
            .map(|m| (m.id, m.peer_urls.clone()))
            .collect(),
        seed: rand::random(),
        publish: WriteRequest::MemberAttrs {
            id: metadata.member_id,
            name: cfg.name.clone(),
            client_urls: ctx.member.client_urls.clone(),
        },
        strict_reconfig_check: cfg.strict_reconfig_check,
        force_new_cluster,
    };
    let peer_ids: Vec<u64> = boot.peers.iter().map(|(id, _)| *id).collect();
    let mut coordinator_parts = Some(CoordinatorParts {
        peer_options,
        peer_slot: ctx.peers.clone(),
        recovered,
        restored,
        wal_dir: wal_dir.clone(),
        wal_options: wal::WalOptions {
            snap_dir,
            max_wal_files: cfg.max_wals as usize,
            max_snap_files: cfg.max_snapshots as usize,
            segment_bytes: wal::SEGMENT_BYTES,
        },
        checkpoint_dir: coordinator::checkpoint::checkpoint_dir(&cfg.data_dir),
        boot,
        applier: ApplierConfig {
            member_id: metadata.member_id,
            cluster_id: metadata.cluster_id,
            lease_ttl_min_secs: lease_ttl_min_secs(&cfg),
            initial_members,
            snapshot_count: cfg.snapshot_count,
            conf_state,
        },
        watch_progress_interval: Duration::from_millis(
            cfg.experimental_watch_progress_notify_interval_ms,
        ),
        raft_tx,
        raft_rx,
        queries_rx,
        watch_tx,
        watch_rx,
        serving_tx,
    });
    let mut handles = Vec::new();
    for (core, rx) in shard_rxs.into_iter().enumerate() {
        let cpu = cpus[core % cpus.len()];
        let ctx = ctx.clone();
        let published = published.clone();
        let plan = listen_plan.clone();
        let parts = if core == 0 {
            coordinator_parts.take()
        } else {
            None
        };
        let fatal = fatal_tx.clone();
        let shard_state = shard_states[core].take().expect("one state per shard");
        let limits = net::ServeLimits {
            max_concurrent_streams: cfg.max_concurrent_streams,
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("rusd-core-{core}"))
            .io_memory(runtime::IO_MEMORY_BYTES)
            .preempt_timer(runtime::PREEMPT_TIMER)
            .spawn(move || async move {
                glommio::spawn_local(runtime::shard::run(rx, shard_state)).detach();
                if let Some(parts) = parts {
                    start_coordinator(parts, ctx.shards.clone(), published, fatal.clone());
                }
                let listeners = match plan.bind(core, shard_count) {
                    Ok(l) => l,
                    Err(msg) => {
                        let _ = fatal.send(msg);
                        return;
                    }
                };
                let router = api::router::Router::new(ctx);
                plan.serve(listeners, router, limits).await;
            })
            .map_err(|e| anyhow::anyhow!("starting the executor for core {core}: {e}"))?;
        handles.push(handle);
    }
    drop(fatal_tx);

    // Wait for the member to serve (or fail) before announcing readiness.
    let ready = std::thread::spawn(move || futures::executor::block_on(serving_rx).is_ok());
    let waiting_since = std::time::Instant::now();
    let mut next_report = Duration::from_secs(5);
    loop {
        if let Ok(msg) = fatal_rx.try_recv() {
            exit_if_removed(&msg);
            anyhow::bail!("{msg}");
        }
        if ready.is_finished() {
            break;
        }
        if waiting_since.elapsed() >= next_report {
            // A member that cannot serve says why it waits, instead of staying silent.
            use std::sync::atomic::Ordering::Acquire;
            log_warn!(
                "still waiting for this member to serve",
                "waited-seconds" => waiting_since.elapsed().as_secs(),
                "leader" => ids::format_id(published.leader()),
                "raft-term" => published.raft_term(),
                "committed-index" => published.committed_index.load(Acquire),
                "applied-index" => published.applied_index.load(Acquire)
            );
            next_report *= 2;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if !ready.join().unwrap_or(false) {
        let msg = fatal_rx
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_else(|_| "the coordinator stopped before serving".into());
        exit_if_removed(&msg);
        anyhow::bail!("{msg}");
    }
    if cfg.experimental_initial_corrupt_check {
        let peers: Vec<u64> = peer_ids;
        crate::corrupt::initial_check(&ctx, &peers, request_timeout)?;
    }
    ctx.health.mark_serving();
    listen_plan.log_ready();

    // From here the process lives until a signal or a fatal error.
    let (sig_tx, sig_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sig_tx.send(wait_for_signal());
    });
    loop {
        if let Ok(msg) = fatal_rx.try_recv() {
            exit_if_removed(&msg);
            anyhow::bail!("{msg}");
        }
        if let Ok(sig) = sig_rx.try_recv() {
            // Every acknowledged write was fsynced before its answer, so stopping here loses
            // nothing; unanswered requests fail on the client's side as the connections close.
            log_info!("received signal; shutting down", "signal" => sig);
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This member's identity and the members of the running cluster it joins.
struct Joined {
    metadata: wal::Metadata,
    members: Vec<coordinator::members::Member>,
}

/// etcd's join of a running cluster: the member list and cluster ID from the peers named in
/// --initial-cluster (every URL but this member's, sorted), this member's ID from the member
/// whose peer URLs match its own (`joined_before`: the identity its WAL already holds, which
/// must still be a member).
fn join_cluster(
    cfg: &Config,
    local: &[(String, u64, Vec<String>)],
    joined_before: Option<wal::Metadata>,
    options: &crate::peer::PeerOptions,
) -> anyhow::Result<Joined> {
    use crate::peer::join;
    let mut urls: Vec<String> = local
        .iter()
        .filter(|(name, _, _)| *name != cfg.name)
        .flat_map(|(_, _, urls)| urls.iter().cloned())
        .collect();
    urls.sort();
    let existing = join::fetch_existing_cluster(options, &urls, join::MEMBER_LIST_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot fetch cluster info from peer urls: {e}"))?;
    let metadata = match joined_before {
        Some(m) => {
            if m.cluster_id != existing.cluster_id {
                anyhow::bail!(
                    "the cluster at {} has ID {}, this member's WAL says {}",
                    urls.join(","),
                    ids::format_id(existing.cluster_id),
                    ids::format_id(m.cluster_id)
                );
            }
            if !existing.members.iter().any(|e| e.id == m.member_id) {
                // Removed before it was ever caught up: it stops as any removed member does.
                log_warn!(
                    coordinator::apply::REMOVED_FROM_CLUSTER,
                    "local-member-id" => ids::format_id(m.member_id)
                );
                std::process::exit(0);
            }
            m
        }
        None => {
            let assigned = join::assign_ids(local, &existing.members)
                .map_err(|e| anyhow::anyhow!("error validating peerURLs {existing}: {e}"))?;
            let member_id = assigned
                .iter()
                .find(|(name, _, _)| *name == cfg.name)
                .map(|(_, id, _)| *id)
                .expect("assign_ids keeps every local member, this one included");
            wal::Metadata {
                member_id,
                cluster_id: existing.cluster_id,
            }
        }
    };
    log_info!(
        "joining an existing cluster",
        "local-member-id" => ids::format_id(metadata.member_id),
        "cluster-id" => ids::format_id(metadata.cluster_id),
        "members" => existing.members.len()
    );
    Ok(Joined {
        metadata,
        members: existing.members,
    })
}

/// A member removed from the cluster stops as etcd's does: the reason was logged where it was
/// learned, and the process exits with status 0 (etcd's main returns normally once its server
/// stopped).
fn exit_if_removed(fatal: &str) {
    if fatal.ends_with(coordinator::apply::REMOVED_FROM_CLUSTER) {
        std::process::exit(0);
    }
}

/// A panic anywhere ends the process. Without this a panicking task would end only its
/// executor's thread, and the member would live on answering nothing (a shard gone, or the
/// raft node): its supervisor would not restart it and its peers would not see it gone.
fn stop_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        log_error!("rusd panicked; stopping", "panic" => info.to_string());
        std::process::abort();
    }));
}

/// Everything core 0 needs to start the coordinator's three tasks.
struct CoordinatorParts {
    peer_options: crate::peer::PeerOptions,
    peer_slot: Arc<std::sync::OnceLock<crate::peer::PeerClient>>,
    recovered: wal::Recovered,
    restored: Restored,
    wal_dir: std::path::PathBuf,
    wal_options: wal::WalOptions,
    checkpoint_dir: std::path::PathBuf,
    boot: RaftBoot,
    applier: ApplierConfig,
    watch_progress_interval: Duration,
    raft_tx: flume::Sender<coordinator::raft::RaftMsg>,
    raft_rx: flume::Receiver<coordinator::raft::RaftMsg>,
    queries_rx: flume::Receiver<coordinator::CoordMsg>,
    watch_tx: flume::Sender<coordinator::watch::WatchInput>,
    watch_rx: flume::Receiver<coordinator::watch::WatchInput>,
    serving_tx: oneshot::Sender<()>,
}

/// Starts the raft node, the applier and the watch hub on this core (core 0), each in a task
/// queue of its own so that the raft node's ticks and WAL syncs are scheduled apart from
/// apply work and watch fan-out. A task that fails stops the member.
fn start_coordinator(
    parts: CoordinatorParts,
    shards: ShardSet,
    published: Arc<Published>,
    fatal: std::sync::mpsc::Sender<String>,
) {
    let executor = glommio::executor();
    let queue = |name: &str, shares: usize| {
        executor.create_task_queue(
            glommio::Shares::Static(shares),
            glommio::Latency::Matters(runtime::COORDINATOR_LATENCY),
            name,
        )
    };
    let raft_queue = queue("raft", 1000);
    let apply_queue = queue("apply", 500);
    let watch_queue = queue("watch", 500);
    let spawn =
        |name: &'static str,
         tq,
         task: crate::coordinator::seams::LocalFuture<'static, anyhow::Result<()>>| {
            let fatal = fatal.clone();
            glommio::spawn_local_into(
                async move {
                    if let Err(e) = task.await {
                        let _ = fatal.send(format!("{name}: {e:#}"));
                    }
                },
                tq,
            )
            .expect("the task queue was just created")
            .detach();
        };
    let CoordinatorParts {
        peer_options,
        peer_slot,
        recovered,
        restored,
        wal_dir,
        wal_options,
        checkpoint_dir,
        boot,
        applier,
        watch_progress_interval,
        raft_tx,
        raft_rx,
        queries_rx,
        watch_tx,
        watch_rx,
        serving_tx,
    } = parts;
    let (peer_tx, peer_rx) = flume::bounded(coordinator::COORDINATOR_INBOX_MAX);
    let (transport, peer_client) = match crate::peer::PeerTransport::start(peer_options, peer_tx) {
        Ok(started) => started,
        Err(e) => {
            let _ = fatal.send(format!("starting the peer transport: {e:#}"));
            return;
        }
    };
    let _ = peer_slot.set(peer_client);
    let (apply_tx, apply_rx) = flume::unbounded();
    let slot = std::rc::Rc::new(std::cell::RefCell::new(Default::default()));
    let applier = match Applier::new(
        applier,
        restored,
        shards.clone(),
        published.clone(),
        ApplierLinks {
            snapshot_slot: slot.clone(),
            queue: apply_rx,
            queries: queries_rx,
            raft_tx,
            watch_tx,
        },
        FileCheckpointStore::new(checkpoint_dir),
        SystemClock,
    ) {
        Ok(a) => a,
        Err(e) => {
            let _ = fatal.send(format!("applier: {e:#}"));
            return;
        }
    };
    let start_revision = applier.revision();
    spawn(
        "watch hub",
        watch_queue,
        Box::pin(coordinator::watch::run(
            watch_rx,
            shards,
            published.clone(),
            start_revision,
            watch_progress_interval,
            SystemClock,
        )),
    );
    spawn("applier", apply_queue, Box::pin(applier.run()));
    spawn(
        "raft node",
        raft_queue,
        Box::pin(async move {
            let wal = wal::Wal::open(&wal_dir, &recovered, wal_options).await?;
            let node = RaftNode::new(
                boot,
                FileRaftLog::new(wal),
                transport,
                SystemClock,
                raft_rx,
                peer_rx,
                apply_tx,
                published,
                serving_tx,
                slot,
            )?;
            node.run().await
        }),
    );
}

/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds.
fn lease_ttl_min_secs(cfg: &Config) -> i64 {
    let ticks = (cfg.election_timeout_ms / cfg.heartbeat_interval_ms.max(1)).max(1);
    let min_ms = (3 * ticks / 2) * cfg.heartbeat_interval_ms;
    min_ms.div_ceil(1000) as i64
}

/// Blocks SIGINT and SIGTERM in every thread (the executors inherit the mask), so that one
/// thread can take them with sigwait.
fn block_signals() {
    // SAFETY: plain signal-mask syscalls on a stack set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn wait_for_signal() -> &'static str {
    // SAFETY: as above; sigwait only reads the set and writes the signal number.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        if sig == libc::SIGINT {
            "SIGINT"
        } else {
            "SIGTERM"
        }
    }
}
