//! Command line, environment and config-file handling, compatible with etcd v3.5.17.
//!
//! The command line is built on clap from one table ([`FLAGS`]) that lists every server flag
//! with its kind, default and status ([`server_command`]); the `gateway` and `grpc-proxy`
//! subcommands have their own tables and clap command in `config/proxy.rs`. etcd parses the
//! server's flags with Go's `flag` package, and clap is configured to keep its rules:
//! - `--x=v` or `--x v`; a boolean flag takes an optional value that must be attached
//!   (`--x`, `--x=true`, `--x=false`; clap's `require_equals` + `default_missing_value`); the
//!   last of a repeated flag wins (`args_override_self`); each value is parsed by etcd's own
//!   rules in a clap value parser and refused with Go's texts ("invalid value \"x\" for flag
//!   -name: parse error", "flag provided but not defined: -x", "flag needs an argument: -x").
//! - What clap cannot express is done before clap sees the arguments, in
//!   [`normalize_go_args`]: Go's single-dash long form (`-name`), the first non-flag argument
//!   ending the flags (etcd then refuses it: "'x' is not a valid flag"), a separate value taken
//!   whatever it looks like (`--name --x`), and Go's "bad flag syntax" cases.
//! - `ETCD_<FLAG>` environment variables (dashes become underscores, uppercase) set flags that
//!   were not given on the command line; their values go through the same clap value parsers.
//!   One given both ways is a fatal conflict, as in etcd. Unknown `ETCD_*` variables are
//!   ignored with a warning ([`apply_env`] says why this is not clap's `Arg::env`).
//! - `--config-file` (or `ETCD_CONFIG_FILE`) loads etcd's YAML file format instead, and then
//!   every other flag and `ETCD_*` variable is ignored, as in etcd.
//! - rusd's own flag `--shards N` (env `RUSD_SHARDS`) applies in every mode.
//!
//! [`parse_command`] returns a typed [`Config`] with etcd's names in snake_case, or the
//! configuration of a proxy subcommand.

// An API surface for the whole server: not every item is used yet.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::logging::LogLevel;

mod proxy;
pub use proxy::{proxy_command, GatewayConfig, GrpcProxyConfig, GATEWAY_FLAGS, GRPC_PROXY_FLAGS};

/// The etcd version we present.
pub const ETCD_VERSION: &str = "3.5.17";
/// The etcd cluster version we present (`/version` "etcdcluster").
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";
/// What the official etcd v3.5.17 linux/amd64 release binary prints.
pub const ETCD_GIT_SHA: &str = "507c0de";
pub const ETCD_GO_VERSION: &str = "go1.22.9";

/// What `etcd --version` prints (each line ends with a newline), plus a final rusd line.
pub fn version_text() -> String {
    format!(
        "etcd Version: {}\nGit SHA: {}\nGo Version: {}\nGo OS/Arch: {}/{}\nrusd Version: {}\n",
        ETCD_VERSION,
        ETCD_GIT_SHA,
        ETCD_GO_VERSION,
        "linux",
        go_arch(),
        env!("CARGO_PKG_VERSION")
    )
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// What the process should do.
#[derive(Debug)]
pub enum Command {
    /// Start the server.
    Serve(Box<Config>),
    /// Print [`version_text`] to stdout and exit 0.
    Version,
    /// Print the text to stdout and exit 0 (`-h`, `--help`).
    Help(String),
    /// `etcd gateway start`: the TCP proxy.
    Gateway(GatewayConfig),
    /// `etcd grpc-proxy start`: the gRPC proxy.
    GrpcProxy(Box<GrpcProxyConfig>),
}

/// Why the command line could not be used. See [`ConfigError::exit_code`] and
/// [`ConfigError::report`] for what etcd does with each.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A Go `flag` package error ("flag provided but not defined: -x"). etcd prints the message
    /// and its usage text to stderr and exits 2.
    #[error("{0}")]
    Usage(String),
    /// The flags parsed but do not make a valid configuration. etcd logs
    /// `{"level":"warn",...,"msg":"failed to verify flags","error":"<this>"}` and exits 1.
    #[error("{0}")]
    Invalid(String),
    /// An `ETCD_*` variable names a flag that was also given on the command line: etcd logs a
    /// fatal line with the variable in the field `environment-variable` and exits 1.
    #[error("conflicting environment variable is shadowed by corresponding command-line flag (either unset environment variable or disable flag))")]
    ShadowedEnv(String),
    /// A cobra/pflag error of the `gateway` and `grpc-proxy` subcommands ("unknown flag:
    /// --x"). etcd (cobra) prints `Error: <this>` and a usage hint to stderr and exits 1.
    #[error("{0}")]
    Subcommand(String),
    /// A subcommand's flags parsed but are not usable (etcd's `checkArgs`): printed to stderr
    /// as is, exit 1.
    #[error("{0}")]
    Proxy(String),
}

impl ConfigError {
    /// The exit status etcd uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Reports the error the way etcd does (stderr text, or a zap line through
    /// [`crate::logging`]). The caller then exits with [`ConfigError::exit_code`].
    pub fn report(&self) {
        match self {
            ConfigError::Usage(msg) => {
                use std::io::Write;
                let _ = write!(std::io::stderr(), "{}\n{}\n", msg, usage_text());
            }
            ConfigError::Invalid(msg) => {
                crate::logging::log(
                    LogLevel::Warn,
                    "etcdmain/etcd.go:75",
                    "failed to verify flags",
                    &[("error", serde_json::Value::String(msg.clone()))],
                );
            }
            ConfigError::Subcommand(msg) => {
                use std::io::Write;
                let _ = write!(
                    std::io::stderr(),
                    "Error: {msg}\nRun 'etcd gateway start --help' or 'etcd grpc-proxy start --help' for usage.\n"
                );
            }
            ConfigError::Proxy(msg) => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{msg}");
            }
            ConfigError::ShadowedEnv(var) => {
                crate::logging::log(
                    LogLevel::Fatal,
                    "flags/flag.go:85",
                    &self.to_string(),
                    &[(
                        "environment-variable",
                        serde_json::Value::String(var.clone()),
                    )],
                );
            }
        }
    }
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// A URL as etcd accepts it (`types.NewURLs`): scheme http, https, unix or unixs; for http(s)
/// a `host:port` and no path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Url {
    /// Lowercase: `http`, `https`, `unix` or `unixs`.
    pub scheme: String,
    /// The host without IPv6 brackets (may be empty for unix URLs).
    pub host: String,
    /// 0 when absent (only possible for unix URLs, or `http://h:`).
    pub port: u16,
    /// The URL as Go's `url.URL.String()` prints it; member IDs hash this text.
    pub raw: String,
    /// Go's `url.URL.Host`: host and port as written, IPv6 in brackets.
    pub authority: String,
    /// The path (always empty for http/https).
    pub path: String,
}

impl Url {
    /// Parses and checks one URL as etcd's `types.NewURLs` does.
    pub fn parse(s: &str) -> Result<Url, String> {
        parse_etcd_url(s)
    }

    /// `https` or `unixs`.
    pub fn is_tls(&self) -> bool {
        self.scheme == "https" || self.scheme == "unixs"
    }

    /// `unix` or `unixs`.
    pub fn is_unix(&self) -> bool {
        self.scheme == "unix" || self.scheme == "unixs"
    }

    /// For unix URLs: the socket path etcd listens on (Go: `u.Host + u.Path`).
    pub fn unix_path(&self) -> String {
        format!("{}{}", self.authority, self.path)
    }

    /// `host:port` for connecting or binding (IPv6 in brackets).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Client or peer transport security (etcd's `transport.TLSInfo` plus auto-TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    /// Explicit cert/key used when this side acts as a client (defaults to cert/key).
    pub client_cert_file: String,
    pub client_key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    pub crl_file: String,
    pub allowed_cn: Vec<String>,
    pub allowed_hostname: Vec<String>,
    /// `--experimental-peer-skip-client-san-verification` (peer only).
    pub skip_client_san_verify: bool,
}

impl TlsConfig {
    /// etcd's `TLSInfo.Empty()`: no cert and no key given.
    pub fn is_empty(&self) -> bool {
        self.cert_file.is_empty() && self.key_file.is_empty()
    }
}

/// A log record produced while parsing, to be written once logging is set up
/// ([`Config::emit_startup_logs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StartupLog {
    pub level: LogLevel,
    pub msg: String,
    pub fields: Vec<(String, serde_json::Value)>,
}

/// The server configuration: every etcd v3.5.17 flag, typed, with etcd's names in snake_case.
/// Durations without a unit suffix in their name are `std::time::Duration`.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--config-file` (or `ETCD_CONFIG_FILE`) if the configuration came from a file.
    pub config_file: Option<PathBuf>,

    // --- member
    pub name: String,
    /// `--data-dir`; `${name}.etcd` when not given.
    pub data_dir: PathBuf,
    pub wal_dir: Option<PathBuf>,
    /// Sorted by URL text and deduplicated, as etcd does.
    pub listen_peer_urls: Vec<Url>,
    pub listen_client_urls: Vec<Url>,
    pub listen_client_http_urls: Vec<Url>,
    pub listen_metrics_urls: Vec<Url>,
    pub max_snapshots: u64,
    pub max_wals: u64,
    pub snapshot_count: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub initial_election_tick_advance: bool,
    /// 0 means the default quota (2 GiB).
    pub quota_backend_bytes: i64,
    pub backend_bbolt_freelist_type: String,
    pub backend_batch_interval: Duration,
    pub backend_batch_limit: i64,
    pub max_txn_ops: u64,
    pub max_request_bytes: u64,
    pub grpc_keepalive_min_time: Duration,
    pub grpc_keepalive_interval: Duration,
    pub grpc_keepalive_timeout: Duration,
    pub socket_reuse_port: bool,
    pub socket_reuse_address: bool,
    pub max_concurrent_streams: u32,
    /// Raised to 5s when smaller, as etcd does.
    pub raft_read_timeout: Duration,
    pub raft_write_timeout: Duration,

    // --- clustering
    pub initial_advertise_peer_urls: Vec<Url>,
    pub advertise_client_urls: Vec<Url>,
    pub discovery: String,
    pub discovery_fallback: String,
    pub discovery_proxy: String,
    pub discovery_srv: String,
    pub discovery_srv_name: String,
    /// `name=url` pairs in the order given (a name may repeat: one member, several URLs).
    /// Built from `--name` and `--initial-advertise-peer-urls` when not given; empty when
    /// discovery is used.
    pub initial_cluster: Vec<(String, Url)>,
    /// The `--initial-cluster` text after defaulting.
    pub initial_cluster_raw: String,
    pub initial_cluster_token: String,
    pub initial_cluster_state: ClusterState,
    pub strict_reconfig_check: bool,
    pub pre_vote: bool,
    pub enable_v2: bool,
    pub experimental_enable_v2v3: String,
    /// `not-yet` unless given.
    pub v2_deprecation: String,

    // --- v2 proxy
    /// `off`, `readonly` or `on`.
    pub proxy: String,
    pub proxy_failure_wait_ms: u64,
    pub proxy_refresh_interval_ms: u64,
    pub proxy_dial_timeout_ms: u64,
    pub proxy_write_timeout_ms: u64,
    pub proxy_read_timeout_ms: u64,

    // --- security
    pub client_tls: TlsConfig,
    pub peer_tls: TlsConfig,
    pub self_signed_cert_validity: u64,
    pub cipher_suites: Vec<String>,
    /// `TLS1.2` (default), `TLS1.3`.
    pub tls_min_version: String,
    /// empty (default: let the TLS library decide), `TLS1.2`, `TLS1.3`.
    pub tls_max_version: String,
    /// Allowed CORS origins (`*` = all).
    pub cors: Vec<String>,
    pub host_whitelist: Vec<String>,

    // --- logging
    pub logger: String,
    pub log_level: LogLevel,
    /// `default` (= stderr), `stderr`, `stdout` or file paths.
    pub log_outputs: Vec<String>,
    pub enable_log_rotation: bool,
    pub log_rotation_config_json: String,

    // --- compaction, profiling, metrics
    pub auto_compaction_retention: String,
    pub auto_compaction_mode: String,
    pub enable_pprof: bool,
    /// `basic` or `extensive`.
    pub metrics: String,

    // --- distributed tracing
    pub experimental_enable_distributed_tracing: bool,
    pub experimental_distributed_tracing_address: String,
    pub experimental_distributed_tracing_service_name: String,
    pub experimental_distributed_tracing_instance_id: String,
    pub experimental_distributed_tracing_sampling_rate: i64,

    // --- auth
    /// e.g. `simple` or `jwt,pub-key=..,priv-key=..,sign-method=RS256,ttl=1s`.
    pub auth_token: String,
    pub bcrypt_cost: u32,
    pub auth_token_ttl: u64,
    pub enable_grpc_gateway: bool,

    // --- experimental
    pub experimental_initial_corrupt_check: bool,
    pub experimental_corrupt_check_time: Duration,
    pub experimental_compact_hash_check_enabled: bool,
    pub experimental_compact_hash_check_time: Duration,
    pub experimental_enable_lease_checkpoint: bool,
    pub experimental_enable_lease_checkpoint_persist: bool,
    pub experimental_compaction_batch_limit: i64,
    pub experimental_compaction_sleep_interval: Duration,
    /// Effective interval: 10 minutes when not given or 0, at least 100 ms (as etcd's watch
    /// server applies it).
    pub experimental_watch_progress_notify_interval_ms: u64,
    pub experimental_downgrade_check_time: Duration,
    pub experimental_warning_apply_duration: Duration,
    pub experimental_memory_mlock: bool,
    pub experimental_txn_mode_write_with_shared_buffer: bool,
    pub experimental_stop_grpc_service_on_defrag: bool,
    pub experimental_bootstrap_defrag_threshold_megabytes: u64,
    pub experimental_snapshot_catchup_entries: u64,

    // --- unsafe
    pub unsafe_no_fsync: bool,
    pub force_new_cluster: bool,

    // --- rusd
    /// Number of shards (threads). `--shards 0` (default) resolves to the number of CPUs in
    /// this process's affinity mask; see `shards_requested` for what was asked.
    pub shards: usize,
    pub shards_requested: usize,

    /// Flag names (without dashes) the user set: command line, `ETCD_*`, or config-file keys.
    pub explicitly_set: BTreeSet<String>,
    /// Records etcd would log while parsing (used env vars, unknown env vars, ...).
    pub startup_logs: Vec<StartupLog>,
}

