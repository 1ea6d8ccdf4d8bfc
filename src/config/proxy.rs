//! The command lines of `etcd gateway start` and `etcd grpc-proxy start`, on clap.
//!
//! etcd builds these two subcommands with cobra and pflag, not Go's `flag` package, so their
//! syntax is clap's own and needs no rewriting: `--x=v` or `--x v`, booleans as `--x` or
//! `--x=false` (never taking the next argument), the last of a repeated flag wins, a list flag
//! (`--endpoints`) takes comma-separated values and accumulates over repeats, the flags may
//! stand before or after `start` (cobra finds the subcommand first; here they are `global`
//! arguments of `gateway`/`grpc-proxy`), `-h`/`--help` prints the help, and arguments after the
//! flags are ignored as cobra does. Errors carry pflag's texts ("unknown flag: --x",
//! `invalid argument "x" for "--resolver-ttl" flag: ...`). These subcommands read no `ETCD_*`
//! variables, as in etcd.

use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches};

use super::{
    format_go_duration, go_quote, parse_go_bool, parse_go_duration, parse_go_int, parse_go_uint,
    Command, ConfigError, FlagKind, FlagSpec, GO_CIPHER_SUITES,
};
use FlagKind::{Bool, Duration as Dur, Int, Str, Strings, Uint, Uint32};

/// `etcd gateway start`.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// `--listen-addr` (`host:port`).
    pub listen_addr: String,
    /// `--endpoints`, as given (a scheme, if any, is stripped when the gateway starts).
    pub endpoints: Vec<String>,
    pub discovery_srv: String,
    pub discovery_srv_name: String,
    pub insecure_discovery: bool,
    pub trusted_ca_file: String,
    /// `--retry-delay`: how long a failed endpoint is left alone before it is tried again.
    pub retry_delay: Duration,
}

impl GatewayConfig {
    /// Go's text of a duration such as `--retry-delay` (for logs).
    pub fn retry_text(d: Duration) -> String {
        duration_text(d)
    }
}

/// `etcd grpc-proxy start`.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcProxyConfig {
    pub listen_addr: String,
    pub discovery_srv: String,
    pub discovery_srv_name: String,
    pub metrics_addr: String,
    pub insecure_discovery: bool,
    /// `--endpoints`: `host:port` or URLs of the etcd members.
    pub endpoints: Vec<String>,
    /// 0: the endpoint list is never refreshed from the cluster's member list.
    pub endpoints_auto_sync_interval: Duration,
    pub dial_keepalive_time: Duration,
    pub dial_keepalive_timeout: Duration,
    pub permit_without_stream: bool,
    pub advertise_client_url: String,
    pub resolver_prefix: String,
    pub resolver_ttl: i64,
    pub namespace: String,
    pub enable_pprof: bool,
    pub data_dir: String,
    pub max_send_bytes: i64,
    pub max_recv_bytes: i64,
    pub grpc_keepalive_min_time: Duration,
    pub grpc_keepalive_interval: Duration,
    pub grpc_keepalive_timeout: Duration,
    /// TLS towards the etcd endpoints.
    pub cert: String,
    pub key: String,
    pub cacert: String,
    pub insecure_skip_tls_verify: bool,
    /// TLS of the proxy's own listener.
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub listen_cipher_suites: Vec<String>,
    pub auto_tls: bool,
    pub client_crl_file: String,
    pub self_signed_cert_validity: u64,
    pub experimental_serializable_ordering: bool,
    pub experimental_leasing_prefix: String,
    pub debug: bool,
    pub max_concurrent_streams: u32,
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

const G_GATEWAY: &str = "gateway start";
const G_PROXY: &str = "grpc-proxy start";
const NE_SRV: Option<&str> = Some("DNS SRV discovery is not implemented; use --endpoints");

