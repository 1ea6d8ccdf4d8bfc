//! Shared harness of rusd's integration tests: starts the real `rusd` binary on a free port
//! with a temporary data dir, waits for it to serve, kills it with SIGKILL on drop, restarts it
//! on the same data dir; runs every scenario for `--shards 1` and `--shards 2`; gives a Rust
//! gRPC client (the `proto` crate's generated clients over a tonic channel) and the reference
//! `etcdctl` v3.5.17.
//!
//! Environment:
//! - `ETCDCTL`: path of the etcdctl binary; default `~/.cache/rusd/etcd-v3.5.17/bin/etcdctl`,
//!   built with `scripts/etcd-ref-tools.sh etcdctl` when missing.
//! - `RUSD_TEST_ETCD`: path of an etcd v3.5.17 binary to run *instead of* rusd (no `--shards`),
//!   to check the suite's expectations against the reference, e.g.
//!   `RUSD_TEST_ETCD=~/.cache/rusd/etcd-v3.5.17/bin/etcd cargo test --test kv`.
//!   kv, errors, etcdctl, restart and crash all pass against etcd v3.5.17 (except
//!   `errors::invalid_sort_option`, a deliberate difference); bad_input reads rusd's WAL format.
//! - `RUSD_TEST_GDB=1`: when a test fails with its server still running, print gdb's
//!   backtraces of every server thread and their kernel stacks (for stalls).

#![allow(dead_code)]

pub mod cluster;

use std::collections::HashSet;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::etcdserverpb as pb;
use proto::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use tonic::transport::Channel;

/// The shard counts every scenario runs with.
pub const SHARD_COUNTS: [usize; 2] = [1, 2];

/// How long a server may take to print "ready to serve client requests".
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `f` once per shard count, each on a fresh multi-threaded tokio runtime. The shard count
/// is printed first, so a failure's output says which run failed.
pub fn each_shards<F, Fut>(f: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for shards in SHARD_COUNTS {
        eprintln!("=== --shards {shards}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building a tokio runtime");
        rt.block_on(f(shards));
    }
}

// ---------------------------------------------------------------------------------------------
// Ports

/// Ports handed out by this process (tests of one binary run in parallel threads).
fn used_ports() -> &'static Mutex<HashSet<u16>> {
    static USED: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    USED.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A free TCP port on 127.0.0.1 in 24000-29999 (clear of etcd's e2e range 20000-20100): a
/// random candidate that this process has not handed out and that binds right now.
pub fn free_port() -> u16 {
    let mut rng = Rng::new(time_seed() ^ u64::from(std::process::id()) << 32);
    let mut used = used_ports().lock().unwrap();
    for _ in 0..10_000 {
        let port = 24000 + rng.below(6000) as u16;
        if used.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free port in 24000-29999");
}

// ---------------------------------------------------------------------------------------------
// Randomness

/// splitmix64: small, seedable, good enough for test schedules.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

pub fn time_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

// ---------------------------------------------------------------------------------------------
// The server

/// The binary under test: rusd, or the reference etcd when `RUSD_TEST_ETCD` is set.
fn server_binary() -> (PathBuf, bool) {
    match std::env::var_os("RUSD_TEST_ETCD") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(env!("CARGO_BIN_EXE_rusd")), false),
    }
}

/// True when the suite runs against the reference etcd instead of rusd.
pub fn against_reference_etcd() -> bool {
    server_binary().1
}

/// How a server process ended before it served.
#[derive(Debug)]
pub struct StartFailure {
    /// `None` if it was still running when the wait timed out (it is killed then).
    pub status: Option<ExitStatus>,
    pub log: String,
}

/// Options of a server to start.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub shards: usize,
    /// Run the reference etcd instead of the binary under test.
    pub reference_etcd: bool,
    /// Extra command-line flags (etcd's names), e.g. `["--max-request-bytes", "1024"]`.
    pub args: Vec<String>,
}