impl Default for Config {
    /// etcd's configuration with no flags at all.
    fn default() -> Config {
        let fs = FlagSet::new();
        let mut cfg = build(&fs, Mode::CommandLine).expect("defaults are valid");
        cfg.shards = 1;
        cfg
    }
}

impl Config {
    /// Whether the user set flag `name` (e.g. `"listen-client-urls"`).
    pub fn is_set(&self, name: &str) -> bool {
        self.explicitly_set.contains(name)
    }

    /// etcd's quota when `--quota-backend-bytes` is 0 (2 GiB); otherwise the given value.
    pub fn effective_quota_backend_bytes(&self) -> i64 {
        if self.quota_backend_bytes <= 0 {
            2 * 1024 * 1024 * 1024
        } else {
            self.quota_backend_bytes
        }
    }

    /// Election timeout in heartbeat ticks.
    pub fn election_ticks(&self) -> u64 {
        self.election_timeout_ms / self.heartbeat_interval_ms.max(1)
    }

    /// The peer URLs of member `name` in the initial cluster, sorted.
    pub fn initial_cluster_urls_of(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .initial_cluster
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, u)| u.raw.clone())
            .collect();
        v.sort();
        v
    }

    /// etcd's bootstrap checks for a new member (`ServerConfig.VerifyBootstrap`, without DNS
    /// resolution): the local name is in the initial cluster with exactly our advertised peer
    /// URLs, and no URL appears twice.
    pub fn verify_bootstrap(&self) -> Result<(), ConfigError> {
        let mine = self.initial_cluster_urls_of(&self.name);
        if mine.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            )));
        }
        let mut adv: Vec<String> = self
            .initial_advertise_peer_urls
            .iter()
            .map(|u| u.raw.clone())
            .collect();
        adv.sort();
        if adv != mine {
            let missing: Vec<String> = mine
                .iter()
                .filter(|u| !adv.contains(u))
                .map(|u| format!("{}={}", self.name, u))
                .collect();
            let apstr = adv.join(",");
            if !missing.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "--initial-cluster has {} but missing from --initial-advertise-peer-urls={} (resolved urls: {:?} != {:?})",
                    missing.join(","),
                    apstr,
                    adv,
                    mine
                )));
            }
            let extra: Vec<String> = adv
                .iter()
                .filter(|u| !mine.contains(u))
                .map(|u| format!("{}={}", self.name, u))
                .collect();
            return Err(ConfigError::Invalid(format!(
                "--initial-advertise-peer-urls has {} but missing from --initial-cluster={} (resolved urls: {:?} != {:?})",
                extra.join(","),
                self.initial_cluster_raw,
                adv,
                mine
            )));
        }
        let mut all: Vec<&str> = self
            .initial_cluster
            .iter()
            .map(|(_, u)| u.raw.as_str())
            .collect();
        all.sort_unstable();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(format!(
                "initial cluster {} has duplicate url",
                self.initial_cluster_raw
            )));
        }
        if self.initial_cluster.is_empty() && self.discovery.is_empty() {
            return Err(ConfigError::Invalid(
                "initial cluster unset and no discovery URL found".into(),
            ));
        }
        Ok(())
    }

    /// Writes [`Config::startup_logs`] through [`crate::logging`] (call after `logging::init`).
    pub fn emit_startup_logs(&self) {
        for l in &self.startup_logs {
            let fields: Vec<(&str, serde_json::Value)> = l
                .fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            crate::logging::log(l.level, "flags/flag.go:113", &l.msg, &fields);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The flag table
// ---------------------------------------------------------------------------------------------

/// How a flag's value is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// Go bool: `--x`, `--x=true|false|1|0|t|f|T|F|TRUE|FALSE|True|False`.
    Bool,
    Str,
    /// Go `uint` (64-bit), base prefixes allowed.
    Uint,
    /// Go `int` (64-bit).
    Int,
    /// etcd's uint32 flag.
    Uint32,
    /// Go duration (`500ms`, `10m`, `1h30m`).
    Duration,
    /// Comma-separated URLs, sorted and deduplicated.
    Urls,
    /// URLs, or `*`.
    Cors,
    /// Comma-separated strings, the last occurrence wins.
    Strings,
    /// Comma-separated strings, sorted and deduplicated.
    UniqueStrings,
    /// One of the listed values.
    Select(&'static [&'static str]),
    /// A comma list of the listed values, accumulated over occurrences.
    SelectMulti(&'static [&'static str]),
    /// Obsolete flag: accepted like a bool and ignored with a warning.
    Ignored,
}

/// One row of the flag table.
#[derive(Debug, Clone, Copy)]
pub struct FlagSpec {
    pub name: &'static str,
    pub kind: FlagKind,
    /// Default as flag text.
    pub default: &'static str,
    /// Section of the help text.
    pub group: &'static str,
    /// One-line description (ours).
    pub help: &'static str,
    /// `None`: rusd implements the flag's effect. `Some(reason)`: accepted without effect.
    pub no_effect: Option<&'static str>,
}

const fn f(
    name: &'static str,
    kind: FlagKind,
    default: &'static str,
    group: &'static str,
    help: &'static str,
    no_effect: Option<&'static str>,
) -> FlagSpec {
    FlagSpec {
        name,
        kind,
        default,
        group,
        help,
        no_effect,
    }
}

use FlagKind::*;

const CLUSTER_STATES: &[&str] = &["new", "existing"];
const FALLBACKS: &[&str] = &["proxy", "exit"];
const PROXY_MODES: &[&str] = &["off", "readonly", "on"];
const V2_DEPRECATIONS: &[&str] = &["not-yet", "write-only", "write-only-drop-data", "gone"];

const G_MEMBER: &str = "Member";
const G_CLUSTER: &str = "Clustering";
const G_SEC: &str = "Security";
const G_AUTH: &str = "Auth";
const G_PROF: &str = "Profiling and Monitoring";
const G_LOG: &str = "Logging";
const G_TRACE: &str = "Experimental distributed tracing";
const G_PROXY: &str = "v2 Proxy";
const G_EXP: &str = "Experimental feature";
const G_UNSAFE: &str = "Unsafe feature";
const G_RUSD: &str = "rusd";
const G_IGN: &str = "Ignored (obsolete)";
/// Settings only the config file can set (no command-line flag in etcd v3.5).
const G_FILE: &str = "config-file only";

const NE_TUNE: Option<&str> = Some("storage/raft tuning knob; rusd uses its own storage engine");
const NE_PEER_TIMEOUT: Option<&str> = Some(
    "peer connections use the transport's own deadlines and heartbeat-driven liveness (docs/peer-protocol.md)",
);
const NE_V2: Option<&str> = Some("v2 API not served");
const NE_PROXY: Option<&str> = Some("v2 proxy mode not implemented");
const NE_TLS_AS_CLIENT: Option<&str> =
    Some("rusd makes no client connections (no loopback gateway); the pair is checked at start");
const NE_DISC: Option<&str> = Some(
    "discovery (v2 discovery service, DNS SRV) not implemented: a non-empty --discovery or --discovery-srv stops start-up",
);
const NE_TRACE: Option<&str> = Some("OpenTelemetry tracing not implemented");
const NE_EXP: Option<&str> = Some("experimental etcd feature not implemented yet");
const NE_IGN: Option<&str> = Some("obsolete flag, ignored by etcd too");
const NE_GRPC: Option<&str> = Some("gRPC keepalive/transport tuning not applied yet");
const NE_LATER: Option<&str> = Some("not implemented yet");

