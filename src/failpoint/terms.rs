//! gofail's languages, parsed without side effects: failpoint terms (`10.0%2*sleep("1s")->off`),
//! `name=term;name=term` lists (`GOFAIL_FAILPOINTS`, `PUT /failpoints`), and the HTTP/1.1
//! requests of the `GOFAIL_HTTP` endpoint. Always compiled (it is small and pure), so the
//! fuzz tests reach it in every build; only `failpoint::enabled` acts on what it returns.

use std::fmt;
use std::time::Duration;

/// Longest term text accepted: terms are typed by people and test harnesses.
pub const TERM_BYTES_MAX: usize = 4096;
/// Longest request head (request line and headers) the endpoint reads.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Longest request body the endpoint reads.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// What one term does when it fires.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Off,
    /// gofail's `return(v)`: etcd's failpoints at rusd's names have no body, so the value only
    /// counts as "fired".
    Return(Option<Value>),
    Sleep(Duration),
    Panic(Option<String>),
    Print,
}

/// A term's argument, as gofail reads it: a Go-quoted string, an integer or a boolean.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(String),
    Integer(i64),
    Boolean(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(s) => write!(f, "{s}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Boolean(b) => write!(f, "{b}"),
        }
    }
}

/// One term of a chain: fires with `probability_percent` (always when None), at most `count`
/// times (unbounded when None).
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    pub probability_percent: Option<f64>,
    pub count: Option<u64>,
    pub action: Action,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum TermError {
    #[error("failpoint: could not parse terms: empty")]
    Empty,
    #[error("failpoint: could not parse terms: longer than {TERM_BYTES_MAX} bytes")]
    TooLong,
    #[error("failpoint: could not parse terms {text:?} past {rest:?}: {why}")]
    Syntax {
        text: String,
        rest: String,
        why: &'static str,
    },
}

fn syntax(text: &str, rest: &str, why: &'static str) -> TermError {
    TermError::Syntax {
        text: text.to_string(),
        rest: rest.to_string(),
        why,
    }
}

/// Parses a chain of terms separated by `->`, as gofail does, with two stricter rules:
/// at most one probability and one count per term, and `sleep` needs a duration. A
/// probability may be written `10%` as well as gofail's `10.0%`.
pub fn parse_terms(text: &str) -> Result<Vec<Term>, TermError> {
    if text.is_empty() {
        return Err(TermError::Empty);
    }
    if text.len() > TERM_BYTES_MAX {
        return Err(TermError::TooLong);
    }
    let mut terms = Vec::new();
    let mut rest = text;
    loop {
        let (term, after) = parse_term(text, rest)?;
        terms.push(term);
        if after.is_empty() {
            return Ok(terms);
        }
        rest = after
            .strip_prefix("->")
            .ok_or_else(|| syntax(text, after, "expected \"->\""))?;
    }
}

fn parse_term<'a>(text: &str, mut rest: &'a str) -> Result<(Term, &'a str), TermError> {
    let mut probability_percent = None;
    let mut count = None;
    // Modifiers: numbers followed by '%' (a probability) or '*' (a count).
    loop {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            break;
        }
        let number = &rest[..digits];
        match rest[digits..].chars().next() {
            Some('%') => {
                if probability_percent.is_some() {
                    return Err(syntax(text, rest, "more than one probability"));
                }
                let p: f64 = number
                    .parse()
                    .map_err(|_| syntax(text, rest, "bad probability"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(syntax(text, rest, "probability outside 0..100"));
                }
                probability_percent = Some(p);
            }
            Some('*') => {
                if count.is_some() {
                    return Err(syntax(text, rest, "more than one count"));
                }
                let n: u64 = number
                    .parse()
                    .map_err(|_| syntax(text, rest, "bad count"))?;
                count = Some(n);
            }
            _ => return Err(syntax(text, rest, "a number must be followed by % or *")),
        }
        rest = &rest[digits + 1..];
    }
    let word_end = rest
        .find(|c: char| !c.is_ascii_lowercase())
        .unwrap_or(rest.len());
    let word = &rest[..word_end];
    rest = &rest[word_end..];
    let (value, after) = parse_value(text, rest)?;
    let action = match (word, value) {
        ("off", None) => Action::Off,
        ("return", v) => Action::Return(v),
        ("print", None) => Action::Print,
        ("panic", None) => Action::Panic(None),
        ("panic", Some(v)) => Action::Panic(Some(v.to_string())),
        ("sleep", Some(Value::Integer(ms))) if ms >= 0 => {
            Action::Sleep(Duration::from_millis(ms as u64))
        }
        ("sleep", Some(Value::Text(d))) => Action::Sleep(
            parse_go_duration(&d).ok_or_else(|| syntax(text, rest, "bad sleep duration"))?,
        ),
        ("sleep", _) => return Err(syntax(text, rest, "sleep needs a duration")),
        ("off" | "print", Some(_)) => return Err(syntax(text, rest, "takes no argument")),
        ("break", _) => return Err(syntax(text, rest, "break (gdb) is not supported")),
        _ => return Err(syntax(text, rest, "unknown action")),
    };
    Ok((
        Term {
            probability_percent,
            count,
            action,
        },
        after,
    ))
}

