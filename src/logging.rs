//! zap-compatible JSON logging, as etcd v3.5 writes it.
//!
//! Every record is one line of JSON:
//! `{"level":"info","ts":"2024-11-12T10:00:00.123456Z","caller":"rusd/server.rs:42","msg":"...",<fields>}`
//! with the keys `level`, `ts`, `caller`, `msg` first and in that order, then the fields in the
//! order given at the call site.
//!
//! Each line goes out with a single `write(2)` per target (looping only on a short write), under
//! a per-target lock, so lines from different threads never interleave and nothing is held in a
//! user-space buffer: the e2e framework reads our output through a pty and waits for lines.
//!
//! Use the macros exported at the crate root:
//! ```ignore
//! log_info!("ready to serve client requests", "address" => addr.to_string());
//! log_warn!("something odd", "count" => 3, "names" => vec!["a", "b"]);
//! ```
//! Values may be anything `serde::Serialize`. A filtered-out level costs one atomic load.

// An API surface for the whole server: not every item is used yet.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// zap's levels, in increasing severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LogLevel {
    Debug = 0,
    #[default]
    Info = 1,
    Warn = 2,
    Error = 3,
    DPanic = 4,
    Panic = 5,
    Fatal = 6,
}

impl LogLevel {
    /// The lowercase name zap writes in the `level` key.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::DPanic => "dpanic",
            LogLevel::Panic => "panic",
            LogLevel::Fatal => "fatal",
        }
    }

    /// Parses a level the way zap's `Level.UnmarshalText` does: lowercase or uppercase names,
    /// and the empty string means info.
    pub fn parse(s: &str) -> Result<LogLevel, String> {
        Ok(match s {
            "debug" | "DEBUG" => LogLevel::Debug,
            "info" | "INFO" | "" => LogLevel::Info,
            "warn" | "WARN" => LogLevel::Warn,
            "error" | "ERROR" => LogLevel::Error,
            "dpanic" | "DPANIC" => LogLevel::DPanic,
            "panic" | "PANIC" => LogLevel::Panic,
            "fatal" | "FATAL" => LogLevel::Fatal,
            _ => return Err(format!("unrecognized level: {s:?}")),
        })
    }

    fn from_u8(v: u8) -> LogLevel {
        match v {
            0 => LogLevel::Debug,
            1 => LogLevel::Info,
            2 => LogLevel::Warn,
            3 => LogLevel::Error,
            4 => LogLevel::DPanic,
            5 => LogLevel::Panic,
            _ => LogLevel::Fatal,
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogLevel::parse(s)
    }
}

/// One output target.
struct Sink {
    fd: RawFd,
    /// Keeps an opened log file alive (and its fd valid).
    _file: Option<std::fs::File>,
    lock: Mutex<()>,
}

impl Sink {
    fn std(fd: RawFd) -> Sink {
        Sink {
            fd,
            _file: None,
            lock: Mutex::new(()),
        }
    }

    fn write_line(&self, buf: &[u8]) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        write_all_fd(self.fd, buf);
    }
}

fn write_all_fd(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice for its length; fd is owned by the sink (or is 1/2).
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return; // nowhere to report a failing log target
        }
        if n == 0 {
            return;
        }
        buf = &buf[n as usize..];
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);
static SINKS: OnceLock<RwLock<Vec<Sink>>> = OnceLock::new();

fn sinks() -> &'static RwLock<Vec<Sink>> {
    SINKS.get_or_init(|| RwLock::new(vec![Sink::std(2)]))
}

/// Opens the targets of `--log-outputs` and sets the minimum level. Targets: `default` and
/// `stderr` (standard error), `stdout`, or a file path opened for append (created if missing).
/// Duplicate targets are written once. May be called again to reconfigure (tests do).
/// Before `init`, records at info and above go to standard error.
pub fn init(level: LogLevel, outputs: &[String]) -> anyhow::Result<()> {
    let mut names: Vec<&str> = outputs.iter().map(|s| s.as_str()).collect();
    if names.is_empty() {
        names.push("default");
    }
    let mut new: Vec<Sink> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for name in names {
        let key = match name {
            "default" | "stderr" => "stderr".to_string(),
            other => other.to_string(),
        };
        if seen.contains(&key) {
            continue;
        }
        seen.push(key.clone());
        match key.as_str() {
            "stderr" => new.push(Sink::std(2)),
            "stdout" => new.push(Sink::std(1)),
            "/dev/null" => {}
            "systemd/journal" => {
                anyhow::bail!("log output \"systemd/journal\" is not supported by rusd")
            }
            path => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("open {path}: {e}"))?;
                new.push(Sink {
                    fd: f.as_raw_fd(),
                    _file: Some(f),
                    lock: Mutex::new(()),
                });
            }
        }
    }
    let mut guard = sinks().write().unwrap_or_else(|e| e.into_inner());
    *guard = new;
    LEVEL.store(level as u8, Ordering::Relaxed);
    Ok(())
}