/// Every flag etcd v3.5.17 accepts, plus `--shards`.
pub static FLAGS: &[FlagSpec] = &[
    f("config-file", Str, "", G_MEMBER, "Path to a YAML configuration file; when given, other flags and ETCD_* variables are ignored.", None),
    // member
    f("name", Str, "default", G_MEMBER, "Human-readable name of this member.", None),
    f("data-dir", Str, "", G_MEMBER, "Data directory (default '${name}.etcd').", None),
    f("wal-dir", Str, "", G_MEMBER, "Separate directory for the WAL.", None),
    f("snapshot-count", Uint, "100000", G_MEMBER, "Number of committed transactions to trigger a snapshot to disk (rusd: a checkpoint: shard segments synced, coordinator state saved, a snapshot record in the WAL).", None),
    f("heartbeat-interval", Uint, "100", G_MEMBER, "Heartbeat interval in milliseconds.", None),
    f("election-timeout", Uint, "1000", G_MEMBER, "Election timeout in milliseconds.", None),
    f("initial-election-tick-advance", Bool, "true", G_MEMBER, "Fast-forward election ticks at boot.", Some("not implemented: a starting member waits one full election timeout before it campaigns")),
    f("listen-peer-urls", Urls, "http://localhost:2380", G_MEMBER, "URLs to listen on for peer traffic.", None),
    f("listen-client-urls", Urls, "http://localhost:2379", G_MEMBER, "URLs to listen on for client gRPC and HTTP traffic.", None),
    f("listen-client-http-urls", Urls, "", G_MEMBER, "URLs to listen on for client HTTP only traffic.", NE_LATER),
    f("max-snapshots", Uint, "5", G_MEMBER, "Snapshot files to keep (0 = unlimited) (rusd: the member/snap/*.snap files, one per checkpoint).", None),
    f("max-wals", Uint, "5", G_MEMBER, "WAL files to keep (0 = unlimited) (rusd: only files wholly at or below the last checkpoint are removed).", None),
    f("quota-backend-bytes", Int, "0", G_MEMBER, "Backend size that raises the NOSPACE alarm (0 = 2 GiB).", None),
    f("backend-bbolt-freelist-type", Str, "", G_MEMBER, "bbolt freelist type (array or map).", NE_TUNE),
    f("backend-batch-interval", Duration, "0s", G_MEMBER, "Longest time before a backend commit.", NE_TUNE),
    f("backend-batch-limit", Int, "0", G_MEMBER, "Most operations before a backend commit.", NE_TUNE),
    f("max-txn-ops", Uint, "128", G_MEMBER, "Most operations in one transaction.", None),
    f("max-request-bytes", Uint, "1572864", G_MEMBER, "Largest client request in bytes.", None),
    f("max-concurrent-streams", Uint32, "4294967295", G_MEMBER, "Most concurrent streams per client connection.", None),
    f("grpc-keepalive-min-time", Duration, "5s", G_MEMBER, "Shortest client ping interval allowed.", NE_GRPC),
    f("grpc-keepalive-interval", Duration, "2h0m0s", G_MEMBER, "Server-to-client ping interval (0 = off).", NE_GRPC),
    f("grpc-keepalive-timeout", Duration, "20s", G_MEMBER, "Wait for a ping answer before closing (0 = off).", NE_GRPC),
    f("socket-reuse-port", Bool, "false", G_MEMBER, "Set SO_REUSEPORT on listeners.", NE_LATER),
    f("socket-reuse-address", Bool, "false", G_MEMBER, "Set SO_REUSEADDR on listeners.", NE_LATER),
    f("raft-read-timeout", Duration, "5s", G_MEMBER, "Read timeout of peer connections (at least 5s).", NE_PEER_TIMEOUT),
    f("raft-write-timeout", Duration, "5s", G_MEMBER, "Write timeout of peer connections (at least 5s).", NE_PEER_TIMEOUT),
    // clustering
    f("initial-advertise-peer-urls", Urls, "http://localhost:2380", G_CLUSTER, "This member's peer URLs, as advertised to the cluster.", None),
    f("initial-cluster", Str, "default=http://localhost:2380", G_CLUSTER, "Initial cluster members: name=peerURL,...", None),
    f("initial-cluster-state", Select(CLUSTER_STATES), "new", G_CLUSTER, "'new' to bootstrap a cluster, 'existing' to join one.", None),
    f("initial-cluster-token", Str, "etcd-cluster", G_CLUSTER, "Cluster token, part of member and cluster IDs.", None),
    f("advertise-client-urls", Urls, "http://localhost:2379", G_CLUSTER, "This member's client URLs, as advertised to clients.", None),
    f("discovery", Str, "", G_CLUSTER, "Discovery service URL for bootstrapping.", NE_DISC),
    f("discovery-fallback", Select(FALLBACKS), "proxy", G_CLUSTER, "What to do when discovery fails: exit or proxy.", NE_DISC),
    f("discovery-proxy", Str, "", G_CLUSTER, "HTTP proxy for the discovery service.", NE_DISC),
    f("discovery-srv", Str, "", G_CLUSTER, "DNS SRV domain for bootstrapping.", NE_DISC),
    f("discovery-srv-name", Str, "", G_CLUSTER, "Suffix of the DNS SRV name.", NE_DISC),
    f("strict-reconfig-check", Bool, "true", G_CLUSTER, "Refuse reconfigurations that would lose quorum.", None),
    f("pre-vote", Bool, "true", G_CLUSTER, "Run raft's pre-vote phase.", Some("pre-vote is always on, etcd 3.5's default; turning it off is not supported")),
    f("auto-compaction-retention", Str, "0", G_CLUSTER, "Auto compaction retention (0 = off).", NE_LATER),
    f("auto-compaction-mode", Str, "periodic", G_CLUSTER, "periodic or revision.", NE_LATER),
    f("enable-v2", Bool, "false", G_CLUSTER, "Serve the v2 API.", NE_V2),
    f("experimental-enable-v2v3", Str, "", G_CLUSTER, "Serve v2 over the v3 store under a prefix.", NE_V2),
    f("v2-deprecation", SelectMulti(V2_DEPRECATIONS), "", G_CLUSTER, "v2store deprecation stage (default not-yet).", NE_V2),
    // proxy
    f("proxy", Select(PROXY_MODES), "off", G_PROXY, "v2 proxy mode: off, readonly or on.", NE_PROXY),
    f("proxy-failure-wait", Uint, "5000", G_PROXY, "Milliseconds an endpoint stays failed.", NE_PROXY),
    f("proxy-refresh-interval", Uint, "30000", G_PROXY, "Milliseconds between endpoint refreshes.", NE_PROXY),
    f("proxy-dial-timeout", Uint, "1000", G_PROXY, "Dial timeout in milliseconds.", NE_PROXY),
    f("proxy-write-timeout", Uint, "5000", G_PROXY, "Write timeout in milliseconds.", NE_PROXY),
    f("proxy-read-timeout", Uint, "0", G_PROXY, "Read timeout in milliseconds.", NE_PROXY),
    // security
    f("cert-file", Str, "", G_SEC, "Client server TLS certificate.", None),
    f("key-file", Str, "", G_SEC, "Client server TLS key.", None),
    f("client-cert-file", Str, "", G_SEC, "Certificate used as a client (default: cert-file).", NE_TLS_AS_CLIENT),
    f("client-key-file", Str, "", G_SEC, "Key used as a client (default: key-file).", NE_TLS_AS_CLIENT),
    f("client-cert-auth", Bool, "false", G_SEC, "Require client certificates.", None),
    f("client-crl-file", Str, "", G_SEC, "Client certificate revocation list.", None),
    f("client-cert-allowed-hostname", Strings, "", G_SEC, "Allowed SAN hostnames of client certificates.", None),
    f("trusted-ca-file", Str, "", G_SEC, "CA bundle for client certificates.", None),
    f("auto-tls", Bool, "false", G_SEC, "Client TLS with a generated self-signed certificate.", None),
    f("peer-cert-file", Str, "", G_SEC, "Peer TLS certificate.", None),
    f("peer-key-file", Str, "", G_SEC, "Peer TLS key.", None),
    f("peer-client-cert-file", Str, "", G_SEC, "Certificate used as a peer client.", None),
    f("peer-client-key-file", Str, "", G_SEC, "Key used as a peer client.", None),
    f("peer-client-cert-auth", Bool, "false", G_SEC, "Require peer client certificates.", None),
    f("peer-trusted-ca-file", Str, "", G_SEC, "CA bundle for peer certificates.", None),
    f("peer-auto-tls", Bool, "false", G_SEC, "Peer TLS with a generated self-signed certificate.", None),
    f("self-signed-cert-validity", Uint, "1", G_SEC, "Validity in years of generated certificates.", None),
    f("peer-crl-file", Str, "", G_SEC, "Peer certificate revocation list.", None),
    f("peer-cert-allowed-cn", Strings, "", G_SEC, "Allowed CNs of peer certificates.", None),
    f("peer-cert-allowed-hostname", Strings, "", G_SEC, "Allowed SAN hostnames of peer certificates.", None),
    f("cipher-suites", Strings, "", G_SEC, "Allowed TLS cipher suites.", None),
    f("experimental-peer-skip-client-san-verification", Bool, "false", G_SEC, "Skip SAN checks of peer client certificates.", None),
    f("tls-min-version", Str, "TLS1.2", G_SEC, "Minimum TLS version: TLS1.2 or TLS1.3.", None),
    f("tls-max-version", Str, "", G_SEC, "Maximum TLS version: TLS1.2 or TLS1.3 (empty = library default).", None),
    f("cors", Cors, "*", G_SEC, "Allowed CORS origins (* = all).", NE_LATER),
    f("host-whitelist", UniqueStrings, "*", G_SEC, "Accepted Host headers on insecure HTTP (* = all).", NE_LATER),
    // auth
    f("auth-token", Str, "simple", G_AUTH, "Auth token type and options: simple, or jwt,pub-key=..,priv-key=..,sign-method=..", None),
    f("bcrypt-cost", Uint, "10", G_AUTH, "bcrypt cost for password hashes (4..31).", None),
    f("auth-token-ttl", Uint, "300", G_AUTH, "Lifetime of simple tokens in seconds.", None),
    // profiling / monitoring
    f("enable-pprof", Bool, "false", G_PROF, "Serve profiling data under /debug/pprof/.", NE_LATER),
    f("metrics", Str, "basic", G_PROF, "Metrics detail: basic or extensive.", NE_LATER),
    f("listen-metrics-urls", Urls, "", G_PROF, "Extra URLs serving /metrics and /health.", None),
    // logging
    f("logger", Str, "zap", G_LOG, "Logger: only zap.", None),
    f("log-outputs", UniqueStrings, "default", G_LOG, "Log targets: default, stderr, stdout or file paths.", None),
    f("log-level", Str, "info", G_LOG, "debug, info, warn, error, panic or fatal.", None),
    f("enable-log-rotation", Bool, "false", G_LOG, "Rotate a single file log target.", NE_LATER),
    f("log-rotation-config-json", Str, r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#, G_LOG, "Log rotation settings as JSON.", NE_LATER),
    // version
    f("version", Bool, "false", G_MEMBER, "Print the version and exit.", None),
    // experimental distributed tracing
    f("experimental-enable-distributed-tracing", Bool, "false", G_TRACE, "Enable OpenTelemetry tracing.", NE_TRACE),
    f("experimental-distributed-tracing-address", Str, "localhost:4317", G_TRACE, "Collector address.", NE_TRACE),
    f("experimental-distributed-tracing-service-name", Str, "etcd", G_TRACE, "Service name.", NE_TRACE),
    f("experimental-distributed-tracing-instance-id", Str, "", G_TRACE, "Service instance ID.", NE_TRACE),
    f("experimental-distributed-tracing-sampling-rate", Int, "0", G_TRACE, "Samples per million spans.", NE_TRACE),
    // gateway
    f("enable-grpc-gateway", Bool, "true", G_MEMBER, "Serve the JSON gateway (/v3/...).", NE_LATER),
    // experimental
    f("experimental-initial-corrupt-check", Bool, "false", G_EXP, "Check data corruption before serving.", Some("in part: the local hash is computed and logged before serving, but peers' hashes are not fetched yet (each peer is logged as unreachable), so a mismatch between members is not detected")),
    f("experimental-corrupt-check-time", Duration, "0s", G_EXP, "Interval of cluster corruption checks.", NE_EXP),
    f("experimental-compact-hash-check-enabled", Bool, "false", G_EXP, "Leader checks followers' compaction hashes.", NE_EXP),
    f("experimental-compact-hash-check-time", Duration, "1m0s", G_EXP, "Interval of compaction hash checks.", NE_EXP),
    f("experimental-enable-lease-checkpoint", Bool, "false", G_EXP, "Leader checkpoints lease TTLs to followers.", NE_EXP),
    f("experimental-enable-lease-checkpoint-persist", Bool, "false", G_EXP, "Persist lease TTL checkpoints.", NE_EXP),
    f("experimental-compaction-batch-limit", Int, "0", G_EXP, "Revisions deleted per compaction batch (0 = 1000).", NE_EXP),
    f("experimental-compaction-sleep-interval", Duration, "0s", G_EXP, "Pause between compaction batches (0 = 10ms).", NE_EXP),
    f("experimental-watch-progress-notify-interval", Duration, "0s", G_EXP, "Interval of watch progress notifications (0 = 10m).", None),
    f("experimental-downgrade-check-time", Duration, "5s", G_EXP, "Interval of downgrade status checks.", NE_EXP),
    f("experimental-warning-apply-duration", Duration, "100ms", G_EXP, "Warn when applying a request takes longer.", NE_EXP),
    f("experimental-memory-mlock", Bool, "false", G_EXP, "mlock the process memory.", NE_EXP),
    f("experimental-txn-mode-write-with-shared-buffer", Bool, "true", G_EXP, "Write txns share the read buffer.", NE_TUNE),
    f("experimental-stop-grpc-service-on-defrag", Bool, "false", G_EXP, "Stop serving during defragmentation.", None),
    f("experimental-bootstrap-defrag-threshold-megabytes", Uint, "0", G_EXP, "Defragment at boot when this much would be freed.", Some("nothing to defragment at boot: shard segments are rewritten after each compaction, so no freeable space accumulates; with a threshold set, start-up logs etcd's \"Skipping defragmentation\" line with the sizes")),
    f("experimental-snapshot-catchup-entries", Uint, "5000", G_EXP, "Entries kept for slow followers after a snapshot.", Some("rusd keeps a fixed 5000 entries, etcd's default (RAFT_LOG_RETAINED_ENTRIES)")),
    // unsafe
    f("unsafe-no-fsync", Bool, "false", G_UNSAFE, "Do not fsync (data loss on crash).", NE_LATER),
    f("force-new-cluster", Bool, "false", G_UNSAFE, "Restart as a new one-member cluster.", None),
    // rusd
    f("shards", Uint, "0", G_RUSD, "Shard (thread) count; 0 = CPUs in the affinity mask. Env RUSD_SHARDS.", None),
    // ignored
    f("cluster-active-size", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("cluster-remove-delay", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("cluster-sync-interval", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("config", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("force", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("max-result-buffer", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("max-retry-attempts", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("peer-heartbeat-interval", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("peer-election-timeout", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("retry-interval", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("snapshot", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("v", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("vv", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("test.coverprofile", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    f("test.outputdir", Ignored, "", G_IGN, "Obsolete; ignored.", NE_IGN),
    // config-file only (client-transport-security: allowed-cn)
    f("client-cert-allowed-cn", Strings, "", G_FILE, "Allowed CNs of client certificates (config file only).", None),
];

/// Looks up a command-line flag by name.
pub fn flag_spec(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|s| s.name == name && s.group != G_FILE)
}

/// `ETCD_<NAME>` for a flag name (etcd's `flags.FlagToEnv`).
pub fn flag_to_env(name: &str) -> String {
    format!("ETCD_{}", name.replace('-', "_").to_uppercase())
}

/// The short usage text etcd prints on a flag error.
pub fn usage_text() -> String {
    "Usage:\n\n  etcd [flags]\n    Start an etcd server.\n\n  etcd --version\n    Show the version of etcd.\n\n  etcd -h | --help\n    Show the help information about etcd.\n\n  etcd --config-file\n    Path to the server configuration file. Other flags and environment variables are then ignored.\n\n  etcd gateway\n    Run the stateless pass-through etcd TCP connection forwarding proxy.\n\n  etcd grpc-proxy\n    Run the stateless etcd v3 gRPC L7 reverse proxy.\n".to_string()
}

/// The `--help` text: clap's rendering of [`server_command`] (every flag by group, with its
/// default and its `ETCD_*` variable).
pub fn help_text() -> String {
    server_command().render_help().to_string()
}

/// docs/flags.md, generated from the flag table.
pub fn flags_markdown() -> String {
    let mut out = String::new();
    out.push_str("# rusd flags\n\n");
    out.push_str("rusd accepts every flag of etcd v3.5.17 with etcd's syntax (`-x` or `--x`, `--x=v` or `--x v`, \
booleans as `--x`, `--x=true`, `--x=false`; the last occurrence wins), the same `ETCD_*` environment \
variables, and the same `--config-file` YAML format. \"works\" means the server implements the \
flag's effect; \"accepted without effect\" means the value is parsed, validated like etcd does and \
kept in `Config`, but the server does not act on it yet.\n\n");
    out.push_str("This file is generated from the table in `src/config.rs` (`config::flags_markdown()`).\n\n");
    out.push_str("| Flag | Default | Status |\n|---|---|---|\n");
    for s in FLAGS.iter().filter(|s| s.group != G_FILE) {
        let def = if s.default.is_empty() {
            "''".to_string()
        } else {
            format!("`{}`", s.default)
        };
        let def = if s.name == "data-dir" {
            "`${name}.etcd`".to_string()
        } else {
            def
        };
        let def = if s.name == "experimental-watch-progress-notify-interval" {
            "`10m` (0 means 10m)".to_string()
        } else {
            def
        };
        let status = match s.no_effect {
            None => "works".to_string(),
            Some(r) => format!("accepted without effect: {r}"),
        };
        out.push_str(&format!(
            "| `--{}` | {} | {} |\n",
            s.name,
            def.replace('|', "\\|"),
            status
        ));
    }
    out.push_str("\n## `etcd gateway start`\n\n");
    out.push_str("The TCP proxy (`src/proxy/tcp.rs`). Its flags follow cobra's syntax (`--x=v` or `--x v`, \
no single-dash long form, `--endpoints` accumulates over repeats), may stand before or after `start`, \
and read no `ETCD_*` variables, as in etcd.\n\n");
    out.push_str(&proxy::markdown_rows(GATEWAY_FLAGS));
    out.push_str("\n## `etcd grpc-proxy start`\n\n");
    out.push_str("The gRPC proxy (`src/proxy/grpc.rs`), same syntax as the gateway's. It serves KV, Watch, \
Lease, Cluster, Maintenance, Auth, Election and Lock by forwarding to the endpoints. Done as etcd's \
proxy does: many client watchers of the same key or range share one upstream watch (coalescing), \
serializable ranges are answered from a bounded cache (2048 entries, LRU; entries a write through \
the proxy touches are dropped, keyed by the caller's auth token too), MemberList answers the \
proxy itself (or the proxies registered under `--resolver-prefix`). Not done: DNS SRV discovery, \
lease keep-alive coalescing (keep-alives are forwarded one stream per client stream), watch \
requests with a client-chosen watch ID or fragmenting (refused as etcd's proxy does: it ignores them).\n\n");
    out.push_str(&proxy::markdown_rows(GRPC_PROXY_FLAGS));
    out
}

// ---------------------------------------------------------------------------------------------
// Flag values and the Go-flag parser
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    /// nanoseconds (may be negative, as in Go)
    Dur(i64),
    Urls(Vec<Url>),
    List(Vec<String>),
}

struct FlagSet {
    vals: Vec<Val>,
    /// Flags set on the command line (Go's `actual` before env is applied).
    cmdline: BTreeSet<&'static str>,
    /// Flags set by the command line, env, or file.
    set: BTreeSet<&'static str>,
    logs: Vec<StartupLog>,
}

fn idx(name: &str) -> usize {
    FLAGS
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("unknown flag {name}"))
}

impl FlagSet {
    fn new() -> FlagSet {
        let vals = FLAGS
            .iter()
            .map(|s| {
                let mut v = initial_val(s.kind);
                if !s.default.is_empty() {
                    set_val(&mut v, s.kind, s.default).expect("flag defaults parse");
                }
                v
            })
            .collect();
        FlagSet {
            vals,
            cmdline: BTreeSet::new(),
            set: BTreeSet::new(),
            logs: Vec::new(),
        }
    }

    fn get(&self, name: &str) -> &Val {
        &self.vals[idx(name)]
    }
    fn str(&self, name: &str) -> String {
        match self.get(name) {
            Val::Str(s) => s.clone(),
            v => panic!("flag {name} is not a string: {v:?}"),
        }
    }
    fn bool(&self, name: &str) -> bool {
        match self.get(name) {
            Val::Bool(b) => *b,
            v => panic!("flag {name} is not a bool: {v:?}"),
        }
    }
    fn u64(&self, name: &str) -> u64 {
        match self.get(name) {
            Val::U64(b) => *b,
            v => panic!("flag {name} is not a uint: {v:?}"),
        }
    }
    fn i64(&self, name: &str) -> i64 {
        match self.get(name) {
            Val::I64(b) => *b,
            v => panic!("flag {name} is not an int: {v:?}"),
        }
    }
    fn dur_ns(&self, name: &str) -> i64 {
        match self.get(name) {
            Val::Dur(b) => *b,
            v => panic!("flag {name} is not a duration: {v:?}"),
        }
    }
    fn dur(&self, name: &str) -> Duration {
        Duration::from_nanos(self.dur_ns(name).max(0) as u64)
    }
    fn urls(&self, name: &str) -> Vec<Url> {
        match self.get(name) {
            Val::Urls(u) => u.clone(),
            v => panic!("flag {name} is not a URL list: {v:?}"),
        }
    }
    fn list(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Val::List(u) => u.clone(),
            v => panic!("flag {name} is not a list: {v:?}"),
        }
    }

    /// Go's `FlagSet.Set`: parse into the flag; the error is the Value's own message.
    fn set_from_text(&mut self, name: &'static str, value: &str) -> Result<(), String> {
        let i = idx(name);
        let kind = FLAGS[i].kind;
        set_val(&mut self.vals[i], kind, value)?;
        // Obsolete (ignored) flags are accepted silently: etcd's IgnoredFlag has no logger.
        if kind != Ignored {
            self.set.insert(name);
        }
        Ok(())
    }
}

fn initial_val(kind: FlagKind) -> Val {
    match kind {
        Bool | Ignored => Val::Bool(false),
        Str | Select(_) => Val::Str(String::new()),
        Uint | Uint32 => Val::U64(0),
        Int => Val::I64(0),
        Duration => Val::Dur(0),
        Urls => Val::Urls(Vec::new()),
        Cors | Strings | UniqueStrings | SelectMulti(_) => Val::List(Vec::new()),
    }
}

/// Parses `s` into `v` per `kind`. Errors are the text Go's flag Value would return.
fn set_val(v: &mut Val, kind: FlagKind, s: &str) -> Result<(), String> {
    match kind {
        Bool => *v = Val::Bool(parse_go_bool(s).ok_or("parse error")?),
        Ignored => {}
        Str => *v = Val::Str(s.to_string()),
        Uint => *v = Val::U64(parse_go_uint(s, 64).map_err(|e| e.flag_msg().to_string())?),
        Uint32 => {
            *v = Val::U64(parse_go_uint(s, 32).map_err(|e| e.strconv_msg("ParseUint", s))?);
        }
        Int => *v = Val::I64(parse_go_int(s).map_err(|e| e.flag_msg().to_string())?),
        Duration => *v = Val::Dur(parse_go_duration(s).map_err(|_| "parse error".to_string())?),
        Urls => {
            let urls = parse_url_list(s)?;
            let mut uniq: Vec<Url> = Vec::new();
            for u in urls {
                if !uniq.iter().any(|x| x.raw == u.raw) {
                    uniq.push(u);
                }
            }
            *v = Val::Urls(uniq);
        }
        Cors => {
            if s == "*" {
                if let Val::List(l) = v {
                    if !l.iter().any(|x| x == "*") {
                        l.push("*".into());
                    }
                }
            } else {
                let urls = parse_url_list(s)?;
                let mut l: Vec<String> = urls.into_iter().map(|u| u.raw).collect();
                l.dedup();
                *v = Val::List(l);
            }
        }
        Strings => *v = Val::List(s.split(',').map(|x| x.to_string()).collect()),
        UniqueStrings => {
            let mut l: Vec<String> = s.split(',').map(|x| x.to_string()).collect();
            l.sort();
            l.dedup();
            *v = Val::List(l);
        }
        Select(valid) => {
            if !valid.contains(&s) {
                return Err("invalid value".into());
            }
            *v = Val::Str(s.to_string());
        }
        SelectMulti(valid) => {
            let Val::List(l) = v else { unreachable!() };
            for part in s.split(',') {
                if !valid.contains(&part) {
                    return Err(format!("invalid value {part:?}"));
                }
                l.push(part.to_string());
            }
            l.sort();
        }
    }
    Ok(())
}

enum FlagParse {
    Done { rest: Vec<String> },
    Help,
}

/// A flag value that did not parse: the value and the reason, as Go's `flag.Value.Set` gives
/// it. Returned by the clap value parsers so the caller can word the error as Go's `flag`
/// package (command line) or etcd's `SetFlagsFromEnv` (environment) does.
#[derive(Debug)]
struct GoValueError {
    value: String,
    reason: String,
    boolean: bool,
}

impl fmt::Display for GoValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for GoValueError {}

/// The clap argument of one row of [`FLAGS`]. Every flag is a long option; a boolean takes an
/// optional value that must be attached with `=` (`--x`, `--x=false`), as Go's bool flags do;
/// any other flag takes one value. The value parser runs etcd's own parsing of the kind
/// ([`set_val`]) on each occurrence, so a bad value fails where Go fails, with Go's reason, and
/// hands the validated text on; [`Config`] is built from those texts by [`build`].
fn go_flag_arg(spec: &'static FlagSpec) -> clap::Arg {
    use clap::{Arg, ArgAction};
    let kind = spec.kind;
    let boolean = matches!(kind, Bool | Ignored);
    let parser = move |s: &str| -> Result<String, GoValueError> {
        let mut v = initial_val(kind);
        set_val(&mut v, kind, s)
            .map(|()| s.to_string())
            .map_err(|reason| GoValueError {
                value: s.to_string(),
                reason,
                boolean,
            })
    };
    let mut help = spec.help.to_string();
    if spec.group != G_RUSD && spec.name != "version" {
        help.push_str(&format!(" [env: {}]", flag_to_env(spec.name)));
    }
    let mut arg = Arg::new(spec.name)
        .long(spec.name)
        .help(help)
        .help_heading(spec.group)
        .value_parser(parser)
        .hide(spec.group == G_IGN);
    // Kinds whose occurrences accumulate (etcd's SelectiveStringsValue, the CORS `*`) keep
    // every occurrence; every other flag keeps the last one (the command's args_override_self).
    arg = if matches!(kind, SelectMulti(_) | Cors) {
        arg.action(ArgAction::Append)
    } else {
        arg.action(ArgAction::Set)
    };
    if boolean {
        arg = arg
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .value_name("BOOL");
    } else {
        arg = arg.num_args(1).value_name("VALUE");
    }
    if !spec.default.is_empty() {
        arg = arg.default_value(spec.default);
    }
    arg
}

/// The server's command line on clap: every row of [`FLAGS`], `-h/--help`, and the arguments
/// after the flags (which etcd refuses).
pub fn server_command() -> clap::Command {
    use clap::{Arg, ArgAction, Command};
    let mut cmd = Command::new("etcd")
        .about("Start an etcd server (rusd: etcd v3.5.17 compatible).")
        .override_usage(
            "etcd [flags]\n       etcd --version\n       etcd -h | --help\n       etcd gateway start [flags]\n       etcd grpc-proxy start [flags]",
        )
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args_override_self(true)
        .next_line_help(true)
        .after_help(
            "Subcommands (see `etcd gateway start --help`, `etcd grpc-proxy start --help`):\n  \
             gateway start      the stateless TCP proxy with endpoint failover\n  \
             grpc-proxy start   the stateless etcd v3 gRPC proxy (watch coalescing, range cache)",
        );
    for spec in FLAGS.iter().filter(|s| s.group != G_FILE) {
        cmd = cmd.arg(go_flag_arg(spec));
    }
    cmd.arg(
        Arg::new("help")
            .long("help")
            .alias("h")
            .help("Print this help.")
            .value_name("BOOL")
            .action(ArgAction::Set)
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true"),
    )
    .arg(
        // normalize_go_args puts whatever follows the flags after `--`.
        Arg::new(REST_ARG)
            .num_args(1..)
            .action(ArgAction::Append)
            .hide(true),
    )
}

/// The clap id of the arguments left after the flags.
const REST_ARG: &str = "etcd-rest-arguments";

/// Go's `flag` syntax that clap cannot express, applied before clap sees the arguments:
/// - a long flag may be written with one dash (`-name`); clap needs two;
/// - the first non-flag argument ends the flags, and so does `--` (clap would go on parsing
///   flags after a positional argument); everything from there is handed over after `--`;
/// - a value given as the next argument is taken whatever it looks like (`--name --x` names the
///   member `--x`), so it is joined to its flag as `--name=--x`;
/// - `---x`, `-=x` are syntax errors.
///
/// Which flags take a separate value comes from [`FLAGS`]; clap does all the rest (names,
/// values, repeats, defaults, help).
fn normalize_go_args(args: &[String]) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut i = 0;
    while i < args.len() {
        let s = &args[i];
        if s.len() < 2 || !s.starts_with('-') {
            break;
        }
        let minuses = if s.as_bytes()[1] == b'-' { 2 } else { 1 };
        if minuses == 2 && s.len() == 2 {
            i += 1;
            break;
        }
        let body = &s[minuses..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::Usage(format!("bad flag syntax: {s}")));
        }
        i += 1;
        let name = match body[1..].find('=') {
            Some(eq) => &body[..eq + 1],
            None => body,
        };
        let takes_separate_value = body.len() == name.len()
            && flag_spec(name).is_some_and(|spec| !matches!(spec.kind, Bool | Ignored));
        if takes_separate_value && i < args.len() {
            out.push(format!("--{name}={}", args[i]));
            i += 1;
        } else {
            out.push(format!("--{body}"));
        }
    }
    if i < args.len() {
        out.push("--".to_string());
        out.extend(args[i..].iter().cloned());
    }
    Ok(out)
}

/// The flag name of a clap error's argument (`--name=<VALUE>` → `name`).
fn clap_error_flag(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let text = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let text = text.trim_start_matches('-');
    let end = text.find(['=', ' ', '[', '<']).unwrap_or(text.len());
    text[..end].to_string()
}

/// The [`GoValueError`] behind a clap error, if a value parser failed.
fn go_value_error(e: &clap::Error) -> Option<&GoValueError> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<GoValueError>())
}

/// Go's `flag.FlagSet.Parse` over `args` (without the program name), on clap: the flags go
/// into `fs`, the arguments after them are returned. Errors carry Go's texts.
fn parse_go_flags(fs: &mut FlagSet, args: &[String]) -> Result<FlagParse, ConfigError> {
    use clap::error::ErrorKind;
    let normalized = normalize_go_args(args)?;
    let matches = server_command()
        .try_get_matches_from(std::iter::once("etcd".to_string()).chain(normalized))
        .map_err(|e| {
            let name = clap_error_flag(&e);
            ConfigError::Usage(match (e.kind(), go_value_error(&e)) {
                (_, Some(v)) if v.boolean => format!(
                    "invalid boolean value {} for -{name}: {}",
                    go_quote(&v.value),
                    v.reason
                ),
                (_, Some(v)) => format!(
                    "invalid value {} for flag -{name}: {}",
                    go_quote(&v.value),
                    v.reason
                ),
                (ErrorKind::UnknownArgument, None) => {
                    format!("flag provided but not defined: -{name}")
                }
                (_, None) => format!("flag needs an argument: -{name}"),
            })
        })?;
    if matches.value_source("help") == Some(clap::parser::ValueSource::CommandLine) {
        return Ok(FlagParse::Help);
    }
    fold_matches(fs, &matches, true);
    let rest = matches
        .get_many::<String>(REST_ARG)
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    Ok(FlagParse::Done { rest })
}

/// Copies the values clap took from the arguments (not its defaults) into `fs`, in the order
/// given. `command_line` marks them as given on the command line (env values are not).
fn fold_matches(fs: &mut FlagSet, matches: &clap::ArgMatches, command_line: bool) {
    for spec in FLAGS.iter().filter(|s| s.group != G_FILE) {
        if matches.value_source(spec.name) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let Some(values) = matches.get_many::<String>(spec.name) else {
            continue;
        };
        for v in values {
            fs.set_from_text(spec.name, v)
                .expect("clap's value parser accepted it");
        }
        if command_line {
            fs.cmdline.insert(spec.name);
        }
    }
}

fn go_quote(s: &str) -> String {
    // Go's %q and Rust's {:?} agree for printable text, which is what flags carry.
    format!("{s:?}")
}

fn env_lookup<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// etcd's `flags.SetFlagsFromEnv` + `verifyEnv`. The values go through the same clap command
/// and value parsers as the command line (as `--flag=value` arguments). Reading the variables
/// is ours, not clap's `Arg::env`: etcd's rules are not clap's (a variable set together with its
/// flag is fatal, an empty one is ignored, unknown `ETCD_*` variables are logged, every used one
/// is logged), and the environment is a parameter so tests need not change the process's.
fn apply_env(fs: &mut FlagSet, env: &[(String, String)]) -> Result<(), ConfigError> {
    let mut used: BTreeSet<String> = BTreeSet::new();
    if let Some(v) = env_lookup(env, "ETCD_VERSION") {
        if !v.is_empty() {
            fs.logs.push(StartupLog {
                level: LogLevel::Warn,
                msg: "cannot set special environment variable".into(),
                fields: vec![
                    ("key".into(), "ETCD_VERSION".into()),
                    ("value".into(), serde_json::Value::String(v.into())),
                ],
            });
        }
        used.insert("ETCD_VERSION".into());
    }
    let command = server_command();
    for spec in FLAGS {
        if spec.group == G_RUSD || spec.group == G_FILE || spec.name == "version" {
            continue;
        }
        let key = flag_to_env(spec.name);
        if fs.cmdline.contains(spec.name) {
            continue;
        }
        let Some(val) = env_lookup(env, &key) else {
            continue;
        };
        if val.is_empty() {
            continue;
        }
        used.insert(key.clone());
        let matches = command
            .clone()
            .try_get_matches_from(["etcd".to_string(), format!("--{}={val}", spec.name)])
            .map_err(|e| {
                let reason = go_value_error(&e)
                    .map(|v| v.reason.clone())
                    .unwrap_or_else(|| e.kind().to_string());
                ConfigError::Invalid(format!(
                    "invalid value {} for {}: {}",
                    go_quote(val),
                    key,
                    reason
                ))
            })?;
        fold_matches(fs, &matches, false);
        fs.logs.push(StartupLog {
            level: LogLevel::Info,
            msg: "recognized and used environment variable".into(),
            fields: vec![
                (
                    "variable-name".into(),
                    serde_json::Value::String(key.clone()),
                ),
                (
                    "variable-value".into(),
                    serde_json::Value::String(val.into()),
                ),
            ],
        });
    }
    for (k, v) in env {
        if used.contains(k) || !k.starts_with("ETCD_") {
            continue;
        }
        if fs.cmdline.iter().any(|n| {
            flag_to_env(n) == *k && flag_spec(n).map(|s| s.group != G_RUSD).unwrap_or(false)
        }) {
            return Err(ConfigError::ShadowedEnv(k.clone()));
        }
        if k == "ETCD_VERIFY" || k == "ETCD_UNSUPPORTED_ARCH" || k == "ETCD_CONFIG_FILE" {
            continue;
        }
        fs.logs.push(StartupLog {
            level: LogLevel::Warn,
            msg: "unrecognized environment variable".into(),
            fields: vec![(
                "environment-variable".into(),
                serde_json::Value::String(format!("{k}={v}")),
            )],
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Entry point
// ---------------------------------------------------------------------------------------------

/// Parses a full command line (`args[0]` is the program name, as `std::env::args_os()` gives)
/// and the environment (as `std::env::vars()` gives) the way etcd v3.5.17 does.
pub fn parse_command(args: &[OsString], env: &[(String, String)]) -> Result<Command, ConfigError> {
    let mut sargs: Vec<String> = Vec::with_capacity(args.len());
    for a in args.iter().skip(1) {
        match a.to_str() {
            Some(s) => sargs.push(s.to_string()),
            None => {
                return Err(ConfigError::Usage(format!(
                    "invalid (non UTF-8) argument: {a:?}"
                )))
            }
        }
    }
    // As etcd's main: the proxies are subcommands with their own (cobra) flags; anything else
    // is the server's Go-flag command line.
    if let Some(first) = sargs.first() {
        if first == "gateway" || first == "grpc-proxy" {
            return proxy::parse_proxy_command(&sargs);
        }
    }

    let mut fs = FlagSet::new();
    let rest = match parse_go_flags(&mut fs, &sargs)? {
        FlagParse::Help => return Ok(Command::Help(help_text())),
        FlagParse::Done { rest } => rest,
    };
    if let Some(first) = rest.first() {
        return Err(ConfigError::Invalid(format!(
            "'{first}' is not a valid flag"
        )));
    }
    if fs.bool("version") {
        return Ok(Command::Version);
    }

    let mut config_file = fs.str("config-file");
    if config_file.is_empty() {
        config_file = env_lookup(env, "ETCD_CONFIG_FILE")
            .unwrap_or("")
            .to_string();
    }

    let mut cfg = if !config_file.is_empty() {
        let text = std::fs::read_to_string(&config_file).map_err(|e| {
            ConfigError::Invalid(format!("open {config_file}: {}", io_err_text(&e)))
        })?;
        let mut ffs = FlagSet::new();
        apply_yaml(&mut ffs, &text)?;
        let mut cfg = build(&ffs, Mode::File)?;
        cfg.config_file = Some(PathBuf::from(&config_file));
        cfg.startup_logs.push(StartupLog {
            level: LogLevel::Info,
            msg: "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided".into(),
            fields: vec![("path".into(), serde_json::Value::String(config_file.clone()))],
        });
        // rusd's own flag still applies from the command line.
        if fs.cmdline.contains("shards") {
            cfg.shards_requested = fs.u64("shards") as usize;
            cfg.explicitly_set.insert("shards".into());
        }
        cfg
    } else {
        apply_env(&mut fs, env)?;
        build(&fs, Mode::CommandLine)?
    };

    if !cfg.explicitly_set.contains("shards") {
        if let Some(v) = env_lookup(env, "RUSD_SHARDS") {
            if !v.is_empty() {
                let n = parse_go_uint(v, 64).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "invalid value {} for RUSD_SHARDS: {}",
                        go_quote(v),
                        e.flag_msg()
                    ))
                })?;
                cfg.shards_requested = n as usize;
                cfg.explicitly_set.insert("shards".into());
            }
        }
    }
    cfg.shards = if cfg.shards_requested == 0 {
        affinity_cpus()
    } else {
        cfg.shards_requested
    };
    Ok(Command::Serve(Box::new(cfg)))
}

fn io_err_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Number of CPUs in this process's affinity mask (at least 1).
pub fn affinity_cpus() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0 (this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as usize;
            }
        }
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    CommandLine,
    File,
}

const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

/// Turns parsed flag values into a validated [`Config`] (etcd's `configFromCmdLine` /
/// `configFromFile`, `Config.Validate`, and the defaulting in `startEtcdOrProxyV2`).
fn build(fs: &FlagSet, mode: Mode) -> Result<Config, ConfigError> {
    let inv = |s: String| ConfigError::Invalid(s);
    let mut logs = fs.logs.clone();

    let name = fs.str("name");
    let proxy = fs.str("proxy");
    let discovery = fs.str("discovery");
    let discovery_fallback = fs.str("discovery-fallback");
    let discovery_srv = fs.str("discovery-srv");
    let discovery_srv_name = fs.str("discovery-srv-name");
    let may_be_proxy = proxy != "off" || (!discovery.is_empty() && discovery_fallback == "proxy");

    let listen_client_urls = fs.urls("listen-client-urls");
    let mut advertise_client_urls = fs.urls("advertise-client-urls");
    if mode == Mode::CommandLine
        && fs.set.contains("listen-client-urls")
        && !fs.set.contains("advertise-client-urls")
        && !may_be_proxy
    {
        advertise_client_urls.clear();
    }

    let mut initial_cluster_raw = fs.str("initial-cluster");
    match mode {
        Mode::CommandLine => {
            if (!discovery.is_empty()
                || !discovery_srv.is_empty()
                || !discovery_srv_name.is_empty())
                && !fs.set.contains("initial-cluster")
            {
                initial_cluster_raw.clear();
            }
        }
        Mode::File => {
            if (!discovery.is_empty() || !discovery_srv.is_empty())
                && initial_cluster_raw == DEFAULT_INITIAL_CLUSTER
            {
                initial_cluster_raw.clear();
            }
        }
    }

    let state_text = fs.str("initial-cluster-state");

    // --- Validate(): logging
    let logger = fs.str("logger");
    let mut log_outputs = fs.list("log-outputs");
    let log_level_text = fs.str("log-level");
    match logger.as_str() {
        "capnslog" => return Err(inv("--logger=capnslog is removed in v3.5".into())),
        "zap" => {}
        other => return Err(inv(format!("unknown logger option {other:?}"))),
    }
    if log_outputs.is_empty() {
        log_outputs.push("default".into());
    }
    if log_outputs.len() > 1 && log_outputs.iter().any(|o| o == "default") {
        return Err(inv(
            "multi logoutput for \"default\" is not supported yet".into()
        ));
    }
    let enable_log_rotation = fs.bool("enable-log-rotation");
    if enable_log_rotation
        && (log_outputs.len() != 1
            || matches!(
                log_outputs[0].as_str(),
                "default" | "stderr" | "stdout" | "systemd/journal"
            ))
    {
        return Err(inv(
            "--log-outputs requires a single file path when --log-rotate-config-json is defined"
                .into(),
        ));
    }
    let log_level = LogLevel::parse(&log_level_text).map_err(inv)?;

    // --- Validate(): URLs
    let listen_peer_urls = fs.urls("listen-peer-urls");
    let listen_client_http_urls = fs.urls("listen-client-http-urls");
    let listen_metrics_urls = fs.urls("listen-metrics-urls");
    let initial_advertise_peer_urls = fs.urls("initial-advertise-peer-urls");
    for set in [
        &listen_peer_urls,
        &listen_client_urls,
        &listen_client_http_urls,
    ] {
        check_bind_urls(set).map_err(inv)?;
    }
    if listen_client_http_urls.is_empty() {
        logs.push(StartupLog {
            level: LogLevel::Warn,
            msg: "Running http and grpc server on single port. This is not recommended for production.".into(),
            fields: vec![],
        });
    }
    check_bind_urls(&listen_metrics_urls).map_err(inv)?;
    if let Err(e) = check_host_urls(&initial_advertise_peer_urls) {
        let addrs: Vec<&str> = initial_advertise_peer_urls
            .iter()
            .map(|u| u.raw.as_str())
            .collect();
        return Err(inv(format!(
            "--initial-advertise-peer-urls {:?} must be \"host:port\" ({})",
            addrs.join(","),
            e
        )));
    }
    if let Err(e) = check_host_urls(&advertise_client_urls) {
        let addrs: Vec<&str> = advertise_client_urls
            .iter()
            .map(|u| u.raw.as_str())
            .collect();
        return Err(inv(format!(
            "--advertise-client-urls {:?} must be \"host:port\" ({})",
            addrs.join(","),
            e
        )));
    }
    let n_set = [
        !discovery.is_empty(),
        !initial_cluster_raw.is_empty(),
        !discovery_srv.is_empty(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    let initial_cluster_state = match state_text.as_str() {
        "new" | "" if mode == Mode::File || state_text == "new" => ClusterState::New,
        "existing" => ClusterState::Existing,
        other => return Err(inv(format!("unexpected clusterState {other:?}"))),
    };
    if n_set > 1 {
        return Err(inv(
            "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"".into(),
        ));
    }
    let tick = fs.u64("heartbeat-interval");
    let election = fs.u64("election-timeout");
    if tick == 0 {
        return Err(inv(format!(
            "--heartbeat-interval must be >0 (set to {tick}ms)"
        )));
    }
    if election == 0 {
        return Err(inv(format!(
            "--election-timeout must be >0 (set to {election}ms)"
        )));
    }
    if tick.saturating_mul(5) > election {
        return Err(inv(format!(
            "--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{tick}ms]"
        )));
    }
    if election > 50_000 {
        return Err(inv(format!(
            "--election-timeout[{election}ms] is too long, and should be set less than 50000ms"
        )));
    }
    if advertise_client_urls.is_empty() && !may_be_proxy {
        return Err(inv(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                .into(),
        ));
    }
    let auto_compaction_mode = fs.str("auto-compaction-mode");
    match auto_compaction_mode.as_str() {
        "" | "periodic" | "revision" => {}
        other => return Err(inv(format!("unknown auto-compaction-mode {other:?}"))),
    }
    let lease_cp = fs.bool("experimental-enable-lease-checkpoint");
    let lease_cp_persist = fs.bool("experimental-enable-lease-checkpoint-persist");
    if lease_cp && !lease_cp_persist {
        logs.push(StartupLog {
            level: LogLevel::Warn,
            msg: "Detected that checkpointing is enabled without persistence. Consider enabling experimental-enable-lease-checkpoint-persist".into(),
            fields: vec![],
        });
    }
    if lease_cp_persist && !lease_cp {
        return Err(inv("setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint".into()));
    }
    let hash_check_ns = fs.dur_ns("experimental-compact-hash-check-time");
    if hash_check_ns <= 0 {
        return Err(inv(format!(
            "--experimental-compact-hash-check-time must be >0 (set to {})",
            format_go_duration(hash_check_ns)
        )));
    }
    let tls_min_version = fs.str("tls-min-version");
    let tls_max_version = fs.str("tls-max-version");
    let min_v = tls_version(&tls_min_version).map_err(inv)?;
    let max_v = tls_version(&tls_max_version).map_err(inv)?;
    if max_v != 0 && min_v > max_v {
        return Err(inv(format!(
            "min version ({tls_min_version}) is greater than max version ({tls_max_version})"
        )));
    }
    let cipher_suites: Vec<String> = fs
        .list("cipher-suites")
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if min_v == 0x0304 && !cipher_suites.is_empty() {
        return Err(inv(
            "cipher suites cannot be configured when only TLS1.3 is enabled".into(),
        ));
    }
    for c in &cipher_suites {
        if !GO_CIPHER_SUITES.contains(&c.as_str()) {
            return Err(inv(format!("unexpected TLS cipher suite {c:?}")));
        }
    }
    let tracing = fs.bool("experimental-enable-distributed-tracing");
    let sampling = fs.i64("experimental-distributed-tracing-sampling-rate");
    if tracing && !(0..=1_000_000).contains(&sampling) {
        return Err(inv(format!(
            "distributed tracing configurition is not valid: (tracing sampling rate must be between 0 and 1000000, got {sampling})"
        )));
    }

    // --- after Validate(): startEtcdOrProxyV2 defaulting
    if name != "default" && initial_cluster_raw == DEFAULT_INITIAL_CLUSTER {
        initial_cluster_raw = initial_cluster_from_name(&name, &initial_advertise_peer_urls);
    }
    let initial_cluster = parse_initial_cluster(&initial_cluster_raw).map_err(inv)?;
    let data_dir_text = fs.str("data-dir");
    let data_dir = if data_dir_text.is_empty() {
        PathBuf::from(format!("{name}.etcd"))
    } else {
        PathBuf::from(data_dir_text)
    };
    let wal_dir = Some(fs.str("wal-dir"))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);

    let mut raft_read_timeout = fs.dur("raft-read-timeout");
    let mut raft_write_timeout = fs.dur("raft-write-timeout");
    if mode == Mode::File {
        raft_read_timeout = Duration::from_secs(5);
        raft_write_timeout = Duration::from_secs(5);
    }
    if raft_read_timeout < Duration::from_secs(5) {
        raft_read_timeout = Duration::from_secs(5);
        logs.push(StartupLog {
            level: LogLevel::Info,
            msg: "raft-read-timeout increased to minimum value: 5s".into(),
            fields: vec![],
        });
    }
    if raft_write_timeout < Duration::from_secs(5) {
        raft_write_timeout = Duration::from_secs(5);
        logs.push(StartupLog {
            level: LogLevel::Info,
            msg: "raft-write-timeout increased to minimum value: 5s".into(),
            fields: vec![],
        });
    }

    let wpn_ns = fs.dur_ns("experimental-watch-progress-notify-interval");
    let wpn_ms = if wpn_ns <= 0 {
        600_000
    } else {
        ((wpn_ns as u64) / 1_000_000).max(100)
    };

    let mut v2dep = fs.list("v2-deprecation").join(",");
    if v2dep.is_empty() {
        v2dep = "not-yet".into();
    }

    let client_tls = TlsConfig {
        cert_file: fs.str("cert-file"),
        key_file: fs.str("key-file"),
        client_cert_file: fs.str("client-cert-file"),
        client_key_file: fs.str("client-key-file"),
        trusted_ca_file: fs.str("trusted-ca-file"),
        client_cert_auth: fs.bool("client-cert-auth"),
        auto_tls: fs.bool("auto-tls"),
        crl_file: fs.str("client-crl-file"),
        allowed_cn: fs.list("client-cert-allowed-cn"),
        allowed_hostname: fs.list("client-cert-allowed-hostname"),
        skip_client_san_verify: false,
    };
    let peer_tls = TlsConfig {
        cert_file: fs.str("peer-cert-file"),
        key_file: fs.str("peer-key-file"),
        client_cert_file: fs.str("peer-client-cert-file"),
        client_key_file: fs.str("peer-client-key-file"),
        trusted_ca_file: fs.str("peer-trusted-ca-file"),
        client_cert_auth: fs.bool("peer-client-cert-auth"),
        auto_tls: fs.bool("peer-auto-tls"),
        crl_file: fs.str("peer-crl-file"),
        allowed_cn: fs.list("peer-cert-allowed-cn"),
        allowed_hostname: fs.list("peer-cert-allowed-hostname"),
        skip_client_san_verify: fs.bool("experimental-peer-skip-client-san-verification"),
    };

    let shards_requested = fs.u64("shards") as usize;
    Ok(Config {
        config_file: None,
        name,
        data_dir,
        wal_dir,
        listen_peer_urls,
        listen_client_urls,
        listen_client_http_urls,
        listen_metrics_urls,
        max_snapshots: fs.u64("max-snapshots"),
        max_wals: fs.u64("max-wals"),
        snapshot_count: fs.u64("snapshot-count"),
        heartbeat_interval_ms: tick,
        election_timeout_ms: election,
        initial_election_tick_advance: fs.bool("initial-election-tick-advance"),
        quota_backend_bytes: fs.i64("quota-backend-bytes"),
        backend_bbolt_freelist_type: fs.str("backend-bbolt-freelist-type"),
        backend_batch_interval: fs.dur("backend-batch-interval"),
        backend_batch_limit: fs.i64("backend-batch-limit"),
        max_txn_ops: fs.u64("max-txn-ops"),
        max_request_bytes: fs.u64("max-request-bytes"),
        grpc_keepalive_min_time: fs.dur("grpc-keepalive-min-time"),
        grpc_keepalive_interval: fs.dur("grpc-keepalive-interval"),
        grpc_keepalive_timeout: fs.dur("grpc-keepalive-timeout"),
        socket_reuse_port: fs.bool("socket-reuse-port"),
        socket_reuse_address: fs.bool("socket-reuse-address"),
        max_concurrent_streams: fs.u64("max-concurrent-streams") as u32,
        raft_read_timeout,
        raft_write_timeout,
        initial_advertise_peer_urls,
        advertise_client_urls,
        discovery,
        discovery_fallback,
        discovery_proxy: fs.str("discovery-proxy"),
        discovery_srv,
        discovery_srv_name,
        initial_cluster,
        initial_cluster_raw,
        initial_cluster_token: fs.str("initial-cluster-token"),
        initial_cluster_state,
        strict_reconfig_check: fs.bool("strict-reconfig-check"),
        pre_vote: fs.bool("pre-vote"),
        enable_v2: fs.bool("enable-v2"),
        experimental_enable_v2v3: fs.str("experimental-enable-v2v3"),
        v2_deprecation: v2dep,
        proxy,
        proxy_failure_wait_ms: fs.u64("proxy-failure-wait"),
        proxy_refresh_interval_ms: fs.u64("proxy-refresh-interval"),
        proxy_dial_timeout_ms: fs.u64("proxy-dial-timeout"),
        proxy_write_timeout_ms: fs.u64("proxy-write-timeout"),
        proxy_read_timeout_ms: fs.u64("proxy-read-timeout"),
        client_tls,
        peer_tls,
        self_signed_cert_validity: fs.u64("self-signed-cert-validity"),
        cipher_suites,
        tls_min_version,
        tls_max_version,
        cors: fs.list("cors"),
        host_whitelist: fs.list("host-whitelist"),
        logger,
        log_level,
        log_outputs,
        enable_log_rotation,
        log_rotation_config_json: fs.str("log-rotation-config-json"),
        auto_compaction_retention: fs.str("auto-compaction-retention"),
        auto_compaction_mode,
        enable_pprof: fs.bool("enable-pprof"),
        metrics: fs.str("metrics"),
        experimental_enable_distributed_tracing: tracing,
        experimental_distributed_tracing_address: fs
            .str("experimental-distributed-tracing-address"),
        experimental_distributed_tracing_service_name: fs
            .str("experimental-distributed-tracing-service-name"),
        experimental_distributed_tracing_instance_id: fs
            .str("experimental-distributed-tracing-instance-id"),
        experimental_distributed_tracing_sampling_rate: sampling,
        auth_token: fs.str("auth-token"),
        bcrypt_cost: fs.u64("bcrypt-cost").min(u32::MAX as u64) as u32,
        auth_token_ttl: fs.u64("auth-token-ttl"),
        enable_grpc_gateway: fs.bool("enable-grpc-gateway"),
        experimental_initial_corrupt_check: fs.bool("experimental-initial-corrupt-check"),
        experimental_corrupt_check_time: fs.dur("experimental-corrupt-check-time"),
        experimental_compact_hash_check_enabled: fs.bool("experimental-compact-hash-check-enabled"),
        experimental_compact_hash_check_time: fs.dur("experimental-compact-hash-check-time"),
        experimental_enable_lease_checkpoint: lease_cp,
        experimental_enable_lease_checkpoint_persist: lease_cp_persist,
        experimental_compaction_batch_limit: fs.i64("experimental-compaction-batch-limit"),
        experimental_compaction_sleep_interval: fs.dur("experimental-compaction-sleep-interval"),
        experimental_watch_progress_notify_interval_ms: wpn_ms,
        experimental_downgrade_check_time: fs.dur("experimental-downgrade-check-time"),
        experimental_warning_apply_duration: fs.dur("experimental-warning-apply-duration"),
        experimental_memory_mlock: fs.bool("experimental-memory-mlock"),
        experimental_txn_mode_write_with_shared_buffer: fs
            .bool("experimental-txn-mode-write-with-shared-buffer"),
        experimental_stop_grpc_service_on_defrag: fs
            .bool("experimental-stop-grpc-service-on-defrag"),
        experimental_bootstrap_defrag_threshold_megabytes: fs
            .u64("experimental-bootstrap-defrag-threshold-megabytes"),
        experimental_snapshot_catchup_entries: fs.u64("experimental-snapshot-catchup-entries"),
        unsafe_no_fsync: fs.bool("unsafe-no-fsync"),
        force_new_cluster: fs.bool("force-new-cluster"),
        shards: shards_requested,
        shards_requested,
        explicitly_set: fs.set.iter().map(|s| s.to_string()).collect(),
        startup_logs: logs,
    })
}

/// etcd's `InitialClusterFromName`.
fn initial_cluster_from_name(name: &str, apurls: &[Url]) -> String {
    let n = if name.is_empty() { "default" } else { name };
    apurls
        .iter()
        .map(|u| format!("{}={}", n, u.raw))
        .collect::<Vec<_>>()
        .join(",")
}

/// etcd's `types.NewURLsMap` parsing, keeping the given order.
fn parse_initial_cluster(s: &str) -> Result<Vec<(String, Url)>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.find('=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, ""),
        };
        out.push((k.to_string(), parse_etcd_url(v)?));
    }
    Ok(out)
}

fn tls_version(v: &str) -> Result<u16, String> {
    match v {
        "" => Ok(0),
        "TLS1.2" => Ok(0x0303),
        "TLS1.3" => Ok(0x0304),
        _ => Err(format!(
            "unexpected TLS version {v:?} (must be one of: TLS1.2, TLS1.3)"
        )),
    }
}

/// Cipher suite names Go's crypto/tls knows (secure and insecure lists, plus etcd's aliases).
const GO_CIPHER_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
];

// ---------------------------------------------------------------------------------------------
// URLs (Go net/url subset + etcd checks)
// ---------------------------------------------------------------------------------------------

fn parse_url_list(s: &str) -> Result<Vec<Url>, String> {
    let mut v = Vec::new();
    for part in s.split(',') {
        v.push(parse_etcd_url(part)?);
    }
    v.sort_by(|a, b| a.raw.cmp(&b.raw));
    Ok(v)
}

/// Go's `url.Parse` (the parts etcd relies on) followed by `types.NewURLs`' checks.
fn parse_etcd_url(input: &str) -> Result<Url, String> {
    let input = input.trim();
    let perr = |m: String| format!("parse {input:?}: {m}");
    if input.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(perr("net/url: invalid control character in URL".into()));
    }
    let (without_frag, frag) = match input.find('#') {
        Some(i) => (&input[..i], Some(&input[i + 1..])),
        None => (input, None),
    };
    // scheme
    let mut scheme = String::new();
    let mut rest = without_frag;
    for (i, c) in without_frag.char_indices() {
        if c.is_ascii_alphabetic() {
            continue;
        }
        if c.is_ascii_digit() || c == '+' || c == '-' || c == '.' {
            if i == 0 {
                break;
            }
            continue;
        }
        if c == ':' {
            if i == 0 {
                return Err(perr("missing protocol scheme".into()));
            }
            scheme = without_frag[..i].to_ascii_lowercase();
            rest = &without_frag[i + 1..];
        }
        break;
    }
    let scheme_err = || format!("URL scheme must be http, https, unix, or unixs: {input}");
    let (rest, query) = match rest.find('?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if scheme.is_empty() || !rest.starts_with("//") {
        // opaque or relative: no host; etcd only accepts the four schemes, all with a host part
        if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
            return Err(scheme_err());
        }
        if matches!(scheme.as_str(), "http" | "https") {
            return Err(format!(
                "URL address does not have the form \"host:port\": {input}"
            ));
        }
        // unix:path
        let raw = format!("{scheme}:{rest}");
        return Ok(Url {
            scheme,
            host: String::new(),
            port: 0,
            raw,
            authority: String::new(),
            path: rest.to_string(),
        });
    }
    let after = &rest[2..];
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    };
    let hostport = match authority.rfind('@') {
        Some(i) => &authority[i + 1..],
        None => authority,
    };
    // Go's parseHost port validation
    let (host, port_text): (String, Option<&str>) =
        if let Some(stripped) = hostport.strip_prefix('[') {
            let Some(end) = stripped.find(']') else {
                return Err(perr("missing ']' in host".into()));
            };
            let after_br = &stripped[end + 1..];
            if !after_br.is_empty() && !valid_optional_port(after_br) {
                return Err(perr(format!("invalid port {after_br:?} after host")));
            }
            (stripped[..end].to_string(), after_br.strip_prefix(':'))
        } else if let Some(i) = hostport.rfind(':') {
            let cp = &hostport[i..];
            if !valid_optional_port(cp) {
                return Err(perr(format!("invalid port {cp:?} after host")));
            }
            (hostport[..i].to_string(), Some(&cp[1..]))
        } else {
            (hostport.to_string(), None)
        };
    if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
        return Err(scheme_err());
    }
    let mut port = 0u16;
    if matches!(scheme.as_str(), "http" | "https") {
        split_host_port(hostport)
            .map_err(|_| format!("URL address does not have the form \"host:port\": {input}"))?;
        if !path.is_empty() {
            return Err(format!("URL must not contain a path: {input}"));
        }
    }
    if let Some(p) = port_text {
        if !p.is_empty() {
            port = p
                .parse::<u16>()
                .map_err(|_| perr(format!("invalid port \":{p}\" after host")))?;
        }
    }
    let mut raw = format!("{scheme}://{authority}{path}");
    if let Some(q) = query {
        if !q.is_empty() {
            raw.push('?');
            raw.push_str(q);
        }
    }
    if let Some(fr) = frag {
        if !fr.is_empty() {
            raw.push('#');
            raw.push_str(fr);
        }
    }
    Ok(Url {
        scheme,
        host,
        port,
        raw,
        authority: hostport.to_string(),
        path: path.to_string(),
    })
}