impl ServerOpts {
    pub fn new(shards: usize) -> ServerOpts {
        ServerOpts {
            shards,
            reference_etcd: false,
            args: Vec::new(),
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> ServerOpts {
        self.args.push(a.into());
        self
    }
    pub fn start(self) -> Server {
        Server::start_with(self)
    }
    /// The reference etcd v3.5.17, whatever the suite runs against.
    pub fn reference_etcd(mut self) -> ServerOpts {
        self.reference_etcd = true;
        self
    }
}

/// A running (or stopped, between `kill` and `restart`) server process. SIGKILLed on drop.
pub struct Server {
    pub opts: ServerOpts,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// How many times the process was started on this data dir.
    pub starts: usize,
}

impl Server {
    /// Starts a server with `--shards shards` and default flags.
    pub fn start(shards: usize) -> Server {
        Server::start_with(ServerOpts::new(shards))
    }

    pub fn start_with(opts: ServerOpts) -> Server {
        Server::start_prepared(opts, |_| {})
    }

    /// A server that is not started yet, on a data dir that `prepare` filled: start it with
    /// `restart` or `restart_expecting_failure`.
    pub fn prepared(opts: ServerOpts, prepare: impl FnOnce(&Path)) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("rusd-test-")
            .tempdir()
            .expect("creating a temp dir");
        let s = Server {
            opts,
            port: free_port(),
            dir,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            starts: 0,
        };
        prepare(&s.data_dir());
        s
    }

    /// Starts a server on a data dir that `prepare` fills first (it is given the path of the
    /// data dir, which does not exist yet).
    pub fn start_prepared(opts: ServerOpts, prepare: impl FnOnce(&Path)) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("rusd-test-")
            .tempdir()
            .expect("creating a temp dir");
        let mut s = Server {
            opts,
            port: 0,
            dir,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            starts: 0,
        };
        prepare(&s.data_dir());
        // A port that was free when probed can be taken before the server binds it: retry.
        for attempt in 0.. {
            s.port = free_port();
            match s.try_spawn() {
                Ok(()) => return s,
                Err(f) if attempt < 5 && f.log.contains("in use") => continue,
                Err(f) => panic!(
                    "the server did not start (status {:?}); its log:\n{}",
                    f.status, f.log
                ),
            }
        }
        unreachable!()
    }