/// An optional `(...)` argument: `()`, a Go-quoted string, an integer or a boolean.
fn parse_value<'a>(text: &str, rest: &'a str) -> Result<(Option<Value>, &'a str), TermError> {
    let Some(inner) = rest.strip_prefix('(') else {
        return Ok((None, rest));
    };
    if let Some(after) = inner.strip_prefix(')') {
        return Ok((None, after));
    }
    if inner.starts_with('"') {
        let (s, after) = parse_go_string(inner).ok_or_else(|| syntax(text, rest, "bad string"))?;
        let after = after
            .strip_prefix(')')
            .ok_or_else(|| syntax(text, rest, "expected \")\""))?;
        return Ok((Some(Value::Text(s)), after));
    }
    let close = inner
        .find(')')
        .ok_or_else(|| syntax(text, rest, "expected \")\""))?;
    let raw = &inner[..close];
    let value = if let Ok(i) = raw.parse::<i64>() {
        Value::Integer(i)
    } else if raw == "true" || raw == "false" {
        Value::Boolean(raw == "true")
    } else {
        return Err(syntax(text, rest, "bad argument"));
    };
    Ok((Some(value), &inner[close + 1..]))
}

/// A double-quoted Go string with the common escapes; returns it and what follows it.
fn parse_go_string(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => {
                let (_, e) = chars.next()?;
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '\\' => '\\',
                    '"' => '"',
                    '\'' => '\'',
                    _ => return None,
                });
            }
            '\n' => return None,
            c => out.push(c),
        }
    }
    None
}

/// Go's `time.ParseDuration` for non-negative durations: `1s`, `1.5s`, `100ms`, `2m30s`, `0`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total_ns: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total_ns += number * unit_ns;
    }
    // Go's limit: about 290 years.
    (total_ns.is_finite() && total_ns <= i64::MAX as f64)
        .then(|| Duration::from_nanos(total_ns as u64))
}

/// The same chain in fail-rs's syntax (`[p%][cnt*]task[(arg)]`, joined by `->`). Strings
/// that fail-rs's parser would split (`->`, parentheses) are refused here.
pub fn to_fail_actions(terms: &[Term]) -> Result<String, TermError> {
    let mut out = Vec::with_capacity(terms.len());
    for term in terms {
        let mut s = String::new();
        if let Some(p) = term.probability_percent {
            s.push_str(&format!("{p}%"));
        }
        if let Some(n) = term.count {
            s.push_str(&format!("{n}*"));
        }
        let argument = |v: &str| -> Result<String, TermError> {
            if v.contains("->") || v.contains('(') || v.contains(')') {
                return Err(syntax(
                    v,
                    v,
                    "an argument may not hold \"->\" or parentheses",
                ));
            }
            Ok(format!("({v})"))
        };
        match &term.action {
            Action::Off => s.push_str("off"),
            Action::Return(None) => s.push_str("return"),
            Action::Return(Some(v)) => s.push_str(&format!("return{}", argument(&v.to_string())?)),
            // fail-rs sleeps whole milliseconds; a shorter non-zero sleep becomes 1 ms.
            Action::Sleep(d) => {
                let mut ms = d.as_millis();
                if ms == 0 && !d.is_zero() {
                    ms = 1;
                }
                s.push_str(&format!("sleep({ms})"));
            }
            Action::Panic(None) => s.push_str("panic"),
            Action::Panic(Some(m)) => s.push_str(&format!("panic{}", argument(m)?)),
            Action::Print => s.push_str("print"),
        }
        out.push(s);
    }
    Ok(out.join("->"))
}

/// `name=term;name=term` (gofail's `parseFailpoints`): empty items are skipped; an item
/// without exactly one `=` is an error.
pub fn parse_list(list: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in list.split(';').filter(|i| !i.is_empty()) {
        let parts: Vec<&str> = item.split('=').collect();
        let [name, term] = parts.as_slice() else {
            return Err(format!("bad failpoint {item:?}"));
        };
        out.push((name.to_string(), term.to_string()));
    }
    Ok(out)
}