fn valid_optional_port(p: &str) -> bool {
    if p.is_empty() {
        return true;
    }
    let Some(d) = p.strip_prefix(':') else {
        return false;
    };
    d.bytes().all(|b| b.is_ascii_digit())
}

/// Go's `net.SplitHostPort`.
fn split_host_port(hp: &str) -> Result<(String, String), String> {
    let addr_err = |m: &str| format!("address {hp}: {m}");
    let Some(i) = hp.rfind(':') else {
        return Err(addr_err("missing port in address"));
    };
    let (host, port) = if hp.starts_with('[') {
        let Some(end) = hp.find(']') else {
            return Err(addr_err("missing ']' in address"));
        };
        if end + 1 == hp.len() {
            return Err(addr_err("missing port in address"));
        }
        if end + 1 != i {
            return Err(addr_err(if hp.as_bytes()[end + 1] == b':' {
                "too many colons in address"
            } else {
                "missing port in address"
            }));
        }
        (&hp[1..end], &hp[i + 1..])
    } else {
        let host = &hp[..i];
        if host.contains(':') {
            return Err(addr_err("too many colons in address"));
        }
        (host, &hp[i + 1..])
    };
    if hp[..i].contains('[') && !hp.starts_with('[') || port.contains('[') || port.contains(']') {
        return Err(addr_err("unexpected '[' or ']' in address"));
    }
    Ok((host.to_string(), port.to_string()))
}