    /// The data dir (`--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `<data-dir>/member/wal`.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir().join("member").join("wal")
    }

    /// The WAL files, sorted by name.
    pub fn wal_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.wal_dir())
            .expect("reading the wal dir")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        files.sort();
        files
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `host:port`, as etcdctl's `--endpoints` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything the process (all its starts) wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn command(&self) -> Command {
        let (bin, is_etcd) = if self.opts.reference_etcd {
            (etcd_path(), true)
        } else {
            server_binary()
        };
        let mut cmd = Command::new(bin);
        // etcd (and so rusd) read ETCD_* variables as flags: keep the caller's out.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("ETCD_") || k.starts_with("RUSD_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(self.url())
            .arg("--advertise-client-urls")
            .arg(self.url());
        // The server (etcd, and rusd as etcd) also listens for peers: give it a free port of
        // its own unless the test chose its peer URLs, so that servers of parallel tests
        // never meet on the default :2380. The advertised peer URL stays etcd's default, which
        // the member ID is computed from.
        {
            if !self
                .opts
                .args
                .iter()
                .any(|a| a.contains("listen-peer-urls"))
            {
                let peer = format!("http://127.0.0.1:{}", free_port());
                cmd.args(["--listen-peer-urls", &peer]);
                if !self
                    .opts
                    .args
                    .iter()
                    .any(|a| a.contains("advertise-peer-urls"))
                {
                    cmd.args(["--initial-advertise-peer-urls", "http://localhost:2380"]);
                }
            }
        }
        if !is_etcd {
            cmd.arg("--shards").arg(self.opts.shards.to_string());
        }
        cmd.args(&self.opts.args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // If the test process dies without dropping the Server (abort, SIGKILL), the server
        // goes with it. (Servers are started and dropped on the test's own thread.)
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Spawns the process and waits until it serves (`Ok`), exits, or times out (`Err`; the
    /// process is gone then).
    fn try_spawn(&mut self) -> Result<(), StartFailure> {
        assert!(self.child.is_none(), "the server is already running");
        self.starts += 1;
        {
            let mut log = self.log.lock().unwrap();
            if !log.is_empty() {
                log.push('\n');
            }
            log.push_str(&format!("----- start #{} -----\n", self.starts));
        }
        let mut child = self.command().spawn().expect("spawning the server");
        let (ready_tx, ready_rx) = mpsc::channel::<bool>();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        spawn_reader(stderr, self.log.clone(), Some(ready_tx.clone()));
        spawn_reader(stdout, self.log.clone(), Some(ready_tx));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(true) => {
                    self.child = Some(child);
                    return Ok(());
                }
                // Both pipes closed: the process is gone (or closed them; wait to see).
                Ok(false) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = child.try_wait().expect("waiting for the server") {
                // Let the readers drain what is left.
                std::thread::sleep(Duration::from_millis(50));
                return Err(StartFailure {
                    status: Some(status),
                    log: self.log(),
                });
            }
            if Instant::now() > deadline {
                let pid = child.id();
                self.child = Some(child);
                let dump = self.thread_dump();
                let mut child = self.child.take().unwrap();
                eprintln!("server pid {pid} not ready in time; {dump}");
                let _ = child.kill();
                let _ = child.wait();
                return Err(StartFailure {
                    status: None,
                    log: format!(
                        "{}\n(no \"ready to serve client requests\" within {READY_TIMEOUT:?})",
                        self.log()
                    ),
                });
            }
        }
    }

    /// Starts the (stopped) server again on the same data dir and port; panics with the log if
    /// it does not serve.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(f) = self.try_spawn() {
            panic!(
                "the server did not restart (status {:?}); its log:\n{}",
                f.status, f.log
            );
        }
    }

    /// Starts the (stopped) server again; `Err` with the log if it does not serve.
    pub fn try_restart(&mut self) -> Result<(), StartFailure> {
        self.kill();
        self.try_spawn()
    }

    /// Starts the stopped server again and expects it to fail; returns how it failed.
    pub fn restart_expecting_failure(&mut self) -> StartFailure {
        self.kill();
        match self.try_spawn() {
            Ok(()) => panic!(
                "the server started although it was expected to refuse; its log:\n{}",
                self.log()
            ),
            Err(f) => f,
        }
    }

    /// SIGKILL, and reap. No-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for the process to exit; returns its status, or
    /// `None` if it did not exit in time (it is SIGKILLed then).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A gRPC client connected to this server.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// Runs the reference etcdctl against this server.
    pub fn etcdctl(&self, args: &[&str]) -> CtlOutput {
        etcdctl(&self.endpoint(), args, None)
    }

    /// Runs etcdctl with `stdin` as its standard input.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> CtlOutput {
        etcdctl(&self.endpoint(), args, Some(stdin))
    }
}

