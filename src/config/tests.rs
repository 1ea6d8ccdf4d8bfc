use super::*;

fn args(v: &[&str]) -> Vec<OsString> {
    std::iter::once("etcd")
        .chain(v.iter().copied())
        .map(OsString::from)
        .collect()
}

fn envv(e: &[(&str, &str)]) -> Vec<(String, String)> {
    e.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn run(v: &[&str], e: &[(&str, &str)]) -> Result<Command, ConfigError> {
    parse_command(&args(v), &envv(e))
}

fn serve_env(v: &[&str], e: &[(&str, &str)]) -> Config {
    match run(v, e) {
        Ok(Command::Serve(c)) => *c,
        other => panic!("expected Serve for {v:?}, got {other:?}"),
    }
}

fn serve(v: &[&str]) -> Config {
    serve_env(v, &[])
}

fn err(v: &[&str]) -> ConfigError {
    err_env(v, &[])
}

fn err_env(v: &[&str], e: &[(&str, &str)]) -> ConfigError {
    match run(v, e) {
        Err(e) => e,
        Ok(c) => panic!("expected an error for {v:?}, got {c:?}"),
    }
}

fn raws(u: &[Url]) -> Vec<String> {
    u.iter().map(|u| u.raw.clone()).collect()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rusd-cfgtest-{}-{}", std::process::id(), tag));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn defaults_match_etcd() {
    let c = serve(&[]);
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
    assert_eq!(c.wal_dir, None);
    assert_eq!(raws(&c.listen_client_urls), vec!["http://localhost:2379"]);
    assert_eq!(
        raws(&c.advertise_client_urls),
        vec!["http://localhost:2379"]
    );
    assert_eq!(raws(&c.listen_peer_urls), vec!["http://localhost:2380"]);
    assert_eq!(
        raws(&c.initial_advertise_peer_urls),
        vec!["http://localhost:2380"]
    );
    assert!(c.listen_metrics_urls.is_empty());
    assert_eq!(c.initial_cluster.len(), 1);
    assert_eq!(c.initial_cluster[0].0, "default");
    assert_eq!(c.initial_cluster[0].1.raw, "http://localhost:2380");
    assert_eq!(c.initial_cluster_raw, "default=http://localhost:2380");
    assert_eq!(c.initial_cluster_token, "etcd-cluster");
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.snapshot_count, 100_000);
    assert_eq!(c.heartbeat_interval_ms, 100);
    assert_eq!(c.election_timeout_ms, 1000);
    assert_eq!(c.election_ticks(), 10);
    assert_eq!(c.max_request_bytes, 1_572_864);
    assert_eq!(c.max_txn_ops, 128);
    assert_eq!(c.max_concurrent_streams, u32::MAX);
    assert_eq!(c.quota_backend_bytes, 0);
    assert_eq!(c.effective_quota_backend_bytes(), 2 * 1024 * 1024 * 1024);
    assert_eq!(c.logger, "zap");
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.log_outputs, vec!["default"]);
    assert_eq!(c.experimental_watch_progress_notify_interval_ms, 600_000);
    assert_eq!(c.auto_compaction_mode, "periodic");
    assert_eq!(c.auto_compaction_retention, "0");
    assert!(c.strict_reconfig_check);
    assert!(c.pre_vote);
    assert!(c.initial_election_tick_advance);
    assert!(!c.enable_pprof && !c.force_new_cluster && !c.enable_v2);
    assert!(c.enable_grpc_gateway);
    assert_eq!(c.auth_token, "simple");
    assert_eq!(c.bcrypt_cost, 10);
    assert_eq!(c.auth_token_ttl, 300);
    assert_eq!(c.tls_min_version, "TLS1.2");
    assert_eq!(c.tls_max_version, "");
    assert!(c.cipher_suites.is_empty());
    assert_eq!(c.cors, vec!["*"]);
    assert_eq!(c.host_whitelist, vec!["*"]);
    assert_eq!(c.client_tls, TlsConfig::default());
    assert_eq!(c.peer_tls, TlsConfig::default());
    assert_eq!(c.self_signed_cert_validity, 1);
    assert_eq!(c.max_snapshots, 5);
    assert_eq!(c.max_wals, 5);
    assert_eq!(c.grpc_keepalive_min_time, Duration::from_secs(5));
    assert_eq!(c.grpc_keepalive_interval, Duration::from_secs(7200));
    assert_eq!(c.grpc_keepalive_timeout, Duration::from_secs(20));
    assert_eq!(c.raft_read_timeout, Duration::from_secs(5));
    assert_eq!(
        c.experimental_compact_hash_check_time,
        Duration::from_secs(60)
    );
    assert_eq!(
        c.experimental_warning_apply_duration,
        Duration::from_millis(100)
    );
    assert_eq!(c.experimental_downgrade_check_time, Duration::from_secs(5));
    assert_eq!(c.experimental_snapshot_catchup_entries, 5000);
    assert!(c.experimental_txn_mode_write_with_shared_buffer);
    assert_eq!(c.v2_deprecation, "not-yet");
    assert_eq!(c.proxy, "off");
    assert_eq!(c.discovery_fallback, "proxy");
    assert_eq!(c.metrics, "basic");
    assert_eq!(c.experimental_distributed_tracing_address, "localhost:4317");
    assert!(c.explicitly_set.is_empty());
    assert_eq!(c.shards_requested, 0);
    assert!(c.shards >= 1);
    assert_eq!(c.config_file, None);
    // Config::default() is the same configuration
    let d = Config::default();
    assert_eq!(d.name, "default");
    assert_eq!(d.initial_cluster_raw, c.initial_cluster_raw);
    assert_eq!(d.data_dir, c.data_dir);
}