/// etcd's `checkBindURLs`: listen URLs need `localhost` or an IP literal.
fn check_bind_urls(urls: &[Url]) -> Result<(), String> {
    for u in urls {
        if u.is_unix() {
            continue;
        }
        let (host, _) = split_host_port(&u.authority)?;
        if host == "localhost" {
            continue;
        }
        if host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("expected IP in URL for binding ({})", u.raw));
        }
    }
    Ok(())
}

/// etcd's `checkHostURLs`.
fn check_host_urls(urls: &[Url]) -> Result<(), String> {
    for u in urls {
        let (host, _) = split_host_port(&u.authority)?;
        if host.is_empty() {
            return Err(format!("unexpected empty host ({})", u.raw));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Go number, bool and duration syntax
// ---------------------------------------------------------------------------------------------

fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[derive(Debug, PartialEq)]
enum NumErr {
    Syntax,
    Range,
}

impl NumErr {
    fn flag_msg(&self) -> &'static str {
        match self {
            NumErr::Syntax => "parse error",
            NumErr::Range => "value out of range",
        }
    }
    fn strconv_msg(&self, func: &str, s: &str) -> String {
        match self {
            NumErr::Syntax => format!("strconv.{func}: parsing {s:?}: invalid syntax"),
            NumErr::Range => format!("strconv.{func}: parsing {s:?}: value out of range"),
        }
    }
}

impl fmt::Display for NumErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag_msg())
    }
}