/// One request to the `GOFAIL_HTTP` endpoint.
#[derive(Debug, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    /// The request target without its leading `/` (gofail's key).
    pub key: String,
    pub body: Vec<u8>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum HttpError {
    #[error("request head longer than {REQUEST_HEAD_BYTES_MAX} bytes")]
    HeadTooLong,
    #[error("request body longer than {REQUEST_BODY_BYTES_MAX} bytes")]
    BodyTooLong,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("chunked request bodies are not supported; send Content-Length")]
    Chunked,
}

/// Where the head ends in `buffer` (the index after the blank line), if it is complete.
pub fn head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Parses a request head (through the blank line): the method, the key, and the body's length.
pub fn parse_head(head: &[u8]) -> Result<(String, String, usize), HttpError> {
    if head.len() > REQUEST_HEAD_BYTES_MAX {
        return Err(HttpError::HeadTooLong);
    }
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines
        .next()
        .ok_or(HttpError::Malformed("no request line"))?;
    let mut words = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(HttpError::Malformed("bad request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("bad method"));
    }
    // gofail's "malformed request URI": the key is the request target after its '/'.
    let key = target
        .strip_prefix('/')
        .ok_or(HttpError::Malformed("malformed request URI"))?;
    let mut body_bytes = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("bad header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            body_bytes = value
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length"))?;
            if body_bytes > REQUEST_BODY_BYTES_MAX {
                return Err(HttpError::BodyTooLong);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(HttpError::Chunked);
        }
    }
    Ok((method.to_string(), key.to_string(), body_bytes))
}

/// Parses a whole request held in memory (head and body), as the fuzz tests drive it.
pub fn parse_request(bytes: &[u8]) -> Result<HttpRequest, HttpError> {
    let end = head_end(bytes).ok_or(HttpError::Malformed("incomplete head"))?;
    let (method, key, body_bytes) = parse_head(&bytes[..end])?;
    let body = bytes
        .get(end..end + body_bytes)
        .ok_or(HttpError::Malformed("body shorter than Content-Length"))?;
    Ok(HttpRequest {
        method,
        key,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terms_the_robustness_suite_sends() {
        assert_eq!(
            parse_terms("panic").unwrap(),
            vec![Term {
                probability_percent: None,
                count: None,
                action: Action::Panic(None)
            }]
        );
        let sleep = parse_terms("sleep(\"1s\")").unwrap();
        assert_eq!(sleep[0].action, Action::Sleep(Duration::from_secs(1)));
        assert_eq!(to_fail_actions(&sleep).unwrap(), "sleep(1000)");
        assert_eq!(
            parse_terms("sleep(250)").unwrap()[0].action,
            Action::Sleep(Duration::from_millis(250))
        );
        assert_eq!(
            to_fail_actions(&parse_terms("50.0%2*return(true)->off").unwrap()).unwrap(),
            "50%2*return(true)->off"
        );
        assert_eq!(
            to_fail_actions(&parse_terms("panic(\"boom\")").unwrap()).unwrap(),
            "panic(boom)"
        );
    }

    #[test]
    fn bad_terms_are_refused_with_a_reason() {
        for bad in [
            "",
            "panik",
            "sleep",
            "sleep(\"1 fortnight\")",
            "2*3*panic",
            "150%panic",
            "panic->",
            "panic(\"a->b\")x",
            "5panic",
            "break",
            "off(1)",
        ] {
            assert!(parse_terms(bad).is_err(), "{bad:?} was accepted");
        }
        let long = "off->".repeat(1000) + "off";
        assert_eq!(parse_terms(&long), Err(TermError::TooLong));
        let arrow = parse_terms("panic(\"a->b\")").unwrap();
        assert!(to_fail_actions(&arrow).is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("2m30s"), Some(Duration::from_secs(150)));
        assert_eq!(parse_go_duration("100us"), Some(Duration::from_micros(100)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("-1s"), None);
    }

    #[test]
    fn lists_and_requests() {
        assert_eq!(
            parse_list("a=panic;;b=sleep(1)").unwrap(),
            vec![
                ("a".to_string(), "panic".to_string()),
                ("b".to_string(), "sleep(1)".to_string())
            ]
        );
        assert!(parse_list("a=b=c").is_err());
        let r = parse_request(
            b"PUT /raftBeforeSave HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\npanic",
        )
        .unwrap();
        assert_eq!(
            (r.method.as_str(), r.key.as_str()),
            ("PUT", "raftBeforeSave")
        );
        assert_eq!(r.body, b"panic");
        assert_eq!(
            parse_request(b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::Chunked)
        );
        assert_eq!(
            parse_request(b"PUT /x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Err(HttpError::BodyTooLong)
        );
    }
}