/// Every flag of `etcd gateway start` (etcd v3.5.17), with rusd's status.
#[rustfmt::skip]
pub const GATEWAY_FLAGS: &[FlagSpec] = &[
    f("listen-addr", Str, "127.0.0.1:23790", G_GATEWAY, "Listen address.", None),
    f("endpoints", Strings, "127.0.0.1:2379", G_GATEWAY, "Comma-separated etcd cluster endpoints.", None),
    f("retry-delay", Dur, "1m0s", G_GATEWAY, "How long a failed endpoint is skipped before it is tried again.", None),
    f("discovery-srv", Str, "", G_GATEWAY, "DNS domain used to bootstrap the endpoints.", NE_SRV),
    f("discovery-srv-name", Str, "", G_GATEWAY, "Service name to query when using DNS discovery.", NE_SRV),
    f("insecure-discovery", Bool, "false", G_GATEWAY, "Accept insecure SRV records.", NE_SRV),
    f("trusted-ca-file", Str, "", G_GATEWAY, "CA file for verifying endpoints discovered through DNS SRV.", NE_SRV),
];

/// Every flag of `etcd grpc-proxy start` (etcd v3.5.17), with rusd's status.
#[rustfmt::skip]
pub const GRPC_PROXY_FLAGS: &[FlagSpec] = &[
    f("listen-addr", Str, "127.0.0.1:23790", G_PROXY, "Listen address.", None),
    f("endpoints", Strings, "127.0.0.1:2379", G_PROXY, "Comma-separated etcd cluster endpoints.", None),
    f("endpoints-auto-sync-interval", Dur, "0s", G_PROXY, "Refresh the endpoints from the cluster's member list at this interval (0 = never).", None),
    f("advertise-client-url", Str, "127.0.0.1:23790", G_PROXY, "Address clients reach this proxy at: MemberList through the proxy answers it, and --resolver-prefix registers it.", None),
    f("resolver-prefix", Str, "", G_PROXY, "Register this proxy under this key prefix (shared by the proxies of one cluster); MemberList then lists the registered proxies.", None),
    f("resolver-ttl", Int, "0", G_PROXY, "TTL in seconds of the registration lease.", None),
    f("namespace", Str, "", G_PROXY, "Prefix added to every key of KV and Watch requests (and removed from answers).", None),
    f("cert", Str, "", G_PROXY, "Client certificate towards the etcd endpoints (its Common Name must be empty).", None),
    f("key", Str, "", G_PROXY, "Client key towards the etcd endpoints.", None),
    f("cacert", Str, "", G_PROXY, "CA bundle verifying the etcd endpoints.", None),
    f("insecure-skip-tls-verify", Bool, "false", G_PROXY, "Do not verify the endpoints' certificates (testing only).", None),
    f("cert-file", Str, "", G_PROXY, "TLS certificate of the proxy's listener.", None),
    f("key-file", Str, "", G_PROXY, "TLS key of the proxy's listener.", None),
    f("trusted-ca-file", Str, "", G_PROXY, "CA bundle verifying client certificates at the proxy's listener.", None),
    f("listen-cipher-suites", Strings, "", G_PROXY, "TLS cipher suites of the listener (empty: the library's).", None),
    f("auto-tls", Bool, "false", G_PROXY, "Listener TLS with a generated self-signed certificate (in <data-dir>/fixtures/proxy).", None),
    f("client-crl-file", Str, "", G_PROXY, "Revocation list for client certificates at the listener.", None),
    f("self-signed-cert-validity", Uint, "1", G_PROXY, "Validity in years of the generated certificate.", None),
    f("data-dir", Str, "default.proxy", G_PROXY, "Directory for the auto-TLS certificate.", None),
    f("metrics-addr", Str, "", G_PROXY, "Also serve /metrics and /health at this URL (http://host:port).", None),
    f("max-send-bytes", Int, "1572864", G_PROXY, "Largest request sent to the endpoints, in bytes (KV and Watch).", None),
    f("max-recv-bytes", Int, "2147483647", G_PROXY, "Largest answer taken from the endpoints, in bytes (KV and Watch).", None),
    f("dial-keepalive-time", Dur, "0s", G_PROXY, "HTTP/2 ping interval towards the endpoints (0 = off).", None),
    f("dial-keepalive-timeout", Dur, "20s", G_PROXY, "How long a ping towards an endpoint may go unanswered.", None),
    f("permit-without-stream", Bool, "false", G_PROXY, "Ping the endpoints even with no call in flight.", None),
    f("grpc-keepalive-min-time", Dur, "5s", G_PROXY, "Minimum interval between a client's pings.", Some("hyper's HTTP/2 server has no ping-rate policy")),
    f("grpc-keepalive-interval", Dur, "2h0m0s", G_PROXY, "Interval of the proxy's pings to idle clients (0 = off).", None),
    f("grpc-keepalive-timeout", Dur, "20s", G_PROXY, "How long a ping to a client may go unanswered.", None),
    f("max-concurrent-streams", Uint32, "4294967295", G_PROXY, "Streams one client connection may have open at a time.", None),
    f("debug", Bool, "false", G_PROXY, "Log at debug level.", None),
    f("discovery-srv", Str, "", G_PROXY, "Domain to query for SRV records of the endpoints.", NE_SRV),
    f("discovery-srv-name", Str, "", G_PROXY, "Service name to query when using DNS discovery.", NE_SRV),
    f("insecure-discovery", Bool, "false", G_PROXY, "Accept insecure SRV records.", NE_SRV),
    f("enable-pprof", Bool, "false", G_PROXY, "Serve Go's runtime profiling data.", Some("Go runtime profiling has no rusd counterpart")),
    f("experimental-serializable-ordering", Bool, "false", G_PROXY, "Serializable reads never go back in revision across endpoints.", Some("not implemented")),
    f("experimental-leasing-prefix", Str, "", G_PROXY, "Leasing metadata prefix for disconnected linearized reads.", Some("not implemented")),
];