/// strconv.ParseUint(s, 0, bits).
fn parse_go_uint(s: &str, bits: u32) -> Result<u64, NumErr> {
    if s.is_empty() {
        return Err(NumErr::Syntax);
    }
    let (base, digits, prefixed) =
        if let Some(r) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            (16, r, true)
        } else if let Some(r) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
            (2, r, true)
        } else if let Some(r) = s.strip_prefix("0o").or_else(|| s.strip_prefix("0O")) {
            (8, r, true)
        } else if s.len() > 1 && s.starts_with('0') {
            (8, &s[1..], true)
        } else {
            (10, s, false)
        };
    let digits: String = if prefixed {
        // underscores are allowed between digits when a base prefix is present
        if digits.starts_with('_') && base != 8 || digits.ends_with('_') || digits.contains("__") {
            return Err(NumErr::Syntax);
        }
        digits.replace('_', "")
    } else {
        if digits.contains('_') {
            return Err(NumErr::Syntax);
        }
        digits.to_string()
    };
    if digits.is_empty() {
        return Err(NumErr::Syntax);
    }
    let mut v: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(base).ok_or(NumErr::Syntax)? as u64;
        v = v
            .checked_mul(base as u64)
            .and_then(|x| x.checked_add(d))
            .ok_or(NumErr::Range)?;
    }
    if bits < 64 && v >> bits != 0 {
        return Err(NumErr::Range);
    }
    Ok(v)
}