impl Server {
    /// What each thread of the live process is doing (kernel view: state, wait channel,
    /// kernel stack), and with `RUSD_TEST_GDB=1` gdb's backtraces: for reports of stalls.
    pub fn thread_dump(&self) -> String {
        let Some(pid) = self.pid() else {
            return "(not running)".into();
        };
        let mut out = format!("threads of pid {pid}:\n");
        let tasks = format!("/proc/{pid}/task");
        let mut tids: Vec<String> = std::fs::read_dir(&tasks)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        tids.sort();
        for tid in tids {
            let read = |f: &str| {
                std::fs::read_to_string(format!("{tasks}/{tid}/{f}"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            let stat = read("stat");
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            out.push_str(&format!(
                "  {tid} {:<16} state={state} wchan={} syscall={}\n",
                read("comm"),
                read("wchan"),
                read("syscall").split(' ').next().unwrap_or("")
            ));
            if std::env::var_os("RUSD_TEST_GDB").is_some() {
                for l in read("stack").lines().take(8) {
                    out.push_str(&format!("      {l}\n"));
                }
            }
        }
        if std::env::var_os("RUSD_TEST_GDB").is_some() {
            if let Ok(o) = Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt",
                ])
                .output()
            {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
            }
        }
        out
    }
}

impl Server {
    /// The server's TCP connections from /proc/net/tcp: `local -> remote state tx_queue
    /// rx_queue`. A connection with a non-zero rx_queue has request bytes the server has not
    /// read.
    pub fn socket_queues(&self) -> String {
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let port = format!("{:04X}", self.port);
        let mut out = String::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 {
                continue;
            }
            let local_port = f[1].rsplit(':').next().unwrap_or("");
            if local_port != port {
                continue;
            }
            let remote_port =
                u16::from_str_radix(f[2].rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
            let (tx, rx) = f[4].split_once(':').unwrap_or(("?", "?"));
            let tx = u64::from_str_radix(tx, 16).unwrap_or(0);
            let rx = u64::from_str_radix(rx, 16).unwrap_or(0);
            out.push_str(&format!(
                "  :{} <- :{remote_port} state {} tx_queue {tx} rx_queue {rx}\n",
                self.port, f[3]
            ));
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("{}", self.thread_dump());
        }
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "----- server log (last {} lines, --shards {}) -----",
                tail.len(),
                self.opts.shards
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn spawn_reader(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    ready: Option<mpsc::Sender<bool>>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    log.lock().unwrap().push_str(&text);
                    if text.contains("\"msg\":\"ready to serve client requests\"") {
                        if let Some(tx) = &ready {
                            let _ = tx.send(true);
                        }
                    }
                }
            }
        }
        if let Some(tx) = &ready {
            let _ = tx.send(false);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// gRPC client

#[derive(Clone)]
pub struct Client {
    pub kv: KvClient<Channel>,
    pub maintenance: MaintenanceClient<Channel>,
    pub cluster: ClusterClient<Channel>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let channel = Channel::from_shared(url.to_string())
            .expect("a valid URL")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e:?}"));
        Client {
            kv: KvClient::new(channel.clone()),
            maintenance: MaintenanceClient::new(channel.clone()),
            cluster: ClusterClient::new(channel),
        }
    }

    pub async fn put(&mut self, key: &str, value: &str) -> pb::PutResponse {
        self.kv
            .put(pb::PutRequest {
                key: b(key),
                value: b(value),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("put {key:?}: {e:?}"))
            .into_inner()
    }

    /// The revision a put's response header reported.
    pub async fn put_rev(&mut self, key: &str, value: &str) -> i64 {
        self.put(key, value).await.header.unwrap().revision
    }

    pub async fn range(&mut self, req: pb::RangeRequest) -> pb::RangeResponse {
        self.kv
            .range(req.clone())
            .await
            .unwrap_or_else(|e| panic!("range {req:?}: {e:?}"))
            .into_inner()
    }

    /// The single key `key` (linearizable), or `None`.
    pub async fn get(&mut self, key: &str) -> Option<proto::mvccpb::KeyValue> {
        let mut r = self
            .range(pb::RangeRequest {
                key: b(key),
                ..Default::default()
            })
            .await;
        assert!(r.kvs.len() <= 1);
        r.kvs.pop()
    }

    /// Every key (`\0`..`\0`) at the current revision, in key order.
    pub async fn all(&mut self) -> pb::RangeResponse {
        self.range(pb::RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        })
        .await
    }

    pub async fn delete(&mut self, req: pb::DeleteRangeRequest) -> pb::DeleteRangeResponse {
        self.kv
            .delete_range(req.clone())
            .await
            .unwrap_or_else(|e| panic!("delete {req:?}: {e:?}"))
            .into_inner()
    }

    pub async fn txn(&mut self, req: pb::TxnRequest) -> pb::TxnResponse {
        self.kv
            .txn(req.clone())
            .await
            .unwrap_or_else(|e| panic!("txn {req:?}: {e:?}"))
            .into_inner()
    }

    pub async fn compact(&mut self, revision: i64) -> pb::CompactionResponse {
        self.kv
            .compact(pb::CompactionRequest {
                revision,
                physical: true,
            })
            .await
            .unwrap_or_else(|e| panic!("compact {revision}: {e:?}"))
            .into_inner()
    }