/// A value pflag would refuse: the value and the reason (Go's strconv/time error text).
#[derive(Debug)]
struct PflagValueError {
    value: String,
    reason: String,
}

impl std::fmt::Display for PflagValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for PflagValueError {}

/// pflag's parsing of one value of `kind`, with its error text.
fn check_pflag_value(kind: FlagKind, s: &str) -> Result<(), String> {
    let strconv = |func: &str, e: super::NumErr| e.strconv_msg(func, s);
    match kind {
        Bool => parse_go_bool(s)
            .map(|_| ())
            .ok_or_else(|| format!("strconv.ParseBool: parsing {}: invalid syntax", go_quote(s))),
        Int => parse_go_int(s)
            .map(|_| ())
            .map_err(|e| strconv("ParseInt", e)),
        Uint => parse_go_uint(s, 64)
            .map(|_| ())
            .map_err(|e| strconv("ParseUint", e)),
        Uint32 => parse_go_uint(s, 32)
            .map(|_| ())
            .map_err(|e| strconv("ParseUint", e)),
        Dur => parse_go_duration(s).map(|_| ()),
        _ => Ok(()),
    }
}

fn pflag_arg(spec: &'static FlagSpec) -> Arg {
    let kind = spec.kind;
    let parser = move |s: &str| -> Result<String, PflagValueError> {
        check_pflag_value(kind, s)
            .map(|()| s.to_string())
            .map_err(|reason| PflagValueError {
                value: s.to_string(),
                reason,
            })
    };
    let mut arg = Arg::new(spec.name)
        .long(spec.name)
        .help(spec.help)
        .value_parser(parser)
        .global(true);
    arg = match kind {
        Bool => arg
            .action(ArgAction::Set)
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .value_name("BOOL"),
        // pflag's StringSlice: comma-separated, repeats accumulate, the first replaces the
        // default.
        Strings => arg
            .action(ArgAction::Append)
            .value_delimiter(',')
            .num_args(1)
            .allow_hyphen_values(true)
            .value_name("LIST"),
        _ => arg
            .action(ArgAction::Set)
            .num_args(1)
            .allow_hyphen_values(true)
            .value_name("VALUE"),
    };
    if !spec.default.is_empty() {
        arg = arg.default_value(spec.default);
    }
    arg
}

/// The arguments cobra leaves after the flags of `start`: accepted and ignored, as etcd does.
const IGNORED_ARGS: &str = "ignored-arguments";

fn subcommand(
    name: &'static str,
    about: &'static str,
    flags: &'static [FlagSpec],
) -> clap::Command {
    let mut cmd = clap::Command::new(name)
        .about(about)
        .args_override_self(true)
        .subcommand(
            clap::Command::new("start")
                .about(format!("start the {name}"))
                .arg(
                    Arg::new(IGNORED_ARGS)
                        .num_args(0..)
                        .action(ArgAction::Append)
                        .hide(true),
                ),
        );
    for spec in flags {
        cmd = cmd.arg(pflag_arg(spec));
    }
    cmd
}