/// strconv.ParseInt(s, 0, 64).
fn parse_go_int(s: &str) -> Result<i64, NumErr> {
    let (neg, body) = if let Some(r) = s.strip_prefix('-') {
        (true, r)
    } else if let Some(r) = s.strip_prefix('+') {
        (false, r)
    } else {
        (false, s)
    };
    let u = parse_go_uint(body, 64)?;
    if neg {
        if u > i64::MAX as u64 + 1 {
            return Err(NumErr::Range);
        }
        Ok((u as i128).wrapping_neg() as i64)
    } else {
        if u > i64::MAX as u64 {
            return Err(NumErr::Range);
        }
        Ok(u as i64)
    }
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub fn parse_go_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut s = orig;
    let mut neg = false;
    if let Some(r) = s.strip_prefix('-') {
        neg = true;
        s = r;
    } else if let Some(r) = s.strip_prefix('+') {
        s = r;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let int_part: u128 = if int_len > 0 {
            s[..int_len].parse::<u128>().map_err(|_| invalid())?
        } else {
            0
        };
        s = &s[int_len..];
        let mut frac_digits = "";
        let mut post = false;
        if let Some(r) = s.strip_prefix('.') {
            let n = r.bytes().take_while(|c| c.is_ascii_digit()).count();
            frac_digits = &r[..n];
            post = n > 0;
            s = &r[n..];
        }
        if int_len == 0 && !post {
            return Err(invalid());
        }
        let unit_len = s
            .bytes()
            .take_while(|c| *c != b'.' && !c.is_ascii_digit())
            .count();
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let mult: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {orig:?}")),
        };
        let mut v = int_part.checked_mul(mult).ok_or_else(invalid)?;
        if !frac_digits.is_empty() {
            let mut scale: u128 = 1;
            let mut frac: u128 = 0;
            for c in frac_digits.bytes().take(30) {
                frac = frac * 10 + (c - b'0') as u128;
                scale *= 10;
            }
            v += frac * mult / scale;
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > i64::MAX as u128 + neg as u128 {
            return Err(invalid());
        }
    }
    Ok(if neg {
        (total as i128).wrapping_neg() as i64
    } else {
        total as i64
    })
}