    pub async fn status(&mut self) -> pb::StatusResponse {
        self.maintenance
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// The current revision (from a Status header).
    /// Every key at every revision in `from..=to`: the whole visible history.
    pub async fn history(
        &mut self,
        from: i64,
        to: i64,
    ) -> Vec<(i64, Vec<proto::mvccpb::KeyValue>)> {
        let mut history = Vec::new();
        for rev in from..=to {
            let r = self
                .range(pb::RangeRequest {
                    key: b("\0"),
                    range_end: b("\0"),
                    revision: rev,
                    ..Default::default()
                })
                .await;
            history.push((rev, r.kvs));
        }
        history
    }

    pub async fn revision(&mut self) -> i64 {
        self.status().await.header.unwrap().revision
    }

    pub async fn hash_kv(&mut self, revision: i64) -> pb::HashKvResponse {
        self.maintenance
            .hash_kv(pb::HashKvRequest { revision })
            .await
            .expect("hash_kv")
            .into_inner()
    }
}

/// Bytes of a `&str`.
pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A `&[u8]` as a lossy string, for messages.
pub fn s(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that `result` is a gRPC error with exactly `code` and `message`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    message: &str,
) {
    match result {
        Ok(v) => panic!("expected {code:?} {message:?}, got a success: {v:?}"),
        Err(st) => {
            assert_eq!(
                (st.code(), st.message()),
                (code, message),
                "unexpected status: {st:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// etcdctl

/// The reference etcdctl v3.5.17: `$ETCDCTL`, else the cache's, built when missing.
pub fn etcdctl_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| reference_tool("etcdctl", "ETCDCTL"))
        .clone()
}

/// The reference etcdutl v3.5.17: `$ETCDUTL`, else the cache's, built when missing.
pub fn etcdutl_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| reference_tool("etcdutl", "ETCDUTL"))
        .clone()
}

/// The reference etcd-dump-logs v3.5.17 (etcd's WAL reader): `$ETCD_DUMP_LOGS`, else the
/// cache's, built when missing.
pub fn etcd_dump_logs_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| reference_tool("etcd-dump-logs", "ETCD_DUMP_LOGS"))
        .clone()
}

/// The reference etcd v3.5.17 server: `$ETCD_BIN`, else the cache's, built when missing.
pub fn etcd_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| reference_tool("etcd", "ETCD_BIN"))
        .clone()
}

fn reference_tool(tool: &str, variable: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "{variable}={} does not exist", p.display());
        return p;
    }
    let cache = std::env::var_os("RUSD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/rusd")
        });
    let default = cache.join("etcd-v3.5.17/bin").join(tool);
    if default.exists() {
        return default;
    }
    // Build it (Go module proxy), never skip the tests that need it.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/etcd-ref-tools.sh");
    eprintln!("{tool} not found at {}: building it", default.display());
    let out = Command::new("bash")
        .arg(&script)
        .arg(tool)
        .stderr(Stdio::inherit())
        .output()
        .expect("running scripts/etcd-ref-tools.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/etcd-ref-tools.sh {tool} failed ({}):\n{stdout}",
        out.status
    );
    let bin_dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .expect("etcd-ref-tools.sh prints the bin dir last")
        .trim()
        .to_string();
    let p = PathBuf::from(bin_dir).join(tool);
    assert!(p.exists(), "{} missing after the build", p.display());
    p
}

#[derive(Debug)]
pub struct CtlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Stdout, asserting that etcdctl succeeded.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "etcdctl failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Stdout parsed as JSON, asserting success.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("etcdctl printed no JSON ({e}):\n{out}"))
    }

    /// Stderr, asserting that etcdctl failed.
    #[track_caller]
    pub fn err(&self) -> &str {
        assert!(
            !self.status.success(),
            "etcdctl succeeded although it should fail:\nstdout: {}",
            self.stdout
        );
        &self.stderr
    }
}

pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> CtlOutput {
    use std::io::Write;
    let mut cmd = Command::new(etcdctl_path());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("ETCDCTL_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning etcdctl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes())
            .expect("writing etcdctl's stdin");
    }
    let out = child.wait_with_output().expect("waiting for etcdctl");
    CtlOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A JSON number field as u64 (etcdctl prints IDs as JSON numbers beyond f64's precision:
/// serde_json keeps them exact as u64).
#[track_caller]
pub fn ju64(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

#[track_caller]
pub fn ji64(v: &serde_json::Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// Decodes one of etcdctl's base64 JSON byte fields.
#[track_caller]
pub fn jb64(v: &serde_json::Value) -> String {
    let text = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    String::from_utf8(base64_decode(text)).expect("utf-8")
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => panic!("bad base64 character {c}"),
        }
    }
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Request builders

pub mod ops {
    use super::b;
    use proto::etcdserverpb as pb;
    use proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use proto::etcdserverpb::request_op::Request;
    use proto::etcdserverpb::response_op::Response;

    pub fn put(key: &str, value: &str) -> pb::RequestOp {
        put_req(pb::PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })
    }

    pub fn put_req(p: pb::PutRequest) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestPut(p)),
        }
    }

    pub fn get(key: &str) -> pb::RequestOp {
        range(pb::RangeRequest {
            key: b(key),
            ..Default::default()
        })
    }

    pub fn range(r: pb::RangeRequest) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestRange(r)),
        }
    }

    /// DeleteRange of `[key, end)`; `end == ""` deletes the single key.
    pub fn del(key: &str, end: &str) -> pb::RequestOp {
        del_req(pb::DeleteRangeRequest {
            key: b(key),
            range_end: b(end),
            prev_kv: false,
        })
    }

    pub fn del_req(d: pb::DeleteRangeRequest) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestDeleteRange(d)),
        }
    }

    pub fn txn(t: pb::TxnRequest) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(Request::RequestTxn(t)),
        }
    }

    pub fn txn_req(
        compare: Vec<pb::Compare>,
        success: Vec<pb::RequestOp>,
        failure: Vec<pb::RequestOp>,
    ) -> pb::TxnRequest {
        pb::TxnRequest {
            compare,
            success,
            failure,
        }
    }

    /// An operand of a compare.
    #[derive(Clone, Debug)]
    pub enum Operand {
        Version(i64),
        Create(i64),
        Mod(i64),
        Value(String),
        Lease(i64),
    }

    pub fn cmp(key: &str, range_end: &str, result: CompareResult, operand: Operand) -> pb::Compare {
        let (target, union) = match operand {
            Operand::Version(v) => (CompareTarget::Version, TargetUnion::Version(v)),
            Operand::Create(v) => (CompareTarget::Create, TargetUnion::CreateRevision(v)),
            Operand::Mod(v) => (CompareTarget::Mod, TargetUnion::ModRevision(v)),
            Operand::Value(v) => (CompareTarget::Value, TargetUnion::Value(b(&v))),
            Operand::Lease(v) => (CompareTarget::Lease, TargetUnion::Lease(v)),
        };
        pb::Compare {
            result: result as i32,
            target: target as i32,
            key: b(key),
            range_end: b(range_end),
            target_union: Some(union),
        }
    }

    pub fn as_range(r: &pb::ResponseOp) -> &pb::RangeResponse {
        match &r.response {
            Some(Response::ResponseRange(x)) => x,
            other => panic!("expected a range response, got {other:?}"),
        }
    }

    pub fn as_put(r: &pb::ResponseOp) -> &pb::PutResponse {
        match &r.response {
            Some(Response::ResponsePut(x)) => x,
            other => panic!("expected a put response, got {other:?}"),
        }
    }

    pub fn as_del(r: &pb::ResponseOp) -> &pb::DeleteRangeResponse {
        match &r.response {
            Some(Response::ResponseDeleteRange(x)) => x,
            other => panic!("expected a delete response, got {other:?}"),
        }
    }

    pub fn as_txn(r: &pb::ResponseOp) -> &pb::TxnResponse {
        match &r.response {
            Some(Response::ResponseTxn(x)) => x,
            other => panic!("expected a txn response, got {other:?}"),
        }
    }
}