/// The proxies' command line: `etcd gateway start [flags]`, `etcd grpc-proxy start [flags]`.
pub fn proxy_command() -> clap::Command {
    clap::Command::new("etcd")
        .about("etcd server")
        .disable_version_flag(true)
        .subcommand_required(true)
        .subcommand(subcommand(
            "gateway",
            "gateway related command",
            GATEWAY_FLAGS,
        ))
        .subcommand(subcommand(
            "grpc-proxy",
            "grpc-proxy related command",
            GRPC_PROXY_FLAGS,
        ))
}

fn pflag_error(e: &clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let arg = context(ContextKind::InvalidArg);
    let name = arg
        .split(['=', ' ', '<', '['])
        .next()
        .unwrap_or("")
        .to_string();
    if let Some(v) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<PflagValueError>())
    {
        return ConfigError::Subcommand(format!(
            "invalid argument {} for {} flag: {}",
            go_quote(&v.value),
            go_quote(&name),
            v.reason
        ));
    }
    ConfigError::Subcommand(match e.kind() {
        ErrorKind::UnknownArgument if !name.starts_with("--") && name.len() > 1 => {
            format!("unknown shorthand flag: '{}' in {name}", &name[1..2])
        }
        ErrorKind::UnknownArgument => format!("unknown flag: {name}"),
        ErrorKind::InvalidSubcommand => {
            format!(
                "unknown command {} for \"etcd\"",
                go_quote(&context(ContextKind::InvalidSubcommand))
            )
        }
        _ if !name.is_empty() => format!("flag needs an argument: {name}"),
        _ => e.kind().to_string(),
    })
}

/// Parses `etcd gateway ...` or `etcd grpc-proxy ...` (`args` without the program name).
pub(super) fn parse_proxy_command(args: &[String]) -> Result<Command, ConfigError> {
    let matches = match proxy_command()
        .try_get_matches_from(std::iter::once("etcd".to_string()).chain(args.iter().cloned()))
    {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp) => {
            return Ok(Command::Help(e.render().to_string()))
        }
        // `etcd gateway` alone: cobra prints the command's help.
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return Ok(Command::Help(e.render().to_string()))
        }
        Err(e) => return Err(pflag_error(&e)),
    };
    let (which, sub) = matches.subcommand().expect("a subcommand is required");
    let Some(start) = sub.subcommand_matches("start") else {
        let mut cmd = proxy_command();
        let help = cmd
            .find_subcommand_mut(which)
            .expect("known subcommand")
            .render_help();
        return Ok(Command::Help(help.to_string()));
    };
    match which {
        "gateway" => Ok(Command::Gateway(gateway_config(start))),
        _ => grpc_proxy_config(start).map(|c| Command::GrpcProxy(Box::new(c))),
    }
}

fn text(m: &ArgMatches, name: &str) -> String {
    m.get_one::<String>(name).cloned().unwrap_or_default()
}

fn boolean(m: &ArgMatches, name: &str) -> bool {
    parse_go_bool(&text(m, name)).unwrap_or(false)
}

fn duration(m: &ArgMatches, name: &str) -> Duration {
    let ns = parse_go_duration(&text(m, name)).unwrap_or(0);
    Duration::from_nanos(ns.max(0) as u64)
}

fn int(m: &ArgMatches, name: &str) -> i64 {
    parse_go_int(&text(m, name)).unwrap_or(0)
}

fn uint(m: &ArgMatches, name: &str) -> u64 {
    parse_go_uint(&text(m, name), 64).unwrap_or(0)
}

fn list(m: &ArgMatches, name: &str) -> Vec<String> {
    m.get_many::<String>(name)
        .map(|v| v.filter(|s| !s.is_empty()).cloned().collect())
        .unwrap_or_default()
}

fn gateway_config(m: &ArgMatches) -> GatewayConfig {
    GatewayConfig {
        listen_addr: text(m, "listen-addr"),
        endpoints: list(m, "endpoints"),
        discovery_srv: text(m, "discovery-srv"),
        discovery_srv_name: text(m, "discovery-srv-name"),
        insecure_discovery: boolean(m, "insecure-discovery"),
        trusted_ca_file: text(m, "trusted-ca-file"),
        retry_delay: duration(m, "retry-delay"),
    }
}

