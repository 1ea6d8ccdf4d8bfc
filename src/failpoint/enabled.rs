//! The live failpoints (feature `failpoints` only): terms set through gofail's controls are
//! checked, kept as typed for `GET`, and run by the `fail` crate; the `GOFAIL_HTTP` endpoint is
//! a plain thread with blocking sockets, outside the executors, so it answers even while a
//! `sleep` term holds a core.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::terms::{self, HttpError, REQUEST_HEAD_BYTES_MAX};
use super::{is_known, FAILPOINTS};

/// gofail's error texts, which harnesses print.
const NO_SUCH_FAILPOINT: &str = "failpoint: failpoint does not exist";
const FAILPOINT_DISABLED: &str = "failpoint: failpoint is disabled";

/// How long the endpoint waits for one request's bytes before it drops the connection.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The terms as they were set (gofail's text), by failpoint name.
fn active() -> &'static Mutex<BTreeMap<String, String>> {
    static ACTIVE: OnceLock<Mutex<BTreeMap<String, String>>> = OnceLock::new();
    ACTIVE.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Runs the failpoint `name` (see the `failpoint!` macro).
pub fn hit(name: &'static str) {
    // A `return` term fires without effect: etcd's failpoints at these names have no body.
    let _ = fail::eval(name, |_| ());
}

/// Enables `name` with a gofail term.
pub fn set(name: &str, term: &str) -> Result<(), String> {
    if !is_known(name) {
        return Err(NO_SUCH_FAILPOINT.to_string());
    }
    let parsed = terms::parse_terms(term).map_err(|e| e.to_string())?;
    let actions = terms::to_fail_actions(&parsed).map_err(|e| e.to_string())?;
    let mut active = active().lock().unwrap_or_else(|e| e.into_inner());
    fail::cfg(name, &actions)?;
    active.insert(name.to_string(), term.to_string());
    crate::log_warn!("failpoint enabled", "failpoint" => name, "term" => term);
    Ok(())
}

/// Disables `name`; an error if it is unknown or not enabled (as gofail answers).
pub fn unset(name: &str) -> Result<(), String> {
    if !is_known(name) {
        return Err(NO_SUCH_FAILPOINT.to_string());
    }
    let mut active = active().lock().unwrap_or_else(|e| e.into_inner());
    if active.remove(name).is_none() {
        return Err(FAILPOINT_DISABLED.to_string());
    }
    fail::remove(name);
    crate::log_info!("failpoint disabled", "failpoint" => name);
    Ok(())
}

/// The term `name` runs now, None when it is disabled; an error for an unknown name.
pub fn status(name: &str) -> Result<Option<String>, String> {
    if !is_known(name) {
        return Err(NO_SUCH_FAILPOINT.to_string());
    }
    let active = active().lock().unwrap_or_else(|e| e.into_inner());
    Ok(active.get(name).cloned())
}

/// Starts the endpoint on `address` (host:port) in its own thread.
pub fn serve_http(address: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(address)?;
    crate::log_info!("failpoint endpoint listening", "address" => address);
    std::thread::Builder::new()
        .name("gofail-http".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // One connection at a time: requests are rare and tiny.
                let _ = serve_connection(stream);
            }
        })?;
    Ok(())
}

/// One request per connection (answered with `Connection: close`).
fn serve_connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_READ_TIMEOUT))?;
    let (status, body) = match read_request(&mut stream) {
        Ok(request) => answer(&request.method, &request.key, &request.body),
        Err(RequestError::Http(e)) => (400, format!("{e}\n")),
        Err(RequestError::Io(e)) => return Err(e),
    };
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Not Implemented",
    };
    let mut response = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    if status == 405 {
        response.push_str("Allow: PUT\r\n");
    }
    if status != 204 {
        response.push_str(&format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    response.push_str("\r\n");
    if status != 204 {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

enum RequestError {
    Http(HttpError),
    Io(std::io::Error),
}

fn read_request(stream: &mut TcpStream) -> Result<terms::HttpRequest, RequestError> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = terms::head_end(&buffer) {
            break end;
        }
        if buffer.len() > REQUEST_HEAD_BYTES_MAX {
            return Err(RequestError::Http(HttpError::HeadTooLong));
        }
        let n = stream.read(&mut chunk).map_err(RequestError::Io)?;
        if n == 0 {
            return Err(RequestError::Http(HttpError::Malformed("incomplete head")));
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let (_, _, body_bytes) = terms::parse_head(&buffer[..head_end]).map_err(RequestError::Http)?;
    while buffer.len() < head_end + body_bytes {
        let n = stream.read(&mut chunk).map_err(RequestError::Io)?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    terms::parse_request(&buffer).map_err(RequestError::Http)
}

/// gofail's routes: `PUT /<name>` (body: the term), `PUT /failpoints` (body: `name=term;...`),
/// `GET /` (every failpoint as `name=term` lines, sorted), `GET /<name>`, `DELETE /<name>`.
/// `GET /<name>/count` is not kept (fail-rs does not report how often a term fired): 501.
pub fn answer(method: &str, key: &str, body: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(body);
    match method {
        "PUT" => {
            let items = if key.eq_ignore_ascii_case("failpoints") {
                match terms::parse_list(&text) {
                    Ok(items) => items,
                    Err(e) => return (400, format!("fail to parse failpoint: {e}\n")),
                }
            } else {
                vec![(key.to_string(), text.into_owned())]
            };
            for (name, term) in items {
                if let Err(e) = set(&name, &term) {
                    return (400, format!("fail to set failpoint: {e}\n"));
                }
            }
            (204, String::new())
        }
        "GET" if key.is_empty() => {
            let mut lines = String::new();
            for (name, _) in FAILPOINTS {
                let term = status(name).ok().flatten().unwrap_or_default();
                lines.push_str(&format!("{name}={term}\n"));
            }
            // gofail sorts the names.
            let mut sorted: Vec<&str> = lines.lines().collect();
            sorted.sort_unstable();
            (200, sorted.join("\n") + "\n")
        }
        "GET" if key.ends_with("/count") => (
            501,
            "failpoint execution counts are not kept by rusd\n".to_string(),
        ),
        "GET" => match status(key) {
            Ok(Some(term)) => (200, format!("{term}\n")),
            Ok(None) => (404, format!("failed to GET: {FAILPOINT_DISABLED}\n")),
            Err(e) => (404, format!("failed to GET: {e}\n")),
        },
        "DELETE" => match unset(key) {
            Ok(()) => (204, String::new()),
            Err(e) => (400, format!("failed to delete failpoint {e}\n")),
        },
        _ => (405, "Method not allowed\n".to_string()),
    }
}