/// Go's `time.Duration.String()`.
pub fn format_go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    if u < 1_000_000_000 {
        let (div, unit) = if u < 1_000 {
            (1, "ns")
        } else if u < 1_000_000 {
            (1_000, "µs")
        } else {
            (1_000_000, "ms")
        };
        return format!("{sign}{}{unit}", frac_str(u, div));
    }
    let h = u / 3_600_000_000_000;
    let rem = u % 3_600_000_000_000;
    let m = rem / 60_000_000_000;
    let sns = rem % 60_000_000_000;
    let secs = frac_str(sns, 1_000_000_000);
    if h > 0 {
        format!("{sign}{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{sign}{m}m{secs}s")
    } else {
        format!("{sign}{secs}s")
    }
}

fn frac_str(v: u64, div: u64) -> String {
    let int = v / div;
    let mut frac = v % div;
    if frac == 0 {
        return int.to_string();
    }
    let mut width = div.to_string().len() - 1;
    while frac % 10 == 0 {
        frac /= 10;
        width -= 1;
    }
    format!("{int}.{frac:0width$}")
}

// ---------------------------------------------------------------------------------------------
// Config file (etcd's embed.Config YAML)
// ---------------------------------------------------------------------------------------------

/// Top-level YAML keys that map 1:1 to a flag of the same kind.
const YAML_FLAG_KEYS: &[&str] = &[
    "name",
    "data-dir",
    "wal-dir",
    "snapshot-count",
    "max-snapshots",
    "max-wals",
    "heartbeat-interval",
    "election-timeout",
    "initial-election-tick-advance",
    "backend-batch-interval",
    "backend-batch-limit",
    "backend-bbolt-freelist-type",
    "quota-backend-bytes",
    "max-txn-ops",
    "max-request-bytes",
    "max-concurrent-streams",
    "self-signed-cert-validity",
    "cipher-suites",
    "tls-min-version",
    "tls-max-version",
    "initial-cluster-state",
    "discovery-srv",
    "discovery-srv-name",
    "discovery-proxy",
    "discovery",
    "initial-cluster",
    "initial-cluster-token",
    "strict-reconfig-check",
    "enable-v2",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "grpc-keepalive-min-time",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
    "pre-vote",
    "auth-token",
    "bcrypt-cost",
    "auth-token-ttl",
    "experimental-initial-corrupt-check",
    "experimental-corrupt-check-time",
    "experimental-compact-hash-check-enabled",
    "experimental-compact-hash-check-time",
    "experimental-enable-v2v3",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "experimental-compaction-batch-limit",
    "experimental-compaction-sleep-interval",
    "experimental-watch-progress-notify-interval",
    "experimental-warning-apply-duration",
    "experimental-bootstrap-defrag-threshold-megabytes",
    "force-new-cluster",
    "enable-pprof",
    "metrics",
    "listen-metrics-urls",
    "experimental-enable-distributed-tracing",
    "experimental-distributed-tracing-address",
    "experimental-distributed-tracing-service-name",
    "experimental-distributed-tracing-instance-id",
    "experimental-distributed-tracing-sampling-rate",
    "logger",
    "log-level",
    "log-outputs",
    "enable-log-rotation",
    "log-rotation-config-json",
    "enable-grpc-gateway",
    "unsafe-no-fsync",
    "experimental-downgrade-check-time",
    "experimental-memory-mlock",
    "experimental-txn-mode-write-with-shared-buffer",
    "experimental-stop-grpc-service-on-defrag",
    "v2-deprecation",
    "listen-peer-urls",
    "listen-client-urls",
    "listen-client-http-urls",
    "initial-advertise-peer-urls",
    "advertise-client-urls",
    "cors",
    "host-whitelist",
    "proxy",
    "discovery-fallback",
    "proxy-failure-wait",
    "proxy-refresh-interval",
    "proxy-dial-timeout",
    "proxy-write-timeout",
    "proxy-read-timeout",
    "shards",
];

fn yaml_type_err(key: &str, want: &str, v: &serde_yaml::Value) -> ConfigError {
    let got = match v {
        serde_yaml::Value::Null => "null",
        serde_yaml::Value::Bool(_) => "bool",
        serde_yaml::Value::Number(_) => "number",
        serde_yaml::Value::String(_) => "string",
        serde_yaml::Value::Sequence(_) => "array",
        serde_yaml::Value::Mapping(_) => "object",
        serde_yaml::Value::Tagged(_) => "tagged value",
    };
    ConfigError::Invalid(format!(
        "error unmarshaling JSON: json: cannot unmarshal {got} into Go struct field {key} of type {want}"
    ))
}

fn yaml_scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Sets flag `name` from a YAML value.
fn set_from_yaml(
    fs: &mut FlagSet,
    name: &'static str,
    v: &serde_yaml::Value,
) -> Result<(), ConfigError> {
    use serde_yaml::Value as Y;
    if matches!(v, Y::Null) {
        return Ok(()); // JSON null leaves a Go field untouched
    }
    let i = idx(name);
    let kind = FLAGS[i].kind;
    let new = match kind {
        Bool => match v {
            Y::Bool(b) => Val::Bool(*b),
            Y::String(s) => Val::Bool(match s.as_str() {
                "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y"
                | "Y" => true,
                "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n"
                | "N" => false,
                _ => return Err(yaml_type_err(name, "bool", v)),
            }),
            _ => return Err(yaml_type_err(name, "bool", v)),
        },
        Str | Select(_) => match yaml_scalar_text(v) {
            Some(s) => Val::Str(s),
            None => return Err(yaml_type_err(name, "string", v)),
        },
        Uint | Uint32 => {
            let n = match v {
                Y::Number(n) => n.as_u64(),
                Y::String(s) => parse_go_uint(s, 64).ok(),
                _ => None,
            };
            let n = n.ok_or_else(|| yaml_type_err(name, "uint", v))?;
            if kind == Uint32 && n > u32::MAX as u64 {
                return Err(yaml_type_err(name, "uint32", v));
            }
            Val::U64(n)
        }
        Int => {
            let n = match v {
                Y::Number(n) => n.as_i64(),
                Y::String(s) => parse_go_int(s).ok(),
                _ => None,
            };
            Val::I64(n.ok_or_else(|| yaml_type_err(name, "int", v))?)
        }
        Duration => match v {
            // Go's time.Duration unmarshals from JSON as integer nanoseconds.
            Y::Number(n) => Val::Dur(
                n.as_i64()
                    .ok_or_else(|| yaml_type_err(name, "time.Duration", v))?,
            ),
            // rusd also accepts Go duration text ("10m").
            Y::String(s) => Val::Dur(parse_go_duration(s).map_err(ConfigError::Invalid)?),
            _ => return Err(yaml_type_err(name, "time.Duration", v)),
        },
        Urls | Cors => {
            let Some(s) = yaml_scalar_text(v) else {
                return Err(yaml_type_err(name, "string", v));
            };
            if s.is_empty() {
                return Ok(());
            }
            if kind == Cors {
                let mut l: Vec<String> = Vec::new();
                for part in s.split(',') {
                    if part == "*" {
                        l.push("*".into());
                    } else {
                        l.push(parse_etcd_url(part).map_err(ConfigError::Invalid)?.raw);
                    }
                }
                Val::List(l)
            } else {
                let urls = parse_url_list(&s).map_err(|e| {
                    ConfigError::Invalid(format!("unexpected error setting up {name}: {e}"))
                })?;
                Val::Urls(urls)
            }
        }
        Strings | UniqueStrings | SelectMulti(_) => match v {
            Y::Sequence(items) => {
                let mut l = Vec::new();
                for it in items {
                    l.push(yaml_scalar_text(it).ok_or_else(|| yaml_type_err(name, "[]string", v))?);
                }
                Val::List(l)
            }
            Y::String(s) if kind == UniqueStrings => {
                // host-whitelist is a comma string in the file
                let mut l: Vec<String> = s.split(',').map(|x| x.to_string()).collect();
                l.sort();
                l.dedup();
                Val::List(l)
            }
            Y::String(s) => Val::List(if s.is_empty() {
                vec![]
            } else {
                s.split(',').map(|x| x.to_string()).collect()
            }),
            _ => return Err(yaml_type_err(name, "[]string", v)),
        },
        Ignored => return Ok(()),
    };
    // Selectable values from the file are checked like etcd does (Fatalf / Validate).
    if let (Select(valid), Val::Str(s)) = (kind, &new) {
        if name == "proxy" || name == "discovery-fallback" {
            if !s.is_empty() && !valid.contains(&s.as_str()) {
                let what = if name == "proxy" {
                    "proxyFlag"
                } else {
                    "discovery-fallback flag"
                };
                return Err(ConfigError::Invalid(format!(
                    "unexpected error setting up {what}: invalid value"
                )));
            }
            if s.is_empty() {
                return Ok(());
            }
        }
    }
    fs.vals[i] = new;
    fs.set.insert(name);
    Ok(())
}

fn apply_yaml(fs: &mut FlagSet, text: &str) -> Result<(), ConfigError> {
    use serde_yaml::Value as Y;
    let doc: Y = serde_yaml::from_str(text)
        .map_err(|e| ConfigError::Invalid(format!("error converting YAML to JSON: {e}")))?;
    let map = match doc {
        Y::Null => return Ok(()),
        Y::Mapping(m) => m,
        other => return Err(yaml_type_err("Config", "embed.Config", &other)),
    };
    // In the file, the security sections replace the TLS settings entirely; clear them.
    for (k, v) in &map {
        let Some(key) = k.as_str() else { continue };
        let key = if key == "experimental-snapshot-catch-up-entries" {
            "experimental-snapshot-catchup-entries"
        } else {
            key
        };
        if key == "experimental-snapshot-catchup-entries" {
            set_from_yaml(fs, "experimental-snapshot-catchup-entries", v)?;
            continue;
        }
        if let Some(name) = YAML_FLAG_KEYS.iter().find(|n| **n == key) {
            set_from_yaml(fs, name, v)?;
            continue;
        }
        match key {
            "client-transport-security" | "peer-transport-security" => {
                let peer = key.starts_with("peer");
                let Y::Mapping(sec) = v else {
                    if matches!(v, Y::Null) {
                        continue;
                    }
                    return Err(yaml_type_err(key, "embed.securityConfig", v));
                };
                for (sk, sv) in sec {
                    let Some(sk) = sk.as_str() else { continue };
                    let flag: Option<&'static str> = match (peer, sk) {
                        (false, "cert-file") => Some("cert-file"),
                        (false, "key-file") => Some("key-file"),
                        (false, "client-cert-file") => Some("client-cert-file"),
                        (false, "client-key-file") => Some("client-key-file"),
                        (false, "client-cert-auth") => Some("client-cert-auth"),
                        (false, "trusted-ca-file") => Some("trusted-ca-file"),
                        (false, "auto-tls") => Some("auto-tls"),
                        (false, "allowed-cn") => Some("client-cert-allowed-cn"),
                        (false, "allowed-hostname") => Some("client-cert-allowed-hostname"),
                        (true, "cert-file") => Some("peer-cert-file"),
                        (true, "key-file") => Some("peer-key-file"),
                        (true, "client-cert-file") => Some("peer-client-cert-file"),
                        (true, "client-key-file") => Some("peer-client-key-file"),
                        (true, "client-cert-auth") => Some("peer-client-cert-auth"),
                        (true, "trusted-ca-file") => Some("peer-trusted-ca-file"),
                        (true, "auto-tls") => Some("peer-auto-tls"),
                        (true, "allowed-cn") => Some("peer-cert-allowed-cn"),
                        (true, "allowed-hostname") => Some("peer-cert-allowed-hostname"),
                        _ => None,
                    };
                    if let Some(flag) = flag {
                        set_from_yaml(fs, flag, sv)?;
                    }
                }
            }
            "socket-options" => {
                if let Y::Mapping(so) = v {
                    for (sk, sv) in so {
                        match sk.as_str() {
                            Some("reuse-port") => set_from_yaml(fs, "socket-reuse-port", sv)?,
                            Some("reuse-address") => set_from_yaml(fs, "socket-reuse-address", sv)?,
                            _ => {}
                        }
                    }
                }
            }
            _ => {} // unknown keys are ignored, as Go's json does
        }
    }
    if fs.u64("self-signed-cert-validity") == 0 {
        fs.vals[idx("self-signed-cert-validity")] = Val::U64(1);
    }
    Ok(())
}

#[cfg(test)]
#[path = "config/tests.rs"]
mod tests;

#[cfg(test)]
mod flags_doc {
    /// docs/flags.md must say what the flag table says; `RUSD_REGENERATE_FLAGS=1 cargo test
    /// flags_doc` rewrites it after a flag's status changes.
    #[test]
    fn docs_flags_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/flags.md");
        let want = super::flags_markdown();
        if std::env::var_os("RUSD_REGENERATE_FLAGS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/flags.md is stale: run RUSD_REGENERATE_FLAGS=1 cargo test flags_doc"
        );
    }
}