/// The `grpc-proxy start` configuration, with etcd's `checkArgs` and the cipher-suite check
/// etcd makes before it listens.
fn grpc_proxy_config(m: &ArgMatches) -> Result<GrpcProxyConfig, ConfigError> {
    let c = GrpcProxyConfig {
        listen_addr: text(m, "listen-addr"),
        discovery_srv: text(m, "discovery-srv"),
        discovery_srv_name: text(m, "discovery-srv-name"),
        metrics_addr: text(m, "metrics-addr"),
        insecure_discovery: boolean(m, "insecure-discovery"),
        endpoints: list(m, "endpoints"),
        endpoints_auto_sync_interval: duration(m, "endpoints-auto-sync-interval"),
        dial_keepalive_time: duration(m, "dial-keepalive-time"),
        dial_keepalive_timeout: duration(m, "dial-keepalive-timeout"),
        permit_without_stream: boolean(m, "permit-without-stream"),
        advertise_client_url: text(m, "advertise-client-url"),
        resolver_prefix: text(m, "resolver-prefix"),
        resolver_ttl: int(m, "resolver-ttl"),
        namespace: text(m, "namespace"),
        enable_pprof: boolean(m, "enable-pprof"),
        data_dir: text(m, "data-dir"),
        max_send_bytes: int(m, "max-send-bytes"),
        max_recv_bytes: int(m, "max-recv-bytes"),
        grpc_keepalive_min_time: duration(m, "grpc-keepalive-min-time"),
        grpc_keepalive_interval: duration(m, "grpc-keepalive-interval"),
        grpc_keepalive_timeout: duration(m, "grpc-keepalive-timeout"),
        cert: text(m, "cert"),
        key: text(m, "key"),
        cacert: text(m, "cacert"),
        insecure_skip_tls_verify: boolean(m, "insecure-skip-tls-verify"),
        cert_file: text(m, "cert-file"),
        key_file: text(m, "key-file"),
        trusted_ca_file: text(m, "trusted-ca-file"),
        listen_cipher_suites: list(m, "listen-cipher-suites"),
        auto_tls: boolean(m, "auto-tls"),
        client_crl_file: text(m, "client-crl-file"),
        self_signed_cert_validity: uint(m, "self-signed-cert-validity"),
        experimental_serializable_ordering: boolean(m, "experimental-serializable-ordering"),
        experimental_leasing_prefix: text(m, "experimental-leasing-prefix"),
        debug: boolean(m, "debug"),
        max_concurrent_streams: uint(m, "max-concurrent-streams") as u32,
    };
    let fail = |msg: String| Err(ConfigError::Proxy(msg));
    if !c.resolver_prefix.is_empty() && c.resolver_ttl < 1 {
        return fail(format!("invalid resolver-ttl {}", c.resolver_ttl));
    }
    if c.resolver_prefix.is_empty() && c.resolver_ttl > 0 {
        return fail(format!(
            "invalid resolver-prefix {}",
            go_quote(&c.resolver_prefix)
        ));
    }
    if !c.resolver_prefix.is_empty() && c.resolver_ttl > 0 && c.advertise_client_url.is_empty() {
        return fail(format!(
            "invalid advertise-client-url {}",
            go_quote(&c.advertise_client_url)
        ));
    }
    if c.auto_tls && c.self_signed_cert_validity == 0 {
        return fail("selfSignedCertValidity is invalid,it should be greater than 0".to_string());
    }
    for suite in &c.listen_cipher_suites {
        if !GO_CIPHER_SUITES.contains(&suite.as_str()) {
            return fail(format!("unexpected TLS cipher suite {}", go_quote(suite)));
        }
    }
    Ok(c)
}

/// The rows of docs/flags.md for one subcommand's table.
pub(super) fn markdown_rows(flags: &[FlagSpec]) -> String {
    let mut out = String::from("| Flag | Default | Status |\n|---|---|---|\n");
    for s in flags {
        let def = if s.default.is_empty() {
            "''".to_string()
        } else {
            format!("`{}`", s.default)
        };
        let status = match s.no_effect {
            None => "works".to_string(),
            Some(r) => format!("accepted without effect: {r}"),
        };
        out.push_str(&format!(
            "| `--{}` | {} | {} — {} |\n",
            s.name, def, status, s.help
        ));
    }
    out
}

/// Go's `time.Duration.String()` of a `Duration` (for logs).
pub fn duration_text(d: Duration) -> String {
    format_go_duration(d.as_nanos().min(i64::MAX as u128) as i64)
}