/// Changes the minimum level at run time.
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// The current minimum level.
pub fn level() -> LogLevel {
    LogLevel::from_u8(LEVEL.load(Ordering::Relaxed))
}

/// Whether a record at `level` would be written.
#[inline]
pub fn enabled(level: LogLevel) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

/// Converts a field value for a log record. Serialization failures become a string.
pub fn to_value<T: serde::Serialize + ?Sized>(v: &T) -> serde_json::Value {
    match serde_json::to_value(v) {
        Ok(v) => v,
        Err(e) => serde_json::Value::String(format!("<unserializable: {e}>")),
    }
}

/// Shortens a `file!()` path to zap's short caller form: the last two path components. A file
/// directly under a crate's `src/` is shown under the crate name instead (`rusd/server.rs`).
pub fn short_caller(file: &str, module_path: &str, line: u32) -> String {
    let parts: Vec<&str> = file.split(['/', '\\']).filter(|p| !p.is_empty()).collect();
    let n = parts.len();
    let krate = module_path.split("::").next().unwrap_or("");
    let short = if n >= 2 {
        if parts[n - 2] == "src" && !krate.is_empty() {
            format!("{}/{}", krate, parts[n - 1])
        } else {
            format!("{}/{}", parts[n - 2], parts[n - 1])
        }
    } else if n == 1 {
        parts[0].to_string()
    } else {
        String::new()
    };
    format!("{short}:{line}")
}