#[test]
fn e2e_style_command_line() {
    let c = serve(&[
        "--name",
        "test-0",
        "--listen-client-urls",
        "http://localhost:20000",
        "--advertise-client-urls",
        "http://localhost:20000",
        "--listen-peer-urls",
        "http://localhost:20001",
        "--initial-advertise-peer-urls",
        "http://localhost:20001",
        "--initial-cluster-token",
        "new",
        "--data-dir",
        "/tmp/e2e/test-0",
        "--snapshot-count",
        "10000",
        "--initial-cluster",
        "test-0=http://localhost:20001,test-1=http://localhost:20006,test-2=http://localhost:20011",
        "--peer-auto-tls",
        "--listen-metrics-urls",
        "http://localhost:20002",
        "--experimental-watch-progress-notify-interval",
        "100ms",
        "--strict-reconfig-check=false",
        "--quota-backend-bytes",
        "8589934592",
        "--max-concurrent-streams",
        "100",
        "--log-level",
        "debug",
        "--auth-token",
        "jwt,pub-key=/f/pub.pem,priv-key=/f/priv.pem,sign-method=RS256,ttl=1s",
        "--experimental-compact-hash-check-enabled",
        "--experimental-compact-hash-check-time",
        "100ms",
        "--experimental-initial-corrupt-check",
    ]);
    assert_eq!(c.name, "test-0");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/e2e/test-0"));
    assert_eq!(c.snapshot_count, 10000);
    assert_eq!(c.initial_cluster_token, "new");
    assert_eq!(
        c.initial_cluster
            .iter()
            .map(|(n, u)| format!("{n}={}", u.raw))
            .collect::<Vec<_>>(),
        vec![
            "test-0=http://localhost:20001",
            "test-1=http://localhost:20006",
            "test-2=http://localhost:20011"
        ]
    );
    assert!(c.peer_tls.auto_tls);
    assert!(!c.client_tls.auto_tls);
    assert_eq!(raws(&c.listen_metrics_urls), vec!["http://localhost:20002"]);
    assert_eq!(c.experimental_watch_progress_notify_interval_ms, 100);
    assert!(!c.strict_reconfig_check);
    assert_eq!(c.quota_backend_bytes, 8 * 1024 * 1024 * 1024);
    assert_eq!(c.max_concurrent_streams, 100);
    assert_eq!(c.log_level, LogLevel::Debug);
    assert!(c.auth_token.starts_with("jwt,pub-key="));
    assert!(c.experimental_compact_hash_check_enabled);
    assert_eq!(
        c.experimental_compact_hash_check_time,
        Duration::from_millis(100)
    );
    assert!(c.experimental_initial_corrupt_check);
    assert!(c.is_set("name") && c.is_set("peer-auto-tls") && !c.is_set("auto-tls"));
    assert!(c.verify_bootstrap().is_ok());
    let u = &c.listen_client_urls[0];
    assert_eq!(
        (u.scheme.as_str(), u.host.as_str(), u.port),
        ("http", "localhost", 20000)
    );
    assert_eq!(u.host_port(), "localhost:20000");
}

