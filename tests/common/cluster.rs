//! Several rusd processes as one cluster, for tests: members started together (each waits for
//! the others to elect a leader), their peer links through proxies the test can blackhole.
//!
//! Each member listens for peers on a port of its own and advertises a proxy's port instead.
//! A proxy reads the first frame of every connection (the peer protocol's handshake, which
//! names the sender) before it forwards anything, so it knows who talks to whom: cutting a
//! member off drops its connections in both directions and refuses new ones.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{free_port, spawn_reader, Client};

/// How long a whole cluster may take to serve.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Member IDs that may not talk to anyone, shared by every proxy.
type Cut = Arc<Mutex<BTreeSet<u64>>>;

struct Proxy {
    /// Open connections with the sender each named, so a cut can close them.
    conns: Arc<Mutex<Vec<(u64, TcpStream)>>>,
}

impl Proxy {
    /// Forwards `listen` to `target`, the peer port of member `owner`.
    /// `owner` is filled in once the member has logged its ID; until then nobody is cut.
    fn start(listener: TcpListener, target: u16, owner: Arc<AtomicU64>, cut: Cut) -> Proxy {
        let conns: Arc<Mutex<Vec<(u64, TcpStream)>>> = Arc::default();
        let list = conns.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut inbound) = stream else { return };
                let cut = cut.clone();
                let list = list.clone();
                let owner = owner.load(Ordering::SeqCst);
                thread::spawn(move || {
                    // The preamble, then the handshake frame: a big-endian length and the
                    // protobuf handshake with the sender's ID.
                    let mut head = vec![0u8; 12];
                    if inbound.read_exact(&mut head).is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes(head[8..12].try_into().unwrap()) as usize;
                    if len > 64 * 1024 {
                        return;
                    }
                    let mut frame = vec![0u8; len];
                    if inbound.read_exact(&mut frame).is_err() {
                        return;
                    }
                    let Ok(hello) = rusd::peer::wire::decode_handshake(Bytes::from(frame.clone()))
                    else {
                        return;
                    };
                    let from = hello.from;
                    {
                        let cut = cut.lock().unwrap();
                        if cut.contains(&from) || cut.contains(&owner) {
                            return;
                        }
                    }
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                        return;
                    };
                    if outbound.write_all(&head).is_err() || outbound.write_all(&frame).is_err() {
                        return;
                    }
                    {
                        let mut list = list.lock().unwrap();
                        list.push((from, inbound.try_clone().unwrap()));
                        list.push((from, outbound.try_clone().unwrap()));
                    }
                    let (mut a, mut b) =
                        (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(Shutdown::Both);
                    });
                    let _ = std::io::copy(&mut outbound, &mut inbound);
                    let _ = inbound.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy { conns }
    }

    /// Closes the open connections of `member` (or all of them when `member` owns this proxy).
    fn sever(&self, member: u64, owner: u64) {
        let mut conns = self.conns.lock().unwrap();
        conns.retain(|(from, stream)| {
            if *from == member || member == owner {
                let _ = stream.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }
}

pub struct Member {
    pub name: String,
    pub id: u64,
    pub client_port: u16,
    peer_port: u16,
    proxy_port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
    pub log: Arc<Mutex<String>>,
    /// For a member that joins a running cluster: its --initial-cluster (with
    /// --initial-cluster-state existing); `None` for the founding members.
    joins: Option<String>,
    /// Flags of this member only, after the cluster's.
    pub extra_args: Vec<String>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }
    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }
    /// The peer URL the others reach this member at (its proxy's).
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    proxies: Vec<Proxy>,
    /// Each proxy's owner ID, known once its member has started.
    owners: Vec<Arc<AtomicU64>>,
    cut: Cut,
    initial_cluster: String,
    _dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl Cluster {
    /// Starts `n` members (`--shards 1` each) and waits until every one serves.
    pub fn start(n: usize, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("rusd-cluster-")
            .tempdir()
            .unwrap();
        let cut: Cut = Arc::default();
        let mut members = Vec::new();
        let mut listeners = Vec::new();
        for i in 0..n {
            let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
            let proxy_port = proxy.local_addr().unwrap().port();
            listeners.push(proxy);
            members.push(Member {
                name: format!("m{i}"),
                id: 0,
                client_port: free_port(),
                peer_port: free_port(),
                proxy_port,
                data_dir: dir.path().join(format!("m{i}")),
                child: None,
                log: Arc::default(),
                joins: None,
                extra_args: Vec::new(),
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.proxy_port))
            .collect::<Vec<_>>()
            .join(",");
        // The proxies run from the start: members elect their first leader through them.
        let owners: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::default()).collect();
        let proxies = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| Proxy::start(l, members[i].peer_port, owners[i].clone(), cut.clone()))
            .collect();
        let mut cluster = Cluster {
            members,
            proxies,
            owners,
            cut: cut.clone(),
            initial_cluster,
            _dir: dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        let ready: Vec<_> = (0..n).map(|i| cluster.spawn(i)).collect();
        for (i, rx) in ready.into_iter().enumerate() {
            cluster.wait_ready(i, rx);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) -> mpsc::Receiver<bool> {
        let (bin, _) = super::server_binary();
        let m = &mut self.members[i];
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["--name", &m.name, "--shards", "1", "--data-dir"])
            .arg(&m.data_dir)
            .args([
                "--listen-client-urls",
                &m.url(),
                "--advertise-client-urls",
                &m.url(),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer_port),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.proxy_port),
                "--initial-cluster-token",
                "test-cluster",
            ]);
        match &m.joins {
            Some(initial_cluster) => cmd.args([
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                "existing",
            ]),
            None => cmd.args(["--initial-cluster", &self.initial_cluster]),
        };
        cmd.args(&self.extra_args)
            .args(&m.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawning a member");
        let (tx, rx) = mpsc::channel();
        spawn_reader(
            child.stdout.take().unwrap(),
            m.log.clone(),
            Some(tx.clone()),
        );
        spawn_reader(child.stderr.take().unwrap(), m.log.clone(), Some(tx));
        m.child = Some(child);
        rx
    }

    fn wait_ready(&mut self, i: usize, rx: mpsc::Receiver<bool>) {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        loop {
            if let Ok(true) = rx.recv_timeout(Duration::from_millis(50)) {
                break;
            }
            let m = &mut self.members[i];
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited ({st}); its log:\n{}",
                    m.name,
                    m.log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not serve in time; its log:\n{}",
                m.name,
                m.log.lock().unwrap()
            );
        }
        let log = self.members[i].log.lock().unwrap().clone();
        let id = log
            .lines()
            .filter(|l| l.contains("\"member identity\""))
            .filter_map(|l| l.split("\"local-member-id\":\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .next_back()
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .expect("the member logs its identity");
        self.members[i].id = id;
        self.owners[i].store(id, Ordering::SeqCst);
    }

    /// A new member (`m<index>`), with its ports and its proxy, not started: add it with
    /// `member add` at [`Member::peer_url`], then [`Cluster::start_joining`].
    pub fn new_member(&mut self) -> usize {
        let i = self.members.len();
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_port = proxy.local_addr().unwrap().port();
        let member = Member {
            name: format!("m{i}"),
            id: 0,
            client_port: free_port(),
            peer_port: free_port(),
            proxy_port,
            data_dir: self._dir.path().join(format!("m{i}")),
            child: None,
            log: Arc::default(),
            joins: None,
            extra_args: Vec::new(),
        };
        let owner: Arc<AtomicU64> = Arc::default();
        self.proxies.push(Proxy::start(
            proxy,
            member.peer_port,
            owner.clone(),
            self.cut.clone(),
        ));
        self.owners.push(owner);
        self.members.push(member);
        i
    }

    /// Starts member `i` with --initial-cluster-state existing and an --initial-cluster of
    /// `cluster` (indices of the members the running cluster has, `i` among them), and waits
    /// until it serves.
    pub fn start_joining(&mut self, i: usize, cluster: &[usize]) {
        assert!(!self.members[i].is_up());
        let initial_cluster = cluster
            .iter()
            .map(|&j| format!("{}={}", self.members[j].name, self.members[j].peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        self.members[i].joins = Some(initial_cluster);
        let rx = self.spawn(i);
        self.wait_ready(i, rx);
    }

    /// Starts member `i` with --initial-cluster-state existing as [`Cluster::start_joining`]
    /// does, expecting it to exit by itself within `within`; its exit status.
    pub fn start_joining_expecting_exit(
        &mut self,
        i: usize,
        initial_cluster: &str,
        within: Duration,
    ) -> std::process::ExitStatus {
        self.members[i].joins = Some(initial_cluster.to_string());
        let _ready = self.spawn(i);
        self.wait_exit(i, within).unwrap_or_else(|| {
            panic!(
                "{} still runs; its log:\n{}",
                self.members[i].name,
                self.members[i].log.lock().unwrap()
            )
        })
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped member again on its data dir and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.members[i].is_up());
        let rx = self.spawn(i);
        self.wait_ready(i, rx);
    }

    /// Starts several stopped members again together (none can serve before a quorum runs)
    /// and waits until each serves.
    pub fn restart_together(&mut self, members: &[usize]) {
        let ready: Vec<_> = members
            .iter()
            .map(|&i| {
                assert!(!self.members[i].is_up());
                (i, self.spawn(i))
            })
            .collect();
        for (i, rx) in ready {
            self.wait_ready(i, rx);
        }
    }

    /// Waits up to `within` for member `i`'s process to exit on its own; its exit status, or
    /// `None` if it still runs.
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.members[i].child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.members[i].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a stopped member again on its data dir, expecting it to exit by itself within
    /// `within` without serving; its exit status.
    pub fn restart_expecting_exit(
        &mut self,
        i: usize,
        within: Duration,
    ) -> std::process::ExitStatus {
        assert!(!self.members[i].is_up());
        self.members[i].log.lock().unwrap().clear();
        let _ready = self.spawn(i);
        self.wait_exit(i, within).unwrap_or_else(|| {
            panic!(
                "{} still runs; its log:\n{}",
                self.members[i].name,
                self.members[i].log.lock().unwrap()
            )
        })
    }

    /// Cuts member `i` off from every other member, both ways.
    pub fn isolate(&self, i: usize) {
        let id = self.members[i].id;
        self.cut.lock().unwrap().insert(id);
        for (j, p) in self.proxies.iter().enumerate() {
            p.sever(id, self.members[j].id);
        }
    }

    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }

    /// The index of the member every running member names as leader, if they agree.
    pub async fn leader(&self) -> Option<usize> {
        let mut seen = None;
        for m in self.members.iter().filter(|m| m.is_up()) {
            let leader = m.client().await.status().await.leader;
            if leader == 0 || seen.is_some_and(|s| s != leader) {
                return None;
            }
            seen = Some(leader);
        }
        // Right after a kill the others still name the dead member for an election timeout.
        self.members
            .iter()
            .position(|m| Some(m.id) == seen && m.is_up())
    }

    /// Waits until the running members agree on a leader (among `allowed`), for at most
    /// `within`.
    pub async fn wait_leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader().await {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.is_up())
            .map(|m| m.endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