/// Formats a time as zap does in etcd: UTC, microseconds, `Z` suffix.
pub fn format_ts(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let micros = d.subsec_micros();
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        y,
        m,
        dd,
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        micros
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json never fails to serialize a str.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Builds one log line (with the trailing newline) without writing it.
pub fn format_line(
    level: LogLevel,
    ts: SystemTime,
    caller: &str,
    msg: &str,
    fields: &[(&str, serde_json::Value)],
) -> String {
    let mut out = String::with_capacity(128 + msg.len());
    out.push_str("{\"level\":\"");
    out.push_str(level.as_str());
    out.push_str("\",\"ts\":\"");
    out.push_str(&format_ts(ts));
    out.push_str("\",\"caller\":");
    push_json_str(&mut out, caller);
    out.push_str(",\"msg\":");
    push_json_str(&mut out, msg);
    for (k, v) in fields {
        out.push(',');
        push_json_str(&mut out, k);
        out.push(':');
        let _ = write!(out, "{v}");
    }
    out.push_str("}\n");
    out
}

/// Writes one record if `level` is enabled. The macros call this; `caller` is already short.
pub fn log(level: LogLevel, caller: &str, msg: &str, fields: &[(&str, serde_json::Value)]) {
    if !enabled(level) {
        return;
    }
    let line = format_line(level, SystemTime::now(), caller, msg, fields);
    let guard = sinks().read().unwrap_or_else(|e| e.into_inner());
    for s in guard.iter() {
        s.write_line(line.as_bytes());
    }
}

/// Entry point of the macros.
#[doc(hidden)]
pub fn __emit(
    level: LogLevel,
    file: &str,
    module_path: &str,
    line: u32,
    msg: &str,
    fields: &[(&str, serde_json::Value)],
) {
    let caller = short_caller(file, module_path, line);
    log(level, &caller, msg, fields);
}

/// `log_at!(level, "msg", "key" => value, ...)`.
#[macro_export]
macro_rules! log_at {
    ($lvl:expr, $msg:expr $(, $k:expr => $v:expr)* $(,)?) => {{
        let __lvl: $crate::logging::LogLevel = $lvl;
        if $crate::logging::enabled(__lvl) {
            $crate::logging::__emit(
                __lvl,
                file!(),
                module_path!(),
                line!(),
                ::core::convert::AsRef::<str>::as_ref(&$msg),
                &[$(($k, $crate::logging::to_value(&$v))),*],
            );
        }
    }};
}

/// `log_debug!("msg", "key" => value, ...)`.
#[macro_export]
macro_rules! log_debug {
    ($($t:tt)*) => { $crate::log_at!($crate::logging::LogLevel::Debug, $($t)*) };
}

/// `log_info!("msg", "key" => value, ...)`.
#[macro_export]
macro_rules! log_info {
    ($($t:tt)*) => { $crate::log_at!($crate::logging::LogLevel::Info, $($t)*) };
}

/// `log_warn!("msg", "key" => value, ...)`.
#[macro_export]
macro_rules! log_warn {
    ($($t:tt)*) => { $crate::log_at!($crate::logging::LogLevel::Warn, $($t)*) };
}

/// `log_error!("msg", "key" => value, ...)`.
#[macro_export]
macro_rules! log_error {
    ($($t:tt)*) => { $crate::log_at!($crate::logging::LogLevel::Error, $($t)*) };
}

/// `log_panic!("msg", ...)`: logs at panic level, then panics with the message.
#[macro_export]
macro_rules! log_panic {
    ($msg:expr $(, $k:expr => $v:expr)* $(,)?) => {{
        $crate::log_at!($crate::logging::LogLevel::Panic, $msg $(, $k => $v)*);
        panic!("{}", ::core::convert::AsRef::<str>::as_ref(&$msg));
    }};
}

/// `log_fatal!("msg", ...)`: logs at fatal level, then exits the process with status 1.
#[macro_export]
macro_rules! log_fatal {
    ($msg:expr $(, $k:expr => $v:expr)* $(,)?) => {{
        $crate::log_at!($crate::logging::LogLevel::Fatal, $msg $(, $k => $v)*);
        ::std::process::exit(1)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ts_format() {
        let t = UNIX_EPOCH + Duration::from_micros(1_731_405_600_123_456);
        assert_eq!(format_ts(t), "2024-11-12T10:00:00.123456Z");
        assert_eq!(format_ts(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        // leap day
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(format_ts(t), "2000-02-29T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799); // 2099-12-31T23:59:59
        assert_eq!(format_ts(t), "2099-12-31T23:59:59.000000Z");
    }

    #[test]
    fn line_shape_and_key_order() {
        let t = UNIX_EPOCH + Duration::from_micros(1_731_405_600_123_456);
        let line = format_line(
            LogLevel::Info,
            t,
            "rusd/server.rs:42",
            "hello \"x\"",
            &[
                ("a", to_value(&1u64)),
                ("b", to_value(&vec!["x", "y"])),
                ("c", to_value("s")),
            ],
        );
        assert_eq!(
            line,
            "{\"level\":\"info\",\"ts\":\"2024-11-12T10:00:00.123456Z\",\"caller\":\"rusd/server.rs:42\",\"msg\":\"hello \\\"x\\\"\",\"a\":1,\"b\":[\"x\",\"y\"],\"c\":\"s\"}\n"
        );
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["msg"], "hello \"x\"");
    }

    #[test]
    fn caller_shortening() {
        assert_eq!(
            short_caller("src/server.rs", "rusd::server", 42),
            "rusd/server.rs:42"
        );
        assert_eq!(
            short_caller("src/kv/range.rs", "rusd::kv::range", 7),
            "kv/range.rs:7"
        );
        assert_eq!(
            short_caller("shards/src/lib.rs", "shards", 1),
            "shards/lib.rs:1"
        );
        assert_eq!(short_caller("main.rs", "x", 3), "main.rs:3");
    }

    #[test]
    fn level_parse() {
        assert_eq!(LogLevel::parse("debug").unwrap(), LogLevel::Debug);
        assert_eq!(LogLevel::parse("WARN").unwrap(), LogLevel::Warn);
        assert_eq!(LogLevel::parse("").unwrap(), LogLevel::Info);
        assert!(LogLevel::parse("Warn").is_err());
        assert!(LogLevel::parse("verbose").is_err());
        assert!(LogLevel::Debug < LogLevel::Info && LogLevel::Error < LogLevel::Fatal);
    }

    #[test]
    fn writes_to_file_with_filtering() {
        let dir = std::env::temp_dir().join(format!("rusd-logtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.json");
        let _ = std::fs::remove_file(&path);
        init(LogLevel::Warn, &[path.to_string_lossy().into_owned()]).unwrap();
        crate::log_info!("filtered out", "k" => 1);
        crate::log_warn!("kept", "k" => 2, "s" => "v");
        crate::log_error!(String::from("owned msg"));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    for j in 0..50 {
                        crate::log_warn!("thread", "i" => i, "j" => j, "pad" => "x".repeat(500));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        init(LogLevel::Info, &["stderr".to_string()]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // Other tests may log concurrently through the global logger: look at ours only.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("\"msg\":\"kept\"")
                    || l.contains("\"msg\":\"owned msg\"")
                    || l.contains("\"msg\":\"thread\"")
            })
            .collect();
        assert!(!text.contains("filtered out"));
        assert_eq!(lines.len(), 2 + 400);
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v["caller"].as_str().unwrap().contains(".rs:"));
        }
        assert!(lines[0].starts_with("{\"level\":\"warn\",\"ts\":\""));
        assert!(lines[0].ends_with("\"msg\":\"kept\",\"k\":2,\"s\":\"v\"}"));
        assert!(lines[1].contains("\"level\":\"error\""));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