#[test]
fn bool_syntax() {
    assert!(serve(&["--auto-tls"]).client_tls.auto_tls);
    assert!(serve(&["-auto-tls"]).client_tls.auto_tls);
    assert!(serve(&["--auto-tls=true"]).client_tls.auto_tls);
    assert!(!serve(&["--auto-tls=false"]).client_tls.auto_tls);
    assert!(serve(&["--auto-tls=1"]).client_tls.auto_tls);
    assert!(!serve(&["--auto-tls=F"]).client_tls.auto_tls);
    assert!(
        !serve(&["--auto-tls", "--auto-tls=false"])
            .client_tls
            .auto_tls
    );
    assert!(
        serve(&["--client-cert-auth", "--client-cert-auth"])
            .client_tls
            .client_cert_auth
    );
    // a bare bool never takes the next argument
    let e = err(&["--auto-tls", "false"]);
    assert_eq!(e.to_string(), "'false' is not a valid flag");
    assert_eq!(e.exit_code(), 1);
    let e = err(&["--auto-tls=yes"]);
    assert_eq!(
        e.to_string(),
        "invalid boolean value \"yes\" for -auto-tls: parse error"
    );
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn value_syntax() {
    assert_eq!(serve(&["-name", "x"]).name, "x");
    assert_eq!(serve(&["--name=x"]).name, "x");
    assert_eq!(serve(&["--name", "a", "--name", "b"]).name, "b");
    // a value may look like a flag
    assert_eq!(
        serve(&["--initial-cluster-token", "--weird"]).initial_cluster_token,
        "--weird"
    );
    // empty values
    assert_eq!(
        serve(&["--initial-cluster-token="]).initial_cluster_token,
        ""
    );
    assert_eq!(
        serve(&["--initial-cluster-token", ""]).initial_cluster_token,
        ""
    );
    assert_eq!(serve(&["--auth-token="]).auth_token, "");
    // value containing '='
    assert_eq!(serve(&["--auth-token=jwt,ttl=1s"]).auth_token, "jwt,ttl=1s");
    // list flags: the last occurrence wins
    let c = serve(&[
        "--cipher-suites",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "--cipher-suites",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ]);
    assert_eq!(
        c.cipher_suites,
        vec!["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]
    );
    // -- ends the flags; anything after is refused like etcd
    assert_eq!(
        err(&["--name", "a", "--", "x"]).to_string(),
        "'x' is not a valid flag"
    );
    assert_eq!(serve(&["--name", "a", "--"]).name, "a");
    assert_eq!(err(&["-"]).to_string(), "'-' is not a valid flag");
    assert_eq!(err(&["extra"]).to_string(), "'extra' is not a valid flag");
}

#[test]
fn flag_errors_like_go() {
    let e = err(&["--foo"]);
    assert_eq!(e.to_string(), "flag provided but not defined: -foo");
    assert_eq!(e.exit_code(), 2);
    assert!(matches!(e, ConfigError::Usage(_)));
    assert_eq!(
        err(&["-foo=1"]).to_string(),
        "flag provided but not defined: -foo"
    );
    assert_eq!(
        err(&["--name"]).to_string(),
        "flag needs an argument: -name"
    );
    assert_eq!(err(&["---name"]).to_string(), "bad flag syntax: ---name");
    assert_eq!(err(&["-=x"]).to_string(), "bad flag syntax: -=x");
    assert_eq!(
        err(&["--snapshot-count", "abc"]).to_string(),
        "invalid value \"abc\" for flag -snapshot-count: parse error"
    );
    assert_eq!(
        err(&["--snapshot-count", "-1"]).to_string(),
        "invalid value \"-1\" for flag -snapshot-count: parse error"
    );
    assert_eq!(
        err(&["--max-concurrent-streams", "4294967296"]).to_string(),
        "invalid value \"4294967296\" for flag -max-concurrent-streams: strconv.ParseUint: parsing \"4294967296\": value out of range"
    );
    assert_eq!(
        err(&["--initial-cluster-state", "bad"]).to_string(),
        "invalid value \"bad\" for flag -initial-cluster-state: invalid value"
    );
    assert_eq!(
        err(&["--listen-client-urls", "http://localhost:1/x"]).to_string(),
        "invalid value \"http://localhost:1/x\" for flag -listen-client-urls: URL must not contain a path: http://localhost:1/x"
    );
    assert_eq!(
        err(&["--listen-client-urls", "ftp://localhost:1"]).to_string(),
        "invalid value \"ftp://localhost:1\" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: ftp://localhost:1"
    );
    assert_eq!(
        err(&["--listen-client-urls", "localhost:2379"]).to_string(),
        "invalid value \"localhost:2379\" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: localhost:2379"
    );
    assert_eq!(
        err(&["--listen-client-urls", "http://localhost"]).to_string(),
        "invalid value \"http://localhost\" for flag -listen-client-urls: URL address does not have the form \"host:port\": http://localhost"
    );
    assert_eq!(
        err(&["--listen-client-urls", ""]).to_string(),
        "invalid value \"\" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: "
    );
    assert!(err(&["--listen-client-urls", "http://localhost:abc"])
        .to_string()
        .contains("invalid port \":abc\" after host"));
    assert_eq!(
        err(&["--heartbeat-interval", "1s"]).to_string(),
        "invalid value \"1s\" for flag -heartbeat-interval: parse error"
    );
    assert_eq!(
        err(&["--experimental-watch-progress-notify-interval", "10"]).to_string(),
        "invalid value \"10\" for flag -experimental-watch-progress-notify-interval: parse error"
    );
    assert!(matches!(
        err(&["--v2-deprecation", "bogus"]),
        ConfigError::Usage(_)
    ));
}

#[test]
fn help_version_subcommands() {
    for h in ["-h", "--help", "-help", "--h"] {
        match run(&[h], &[]).unwrap() {
            Command::Help(t) => {
                assert!(t.contains("--listen-client-urls"));
                assert!(t.contains("--shards"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        run(&["--version"], &[]).unwrap(),
        Command::Version
    ));
    assert!(matches!(
        run(&["--name", "x", "-version"], &[]).unwrap(),
        Command::Version
    ));
    // etcd prints the version before looking at the config file or env
    assert!(matches!(
        run(&["--version", "--config-file", "/nonexistent"], &[]).unwrap(),
        Command::Version
    ));
    let v = version_text();
    let lines: Vec<&str> = v.lines().collect();
    assert_eq!(lines[0], "etcd Version: 3.5.17");
    assert_eq!(lines[1], "Git SHA: 507c0de");
    assert_eq!(lines[2], "Go Version: go1.22.9");
    assert!(lines[3].starts_with("Go OS/Arch: linux/"));
    assert!(lines[4].starts_with("rusd Version: "));
    match run(&["gateway", "start", "--endpoints=x:1"], &[]).unwrap() {
        Command::Gateway(g) => assert_eq!(g.endpoints, ["x:1"]),
        other => panic!("{other:?}"),
    }
    match run(&["grpc-proxy", "start", "--endpoints=x:1"], &[]).unwrap() {
        Command::GrpcProxy(p) => assert_eq!(p.endpoints, ["x:1"]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn env_vars_act_as_flags() {
    let c = serve_env(
        &[],
        &[
            ("ETCD_NAME", "envname"),
            ("ETCD_AUTO_TLS", "true"),
            ("ETCD_SNAPSHOT_COUNT", "5"),
            ("ETCD_VERIFY", "all"),
            ("ETCD_UNSUPPORTED_ARCH", "arm"),
            ("ETCD_SOMETHING_UNKNOWN", "1"),
            ("ETCD_DATA_DIR", ""), // empty: ignored
            ("PATH", "/bin"),
        ],
    );
    assert_eq!(c.name, "envname");
    assert!(c.client_tls.auto_tls);
    assert_eq!(c.snapshot_count, 5);
    assert_eq!(c.data_dir, PathBuf::from("envname.etcd"));
    assert_eq!(c.initial_cluster_raw, "envname=http://localhost:2380");
    assert!(c.is_set("name") && c.is_set("auto-tls") && !c.is_set("data-dir"));
    let warned: Vec<&StartupLog> = c
        .startup_logs
        .iter()
        .filter(|l| l.msg == "unrecognized environment variable")
        .collect();
    // etcd also warns about a known variable that is set but empty (it was not used)
    assert_eq!(warned.len(), 2);
    assert_eq!(
        warned[0].fields[0].1,
        serde_json::json!("ETCD_SOMETHING_UNKNOWN=1")
    );
    assert_eq!(warned[1].fields[0].1, serde_json::json!("ETCD_DATA_DIR="));
    assert!(c
        .startup_logs
        .iter()
        .any(|l| l.msg == "recognized and used environment variable"));

    // invalid env value
    let e = err_env(&[], &[("ETCD_SNAPSHOT_COUNT", "x")]);
    assert_eq!(
        e.to_string(),
        "invalid value \"x\" for ETCD_SNAPSHOT_COUNT: parse error"
    );
    // a flag given both ways is fatal in etcd
    let e = err_env(&["--name", "a"], &[("ETCD_NAME", "b")]);
    assert!(matches!(&e, ConfigError::ShadowedEnv(v) if v == "ETCD_NAME"));
    assert_eq!(e.exit_code(), 1);
    // ETCD_VERSION is special and ignored
    let c = serve_env(&[], &[("ETCD_VERSION", "true")]);
    assert!(c
        .startup_logs
        .iter()
        .any(|l| l.msg == "cannot set special environment variable"));
}

#[test]
fn listen_client_urls_need_advertise() {
    let e = err(&["--listen-client-urls", "http://localhost:20000"]);
    assert_eq!(
        e.to_string(),
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    );
    assert!(matches!(e, ConfigError::Invalid(_)));
    // via env too
    let e = err_env(
        &[],
        &[("ETCD_LISTEN_CLIENT_URLS", "http://localhost:20000")],
    );
    assert!(e
        .to_string()
        .contains("--advertise-client-urls is required"));
    // v2 proxy mode allows it
    let c = serve(&[
        "--listen-client-urls",
        "http://localhost:20000",
        "--proxy",
        "on",
    ]);
    assert_eq!(
        raws(&c.advertise_client_urls),
        vec!["http://localhost:2379"]
    );
}

#[test]
fn initial_cluster_defaulting() {
    let c = serve(&["--name", "m1"]);
    assert_eq!(c.initial_cluster_raw, "m1=http://localhost:2380");
    assert_eq!(c.data_dir, PathBuf::from("m1.etcd"));
    let c = serve(&[
        "--name",
        "m1",
        "--initial-advertise-peer-urls",
        "http://localhost:20001,http://127.0.0.1:20001",
    ]);
    assert_eq!(
        c.initial_cluster_raw,
        "m1=http://127.0.0.1:20001,m1=http://localhost:20001"
    );
    assert!(c.verify_bootstrap().is_ok());
    // name default with other peer URLs keeps etcd's default initial cluster, which then fails
    // bootstrap verification just like etcd
    let c = serve(&["--initial-advertise-peer-urls", "http://localhost:20001"]);
    assert_eq!(c.initial_cluster_raw, "default=http://localhost:2380");
    let e = c.verify_bootstrap().unwrap_err().to_string();
    assert!(e.starts_with("--initial-cluster has default=http://localhost:2380 but missing from --initial-advertise-peer-urls=http://localhost:20001"), "{e}");
    // name not in initial cluster
    let c = serve(&[
        "--name",
        "x",
        "--initial-cluster",
        "y=http://localhost:2380",
    ]);
    assert_eq!(
        c.verify_bootstrap().unwrap_err().to_string(),
        "couldn't find local name \"x\" in the initial cluster configuration"
    );
    // discovery clears the default initial cluster
    let c = serve(&["--discovery", "https://discovery.etcd.io/abc"]);
    assert!(c.initial_cluster.is_empty());
    assert_eq!(
        err(&["--discovery", "https://d/x", "--initial-cluster", "default=http://localhost:2380"]).to_string(),
        "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""
    );
    // existing
    assert_eq!(
        serve(&["--initial-cluster-state", "existing"]).initial_cluster_state,
        ClusterState::Existing
    );
    // bad URL inside initial-cluster
    assert!(err(&["--initial-cluster", "a=localhost:2380"])
        .to_string()
        .contains("URL scheme must be"));
}

#[test]
fn url_lists_sorted_unique_and_schemes() {
    let c = serve(&[
        "--listen-client-urls",
        "https://localhost:20000,http://localhost:20000,http://localhost:20000",
        "--advertise-client-urls",
        "https://localhost:20000,http://localhost:20000",
    ]);
    assert_eq!(
        raws(&c.listen_client_urls),
        vec!["http://localhost:20000", "https://localhost:20000"]
    );
    assert!(c.listen_client_urls[1].is_tls());
    let c = serve(&[
        "--listen-client-urls",
        "unix://localhost:20000",
        "--advertise-client-urls",
        "unix://localhost:20000",
    ]);
    let u = &c.listen_client_urls[0];
    assert!(u.is_unix());
    assert_eq!(u.unix_path(), "localhost:20000");
    assert_eq!(u.port, 20000);
    let c = serve(&[
        "--listen-client-urls",
        "http://127.0.0.1:2379,http://[::1]:2379",
        "--advertise-client-urls",
        "HTTP://127.0.0.1:2379",
    ]);
    assert_eq!(c.advertise_client_urls[0].raw, "http://127.0.0.1:2379");
    let v6 = c
        .listen_client_urls
        .iter()
        .find(|u| u.host == "::1")
        .unwrap();
    assert_eq!(v6.host_port(), "[::1]:2379");
    assert_eq!(v6.authority, "[::1]:2379");
    assert_eq!(
        err(&[
            "--listen-client-urls",
            "http://example.com:2379",
            "--advertise-client-urls",
            "http://example.com:2379"
        ])
        .to_string(),
        "expected IP in URL for binding (http://example.com:2379)"
    );
    // advertise URLs may use names
    serve(&["--advertise-client-urls", "http://example.com:2379"]);
    let e = err(&["--advertise-client-urls", "http://:2379"]).to_string();
    assert_eq!(e, "--advertise-client-urls \"http://:2379\" must be \"host:port\" (unexpected empty host (http://:2379))");
    assert_eq!(
        serve(&[
            "--listen-client-urls",
            "http://0.0.0.0:2379",
            "--advertise-client-urls",
            "http://x:1"
        ])
        .listen_client_urls[0]
            .host,
        "0.0.0.0"
    );
    // CORS
    assert_eq!(
        serve(&["--cors", "http://a:1,http://b:2"]).cors,
        vec!["http://a:1", "http://b:2"]
    );
}

#[test]
fn validation_messages() {
    assert_eq!(
        err(&["--heartbeat-interval", "300", "--election-timeout", "1000"]).to_string(),
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
    );
    assert_eq!(
        err(&["--heartbeat-interval", "0"]).to_string(),
        "--heartbeat-interval must be >0 (set to 0ms)"
    );
    assert_eq!(
        err(&["--election-timeout", "60000"]).to_string(),
        "--election-timeout[60000ms] is too long, and should be set less than 50000ms"
    );
    assert_eq!(
        err(&["--auto-compaction-mode", "x"]).to_string(),
        "unknown auto-compaction-mode \"x\""
    );
    assert_eq!(
        err(&["--logger", "capnslog"]).to_string(),
        "--logger=capnslog is removed in v3.5"
    );
    assert_eq!(
        err(&["--logger", "x"]).to_string(),
        "unknown logger option \"x\""
    );
    assert_eq!(
        err(&["--log-outputs", "default,stdout"]).to_string(),
        "multi logoutput for \"default\" is not supported yet"
    );
    assert_eq!(
        err(&["--log-level", "verbose"]).to_string(),
        "unrecognized level: \"verbose\""
    );
    assert_eq!(
        err(&["--tls-min-version", "TLS1.1"]).to_string(),
        "unexpected TLS version \"TLS1.1\" (must be one of: TLS1.2, TLS1.3)"
    );
    assert_eq!(
        err(&["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"]).to_string(),
        "min version (TLS1.3) is greater than max version (TLS1.2)"
    );
    assert_eq!(
        err(&[
            "--tls-min-version",
            "TLS1.3",
            "--cipher-suites",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        ])
        .to_string(),
        "cipher suites cannot be configured when only TLS1.3 is enabled"
    );
    assert_eq!(
        err(&["--cipher-suites", "NOPE"]).to_string(),
        "unexpected TLS cipher suite \"NOPE\""
    );
    assert_eq!(
        err(&["--experimental-compact-hash-check-time", "0s"]).to_string(),
        "--experimental-compact-hash-check-time must be >0 (set to 0s)"
    );
    assert_eq!(
        err(&["--experimental-enable-lease-checkpoint-persist"]).to_string(),
        "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint"
    );
    let c = serve(&[
        "--log-outputs",
        "stdout,stderr,stdout",
        "--log-level",
        "warn",
    ]);
    assert_eq!(c.log_outputs, vec!["stderr", "stdout"]);
    assert_eq!(c.log_level, LogLevel::Warn);
    let c = serve(&["--tls-min-version", "TLS1.3"]);
    assert_eq!(c.tls_min_version, "TLS1.3");
    // raft timeouts are raised to 5s
    let c = serve(&["--raft-read-timeout", "1s"]);
    assert_eq!(c.raft_read_timeout, Duration::from_secs(5));
    // progress notify interval: 0 means default, small values are raised to 100ms
    assert_eq!(
        serve(&["--experimental-watch-progress-notify-interval", "0"])
            .experimental_watch_progress_notify_interval_ms,
        600_000
    );
    assert_eq!(
        serve(&["--experimental-watch-progress-notify-interval", "1ms"])
            .experimental_watch_progress_notify_interval_ms,
        100
    );
    assert_eq!(
        serve(&["--experimental-watch-progress-notify-interval", "2s"])
            .experimental_watch_progress_notify_interval_ms,
        2000
    );
}

#[test]
fn ignored_and_misc_flags() {
    let c = serve(&["--v", "--snapshot=xyz", "-vv"]);
    assert!(
        c.explicitly_set.is_empty() && c.startup_logs.iter().all(|l| !l.msg.contains("no longer"))
    );
    let c = serve(&[
        "--enable-v2",
        "--v2-deprecation",
        "write-only",
        "--experimental-enable-v2v3",
        "/v2",
    ]);
    assert!(c.enable_v2);
    assert_eq!(c.v2_deprecation, "write-only");
    let c = serve(&[
        "--cert-file",
        "/c.pem",
        "--key-file",
        "/k.pem",
        "--trusted-ca-file",
        "/ca.pem",
        "--client-cert-auth",
        "--client-crl-file",
        "/crl",
        "--peer-cert-allowed-cn",
        "a,b",
        "--peer-cert-allowed-hostname",
        "h",
        "--peer-cert-file",
        "/pc",
        "--peer-key-file",
        "/pk",
        "--peer-trusted-ca-file",
        "/pca",
        "--peer-client-cert-auth",
        "--experimental-peer-skip-client-san-verification",
    ]);
    assert_eq!(c.client_tls.cert_file, "/c.pem");
    assert_eq!(c.client_tls.crl_file, "/crl");
    assert!(c.client_tls.client_cert_auth && !c.client_tls.is_empty());
    assert_eq!(c.peer_tls.allowed_cn, vec!["a", "b"]);
    assert_eq!(c.peer_tls.allowed_hostname, vec!["h"]);
    assert!(c.peer_tls.skip_client_san_verify && c.peer_tls.client_cert_auth);
    let c = serve(&[
        "--wal-dir",
        "/w",
        "--backend-batch-interval",
        "10ms",
        "--max-request-bytes",
        "0x100",
        "--max-txn-ops",
        "010",
    ]);
    assert_eq!(c.wal_dir, Some(PathBuf::from("/w")));
    assert_eq!(c.backend_batch_interval, Duration::from_millis(10));
    assert_eq!(c.max_request_bytes, 256);
    assert_eq!(c.max_txn_ops, 8);
    // client-cert-allowed-cn is a config-file-only setting in etcd 3.5
    assert_eq!(
        err(&["--client-cert-allowed-cn", "x"]).to_string(),
        "flag provided but not defined: -client-cert-allowed-cn"
    );
}

#[test]
fn shards_flag_and_env() {
    let c = serve(&["--shards", "4"]);
    assert_eq!((c.shards, c.shards_requested), (4, 4));
    let c = serve_env(&[], &[("RUSD_SHARDS", "3")]);
    assert_eq!(c.shards, 3);
    let c = serve_env(&["--shards=2"], &[("RUSD_SHARDS", "3")]);
    assert_eq!(c.shards, 2);
    let c = serve(&[]);
    assert_eq!(c.shards, affinity_cpus());
    // ETCD_SHARDS is not ours: an unknown etcd variable
    let c = serve_env(&[], &[("ETCD_SHARDS", "7")]);
    assert_eq!(c.shards_requested, 0);
    assert!(err_env(&[], &[("RUSD_SHARDS", "x")])
        .to_string()
        .contains("RUSD_SHARDS"));
}

#[test]
fn go_numbers_and_durations() {
    assert_eq!(parse_go_uint("10", 64), Ok(10));
    assert_eq!(parse_go_uint("0x1F", 64), Ok(31));
    assert_eq!(parse_go_uint("0b101", 64), Ok(5));
    assert_eq!(parse_go_uint("0o17", 64), Ok(15));
    assert_eq!(parse_go_uint("017", 64), Ok(15));
    assert_eq!(parse_go_uint("0", 64), Ok(0));
    assert_eq!(parse_go_uint("0x1_0", 64), Ok(16));
    assert_eq!(parse_go_uint("1_0", 64), Err(NumErr::Syntax));
    assert_eq!(parse_go_uint("", 64), Err(NumErr::Syntax));
    assert_eq!(
        parse_go_uint("18446744073709551616", 64),
        Err(NumErr::Range)
    );
    assert_eq!(parse_go_uint("4294967295", 32), Ok(4294967295));
    assert_eq!(parse_go_int("-5"), Ok(-5));
    assert_eq!(parse_go_int("-9223372036854775808"), Ok(i64::MIN));
    assert_eq!(parse_go_int("9223372036854775808"), Err(NumErr::Range));

    let ms = 1_000_000i64;
    let s = 1000 * ms;
    assert_eq!(parse_go_duration("0"), Ok(0));
    assert_eq!(parse_go_duration("500ms"), Ok(500 * ms));
    assert_eq!(parse_go_duration("10m"), Ok(600 * s));
    assert_eq!(parse_go_duration("1h30m"), Ok(5400 * s));
    assert_eq!(parse_go_duration("1.5s"), Ok(1500 * ms));
    assert_eq!(parse_go_duration(".5s"), Ok(500 * ms));
    assert_eq!(parse_go_duration("-2s"), Ok(-2 * s));
    assert_eq!(parse_go_duration("3us"), Ok(3000));
    assert_eq!(parse_go_duration("3µs"), Ok(3000));
    assert_eq!(parse_go_duration("7ns"), Ok(7));
    assert_eq!(
        parse_go_duration("10"),
        Err("time: missing unit in duration \"10\"".into())
    );
    assert_eq!(
        parse_go_duration("5d"),
        Err("time: unknown unit \"d\" in duration \"5d\"".into())
    );
    assert_eq!(
        parse_go_duration(""),
        Err("time: invalid duration \"\"".into())
    );
    assert_eq!(
        parse_go_duration("."),
        Err("time: invalid duration \".\"".into())
    );
    assert!(parse_go_duration("3000000h").is_err());

    assert_eq!(format_go_duration(0), "0s");
    assert_eq!(format_go_duration(100 * ms), "100ms");
    assert_eq!(format_go_duration(60 * s), "1m0s");
    assert_eq!(format_go_duration(7200 * s), "2h0m0s");
    assert_eq!(format_go_duration(1500 * ms), "1.5s");
    assert_eq!(format_go_duration(1500), "1.5µs");
    assert_eq!(format_go_duration(-5 * s), "-5s");
}

fn write_yaml(tag: &str, text: &str) -> String {
    let d = tmpdir(tag);
    let p = d.join("etcd.conf.yml");
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn config_file_yaml() {
    let path = write_yaml(
        "yaml1",
        r#"
name: 'infra1'
data-dir: /tmp/infra1.etcd
snapshot-count: 10000
heartbeat-interval: 100
election-timeout: 1000
quota-backend-bytes: 0
listen-peer-urls: http://localhost:20001
listen-client-urls: http://localhost:20000,https://localhost:20000
max-snapshots: 5
max-wals: 5
initial-advertise-peer-urls: http://localhost:20001
advertise-client-urls: http://localhost:20000
initial-cluster: infra1=http://localhost:20001
initial-cluster-token: 'etcd-cluster-1'
initial-cluster-state: 'new'
strict-reconfig-check: false
enable-v2: true
enable-pprof: true
proxy: 'off'
client-transport-security:
  cert-file: /f/server.crt
  key-file: /f/server.key
  client-cert-auth: true
  trusted-ca-file: /f/ca.crt
  auto-tls: false
  allowed-cn: [a]
peer-transport-security:
  auto-tls: true
  allowed-hostname: [h1, h2]
log-level: debug
logger: zap
log-outputs: [stderr]
cipher-suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
experimental-watch-progress-notify-interval: 200000000
experimental-compact-hash-check-time: 1m
max-concurrent-streams: 1000
auto-compaction-retention: 1
socket-options:
  reuse-port: true
unknown-key: whatever
"#,
    );
    // command-line flags and env are ignored when a config file is given
    let c = serve_env(
        &[
            "--config-file",
            &path,
            "--name",
            "ignored",
            "--snapshot-count",
            "1",
        ],
        &[("ETCD_NAME", "ignored-too"), ("ETCD_LOG_LEVEL", "error")],
    );
    assert_eq!(c.config_file.as_deref(), Some(std::path::Path::new(&path)));
    assert_eq!(c.name, "infra1");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/infra1.etcd"));
    assert_eq!(c.snapshot_count, 10000);
    assert_eq!(
        raws(&c.listen_client_urls),
        vec!["http://localhost:20000", "https://localhost:20000"]
    );
    assert_eq!(c.initial_cluster_token, "etcd-cluster-1");
    assert!(!c.strict_reconfig_check && c.enable_v2 && c.enable_pprof);
    assert_eq!(c.client_tls.cert_file, "/f/server.crt");
    assert!(c.client_tls.client_cert_auth);
    assert_eq!(c.client_tls.allowed_cn, vec!["a"]);
    assert!(c.peer_tls.auto_tls);
    assert_eq!(c.peer_tls.allowed_hostname, vec!["h1", "h2"]);
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.log_outputs, vec!["stderr"]);
    assert_eq!(
        c.cipher_suites,
        vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
    );
    assert_eq!(c.experimental_watch_progress_notify_interval_ms, 200);
    assert_eq!(
        c.experimental_compact_hash_check_time,
        Duration::from_secs(60)
    );
    assert_eq!(c.max_concurrent_streams, 1000);
    assert_eq!(c.auto_compaction_retention, "1");
    assert!(c.socket_reuse_port);
    assert!(c.is_set("name") && c.is_set("cert-file") && !c.is_set("wal-dir"));
    assert!(c
        .startup_logs
        .iter()
        .any(|l| l.msg.starts_with("loaded server configuration")));

    // ETCD_CONFIG_FILE works too; --shards still applies
    let c = serve_env(&["--shards", "2"], &[("ETCD_CONFIG_FILE", &path)]);
    assert_eq!(c.name, "infra1");
    assert_eq!(c.shards, 2);

    // in a file, listen-client-urls without advertise-client-urls keeps the default advertise URL
    let p2 = write_yaml(
        "yaml2",
        "listen-client-urls: http://localhost:20000\nname: n2\n",
    );
    let c = serve(&["--config-file", &p2]);
    assert_eq!(
        raws(&c.advertise_client_urls),
        vec!["http://localhost:2379"]
    );
    assert_eq!(c.initial_cluster_raw, "n2=http://localhost:2380");
    assert_eq!(c.data_dir, PathBuf::from("n2.etcd"));

    // empty file = defaults
    let p3 = write_yaml("yaml3", "");
    let c = serve(&["--config-file", &p3]);
    assert_eq!(c.name, "default");

    // errors
    let p4 = write_yaml("yaml4", "listen-client-urls: http://localhost:1/path\n");
    assert!(err(&["--config-file", &p4])
        .to_string()
        .contains("URL must not contain a path"));
    let p5 = write_yaml("yaml5", "snapshot-count: [1]\n");
    assert!(err(&["--config-file", &p5])
        .to_string()
        .contains("cannot unmarshal array"));
    let p6 = write_yaml("yaml6", "initial-cluster-state: bogus\n");
    assert_eq!(
        err(&["--config-file", &p6]).to_string(),
        "unexpected clusterState \"bogus\""
    );
    let e = err(&["--config-file", "/nonexistent/x.yml"]);
    assert_eq!(
        e.to_string(),
        "open /nonexistent/x.yml: no such file or directory"
    );
    let p7 = write_yaml("yaml7", "name: [unclosed\n");
    assert!(matches!(
        err(&["--config-file", &p7]),
        ConfigError::Invalid(_)
    ));
    let _ = std::fs::remove_dir_all(
        tmpdir("yaml1")
            .parent()
            .unwrap()
            .join(format!("rusd-cfgtest-{}-yaml1", std::process::id())),
    );
}

#[test]
fn flag_table_consistency() {
    // unique names, all defaults parse (FlagSet::new would panic otherwise)
    let mut names = BTreeSet::new();
    for s in FLAGS {
        assert!(names.insert(s.name), "duplicate flag {}", s.name);
    }
    let _ = FlagSet::new();
    // every etcd flag is present
    for n in [
        "config-file",
        "data-dir",
        "wal-dir",
        "listen-peer-urls",
        "listen-client-urls",
        "listen-client-http-urls",
        "listen-metrics-urls",
        "max-snapshots",
        "max-wals",
        "name",
        "snapshot-count",
        "heartbeat-interval",
        "election-timeout",
        "initial-election-tick-advance",
        "quota-backend-bytes",
        "backend-bbolt-freelist-type",
        "backend-batch-interval",
        "backend-batch-limit",
        "max-txn-ops",
        "max-request-bytes",
        "grpc-keepalive-min-time",
        "grpc-keepalive-interval",
        "grpc-keepalive-timeout",
        "socket-reuse-port",
        "socket-reuse-address",
        "max-concurrent-streams",
        "raft-read-timeout",
        "raft-write-timeout",
        "initial-advertise-peer-urls",
        "advertise-client-urls",
        "discovery",
        "discovery-fallback",
        "discovery-proxy",
        "discovery-srv",
        "discovery-srv-name",
        "initial-cluster",
        "initial-cluster-token",
        "initial-cluster-state",
        "strict-reconfig-check",
        "pre-vote",
        "enable-v2",
        "experimental-enable-v2v3",
        "v2-deprecation",
        "proxy",
        "proxy-failure-wait",
        "proxy-refresh-interval",
        "proxy-dial-timeout",
        "proxy-write-timeout",
        "proxy-read-timeout",
        "cert-file",
        "key-file",
        "client-cert-file",
        "client-key-file",
        "client-cert-auth",
        "client-crl-file",
        "client-cert-allowed-hostname",
        "trusted-ca-file",
        "auto-tls",
        "peer-cert-file",
        "peer-key-file",
        "peer-client-cert-file",
        "peer-client-key-file",
        "peer-client-cert-auth",
        "peer-trusted-ca-file",
        "peer-auto-tls",
        "self-signed-cert-validity",
        "peer-crl-file",
        "peer-cert-allowed-cn",
        "peer-cert-allowed-hostname",
        "cipher-suites",
        "experimental-peer-skip-client-san-verification",
        "tls-min-version",
        "tls-max-version",
        "cors",
        "host-whitelist",
        "logger",
        "log-outputs",
        "log-level",
        "enable-log-rotation",
        "log-rotation-config-json",
        "version",
        "auto-compaction-retention",
        "auto-compaction-mode",
        "enable-pprof",
        "metrics",
        "experimental-enable-distributed-tracing",
        "experimental-distributed-tracing-address",
        "experimental-distributed-tracing-service-name",
        "experimental-distributed-tracing-instance-id",
        "experimental-distributed-tracing-sampling-rate",
        "auth-token",
        "bcrypt-cost",
        "auth-token-ttl",
        "enable-grpc-gateway",
        "experimental-initial-corrupt-check",
        "experimental-corrupt-check-time",
        "experimental-compact-hash-check-enabled",
        "experimental-compact-hash-check-time",
        "experimental-enable-lease-checkpoint",
        "experimental-enable-lease-checkpoint-persist",
        "experimental-compaction-batch-limit",
        "experimental-compaction-sleep-interval",
        "experimental-watch-progress-notify-interval",
        "experimental-downgrade-check-time",
        "experimental-warning-apply-duration",
        "experimental-memory-mlock",
        "experimental-txn-mode-write-with-shared-buffer",
        "experimental-stop-grpc-service-on-defrag",
        "experimental-bootstrap-defrag-threshold-megabytes",
        "experimental-snapshot-catchup-entries",
        "unsafe-no-fsync",
        "force-new-cluster",
        "cluster-active-size",
        "cluster-remove-delay",
        "cluster-sync-interval",
        "config",
        "force",
        "max-result-buffer",
        "max-retry-attempts",
        "peer-heartbeat-interval",
        "peer-election-timeout",
        "retry-interval",
        "snapshot",
        "v",
        "vv",
        "test.coverprofile",
        "test.outputdir",
        "shards",
    ] {
        assert!(flag_spec(n).is_some(), "missing flag {n}");
        assert!(
            flags_markdown().contains(&format!("`--{n}`")),
            "flags.md lacks {n}"
        );
    }
    for k in YAML_FLAG_KEYS {
        assert!(
            FLAGS.iter().any(|s| s.name == *k),
            "yaml key {k} has no flag"
        );
    }
    assert_eq!(
        flag_to_env("initial-cluster-token"),
        "ETCD_INITIAL_CLUSTER_TOKEN"
    );
}

#[test]
fn report_exit_codes() {
    assert_eq!(ConfigError::Usage("x".into()).exit_code(), 2);
    assert_eq!(ConfigError::Invalid("x".into()).exit_code(), 1);
    assert_eq!(ConfigError::ShadowedEnv("ETCD_X".into()).exit_code(), 1);
    assert!(usage_text().starts_with("Usage:"));
}

#[test]
fn etcd_sample_config_file_shape() {
    // The key set and value shapes of etcd's etcd.conf.yml.sample (used by e2e
    // TestEtcdExampleConfig): empty values are YAML nulls and leave defaults in place.
    let path = write_yaml(
        "sample",
        "name: 'default'\ndata-dir:\nwal-dir:\nsnapshot-count: 10000\nheartbeat-interval: 100\n\
election-timeout: 1000\nquota-backend-bytes: 0\nlisten-peer-urls: http://localhost:2380\n\
listen-client-urls: http://localhost:2379\nmax-snapshots: 5\nmax-wals: 5\ncors:\n\
initial-advertise-peer-urls: http://localhost:2380\nadvertise-client-urls: http://localhost:2379\n\
discovery:\ndiscovery-fallback: 'proxy'\ndiscovery-proxy:\ndiscovery-srv:\ninitial-cluster:\n\
initial-cluster-token: 'etcd-cluster'\ninitial-cluster-state: 'new'\nstrict-reconfig-check: false\n\
enable-v2: true\nenable-pprof: true\nproxy: 'off'\nproxy-failure-wait: 5000\nproxy-refresh-interval: 30000\n\
proxy-dial-timeout: 1000\nproxy-write-timeout: 5000\nproxy-read-timeout: 0\n\
client-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n  trusted-ca-file:\n  auto-tls: false\n\
peer-transport-security:\n  cert-file:\n  key-file:\n  client-cert-auth: false\n  trusted-ca-file:\n  auto-tls: false\n  allowed-cn:\n  allowed-hostname:\n\
self-signed-cert-validity: 1\nlog-level: debug\nlogger: zap\nlog-outputs: [stderr]\nforce-new-cluster: false\n\
auto-compaction-mode: periodic\nauto-compaction-retention: \"1\"\n",
    );
    let c = serve(&["--config-file", &path]);
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
    assert_eq!(c.wal_dir, None);
    assert_eq!(c.initial_cluster_raw, "default=http://localhost:2380");
    assert_eq!(c.snapshot_count, 10000);
    assert_eq!(c.cors, vec!["*"]);
    assert!(c.enable_v2 && !c.strict_reconfig_check);
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.log_outputs, vec!["stderr"]);
    assert_eq!(c.auto_compaction_retention, "1");
    assert!(c.client_tls.is_empty() && c.peer_tls.allowed_cn.is_empty());
    assert!(c.verify_bootstrap().is_ok());
    let ms = crate::ids::members_from_initial_cluster(&c);
    assert_eq!(ms[0].1, 0x8e9e05c52164694d);
}

#[test]
fn e2e_config_tests_flags() {
    // TestEtcdMultiPeer: port 0 client URLs on 0.0.0.0, two listen peer URLs
    let c = serve(&[
        "--name",
        "e1",
        "--listen-client-urls",
        "http://0.0.0.0:0",
        "--data-dir",
        "/tmp/e1",
        "--advertise-client-urls",
        "http://0.0.0.0:0",
        "--listen-peer-urls",
        "http://127.0.0.1:20001,http://127.0.0.1:20004",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:20001",
        "--initial-cluster",
        "e0=http://127.0.0.1:20000,e1=http://127.0.0.1:20001,e2=http://127.0.0.1:20002",
    ]);
    assert_eq!(c.listen_client_urls[0].port, 0);
    assert_eq!(c.listen_peer_urls.len(), 2);
    assert!(c.verify_bootstrap().is_ok());
    // TestEtcdUnixPeers
    let c = serve(&[
        "--data-dir",
        "/tmp/d",
        "--name",
        "e1",
        "--listen-peer-urls",
        "unix://etcd.unix:1",
        "--initial-advertise-peer-urls",
        "unix://etcd.unix:1",
        "--initial-cluster",
        "e1=unix://etcd.unix:1",
    ]);
    assert_eq!(c.listen_peer_urls[0].unix_path(), "etcd.unix:1");
    assert_eq!(c.initial_cluster[0].1.raw, "unix://etcd.unix:1");
    assert!(c.verify_bootstrap().is_ok());
    // IDs read from a real etcd v3.5.17 started with these flags
    let ms = crate::ids::members_from_initial_cluster(&c);
    assert_eq!(ms[0].1, 0xb16965eda2672782);
    assert_eq!(crate::ids::initial_cluster_id(&c), 0x72c251f3aa4aa290);
}

// ---------------------------------------------------------------------------------------------
// gateway and grpc-proxy subcommands (cobra/pflag syntax)
// ---------------------------------------------------------------------------------------------

fn gateway(v: &[&str]) -> GatewayConfig {
    match run(v, &[]) {
        Ok(Command::Gateway(g)) => g,
        other => panic!("expected Gateway for {v:?}, got {other:?}"),
    }
}

fn grpc_proxy(v: &[&str]) -> GrpcProxyConfig {
    match run(v, &[]) {
        Ok(Command::GrpcProxy(p)) => *p,
        other => panic!("expected GrpcProxy for {v:?}, got {other:?}"),
    }
}

#[test]
fn gateway_defaults_and_flags_before_or_after_start() {
    let g = gateway(&["gateway", "start"]);
    assert_eq!(g.listen_addr, "127.0.0.1:23790");
    assert_eq!(g.endpoints, ["127.0.0.1:2379"]);
    assert_eq!(g.retry_delay, Duration::from_secs(60));
    // etcd's TestGateway puts the flag before `start` (cobra finds the subcommand first).
    let g = gateway(&["gateway", "--endpoints=a:1,b:2", "start"]);
    assert_eq!(g.endpoints, ["a:1", "b:2"]);
    let g = gateway(&[
        "gateway",
        "start",
        "--listen-addr",
        "127.0.0.1:5",
        "--retry-delay=3s",
    ]);
    assert_eq!(g.listen_addr, "127.0.0.1:5");
    assert_eq!(g.retry_delay, Duration::from_secs(3));
}

#[test]
fn pflag_lists_accumulate_and_scalars_keep_the_last() {
    let p = grpc_proxy(&[
        "grpc-proxy",
        "start",
        "--endpoints",
        "a:1,b:2",
        "--endpoints=c:3",
        "--listen-addr=1.1.1.1:1",
        "--listen-addr",
        "2.2.2.2:2",
    ]);
    assert_eq!(p.endpoints, ["a:1", "b:2", "c:3"]);
    assert_eq!(p.listen_addr, "2.2.2.2:2");
}

#[test]
fn grpc_proxy_defaults_match_etcd() {
    let p = grpc_proxy(&["grpc-proxy", "start"]);
    assert_eq!(p.listen_addr, "127.0.0.1:23790");
    assert_eq!(p.advertise_client_url, "127.0.0.1:23790");
    assert_eq!(p.endpoints, ["127.0.0.1:2379"]);
    assert_eq!(p.endpoints_auto_sync_interval, Duration::ZERO);
    assert_eq!(p.dial_keepalive_timeout, Duration::from_secs(20));
    assert_eq!(p.max_send_bytes, 1_572_864);
    assert_eq!(p.max_recv_bytes, i32::MAX as i64);
    assert_eq!(p.grpc_keepalive_min_time, Duration::from_secs(5));
    assert_eq!(p.grpc_keepalive_interval, Duration::from_secs(7200));
    assert_eq!(p.max_concurrent_streams, u32::MAX);
    assert_eq!(p.data_dir, "default.proxy");
    assert_eq!(p.self_signed_cert_validity, 1);
    assert!(!p.debug && !p.auto_tls && !p.insecure_skip_tls_verify);
    assert!(p.listen_cipher_suites.is_empty());
}

#[test]
fn grpc_proxy_flags_of_the_e2e_tests() {
    let p = grpc_proxy(&[
        "grpc-proxy",
        "start",
        "--advertise-client-url",
        "127.0.0.1:32379",
        "--listen-addr",
        "127.0.0.1:32379",
        "--endpoints",
        "http://localhost:12379",
        "--endpoints-auto-sync-interval",
        "1s",
    ]);
    assert_eq!(p.endpoints, ["http://localhost:12379"]);
    assert_eq!(p.endpoints_auto_sync_interval, Duration::from_secs(1));
    let p = grpc_proxy(&[
        "grpc-proxy",
        "start",
        "--cert",
        "c",
        "--key",
        "k",
        "--cacert",
        "ca",
    ]);
    assert_eq!(
        (p.cert.as_str(), p.key.as_str(), p.cacert.as_str()),
        ("c", "k", "ca")
    );
    let p = grpc_proxy(&[
        "grpc-proxy",
        "start",
        "--listen-cipher-suites",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ]);
    assert_eq!(p.listen_cipher_suites.len(), 2);
    let p = grpc_proxy(&["grpc-proxy", "start", "--listen-cipher-suites", ""]);
    assert!(p.listen_cipher_suites.is_empty());
    let p = grpc_proxy(&[
        "grpc-proxy",
        "start",
        "--debug",
        "--namespace=t/",
        "--resolver-prefix",
        "p",
        "--resolver-ttl",
        "5",
    ]);
    assert!(p.debug);
    assert_eq!(p.namespace, "t/");
    assert_eq!((p.resolver_prefix.as_str(), p.resolver_ttl), ("p", 5));
}

#[test]
fn pflag_bools_take_only_an_attached_value() {
    let p = grpc_proxy(&["grpc-proxy", "start", "--debug=false"]);
    assert!(!p.debug);
    // `--debug false`: the flag is true and `false` is a stray argument cobra ignores.
    let p = grpc_proxy(&["grpc-proxy", "start", "--debug", "false"]);
    assert!(p.debug);
}

#[test]
fn subcommand_errors_use_pflag_texts() {
    let e = err(&["grpc-proxy", "start", "--bogus"]);
    assert!(matches!(e, ConfigError::Subcommand(_)), "{e:?}");
    assert_eq!(e.to_string(), "unknown flag: --bogus");
    assert_eq!(e.exit_code(), 1);
    assert_eq!(
        err(&["grpc-proxy", "start", "--resolver-ttl", "x"]).to_string(),
        "invalid argument \"x\" for \"--resolver-ttl\" flag: strconv.ParseInt: parsing \"x\": invalid syntax"
    );
    assert_eq!(
        err(&["gateway", "start", "--retry-delay=5"]).to_string(),
        "invalid argument \"5\" for \"--retry-delay\" flag: time: missing unit in duration \"5\""
    );
    assert_eq!(
        err(&["grpc-proxy", "start", "--debug=maybe"]).to_string(),
        "invalid argument \"maybe\" for \"--debug\" flag: strconv.ParseBool: parsing \"maybe\": invalid syntax"
    );
    assert_eq!(
        err(&["grpc-proxy", "start", "--listen-addr"]).to_string(),
        "flag needs an argument: --listen-addr"
    );
}

#[test]
fn grpc_proxy_check_args() {
    assert_eq!(
        err(&["grpc-proxy", "start", "--resolver-prefix", "p"]).to_string(),
        "invalid resolver-ttl 0"
    );
    assert_eq!(
        err(&["grpc-proxy", "start", "--resolver-ttl", "3"]).to_string(),
        "invalid resolver-prefix \"\""
    );
    assert_eq!(
        err(&[
            "grpc-proxy",
            "start",
            "--resolver-ttl",
            "3",
            "--resolver-prefix",
            "p",
            "--advertise-client-url="
        ])
        .to_string(),
        "invalid advertise-client-url \"\""
    );
    assert_eq!(
        err(&[
            "grpc-proxy",
            "start",
            "--auto-tls",
            "--self-signed-cert-validity",
            "0"
        ])
        .to_string(),
        "selfSignedCertValidity is invalid,it should be greater than 0"
    );
    let e = err(&["grpc-proxy", "start", "--listen-cipher-suites", "TLS_BOGUS"]);
    assert!(matches!(e, ConfigError::Proxy(_)));
    assert_eq!(e.to_string(), "unexpected TLS cipher suite \"TLS_BOGUS\"");
}

#[test]
fn subcommand_help_and_bare_subcommand() {
    for v in [
        &["gateway", "start", "--help"][..],
        &["grpc-proxy", "start", "-h"],
        &["gateway"],
    ] {
        match run(v, &[]).unwrap() {
            Command::Help(t) => assert!(t.contains("--listen-addr") || t.contains("start"), "{t}"),
            other => panic!("{other:?}"),
        }
    }
    // The server's flags are not the subcommands' and vice versa.
    assert_eq!(
        err(&["--listen-addr=x"]).to_string(),
        "flag provided but not defined: -listen-addr"
    );
    // Only the first argument selects a subcommand, as in etcd's main.
    assert_eq!(
        err(&["--name", "x", "gateway"]).to_string(),
        "'gateway' is not a valid flag"
    );
}

#[test]
fn subcommands_ignore_etcd_variables() {
    match run(
        &["grpc-proxy", "start"],
        &[("ETCD_LISTEN_ADDR", "1.2.3.4:5")],
    )
    .unwrap()
    {
        Command::GrpcProxy(p) => assert_eq!(p.listen_addr, "127.0.0.1:23790"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn clap_commands_are_well_formed() {
    server_command().debug_assert();
    proxy_command().debug_assert();
}
