//! Runs the MVCC scenarios in tests/testdata/*.txt: readable text cases, one interpreter.
//!
//! A file is a sequence of cases. Each case is a command (with optional indented lines for a
//! txn), a `----` line, and the expected output up to a blank line. All cases in a file share
//! one store, and the interpreter keeps the current revision as the server does: writes go to
//! revision + 1 and only a write that changed something consumes it. `REWRITE=1` rewrites the
//! expected outputs instead of comparing them (review the diff!).
//!
//! Commands:
//!   put KEY VALUE [lease=N] [prev_kv] [ignore_value] [ignore_lease]
//!   delete KEY [END] [prev_kv]
//!   range KEY [END] [rev=N] [limit=N] [order=none|asc|desc] [target=key|version|create|mod|value]
//!         [keys_only] [count_only] [min_mod=N] [max_mod=N] [min_create=N] [max_create=N]
//!   compare KEY [END] TARGET OP OPERAND        (TARGET version|create|mod|value|lease, OP = != > <)
//!   txn                                        followed by lines `if COMPARE`, `then OP`, `else OP`
//!   compact N
//!   history KEY [END] from=N to=N
//!   retained                                   every version the store still holds
//!   state
//! END may be `-` for "no end", and `\0` for the zero byte.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use shards::*;

struct Interpreter {
    store: MvccStore,
    revision: i64,
}

fn unescape(text: &str) -> Bytes {
    match text {
        "-" => Bytes::new(),
        _ => Bytes::from(text.replace("\\0", "\0")),
    }
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\\0")
}

fn kv_line(kv: &KeyValue) -> String {
    format!(
        "{}={} create={} mod={} version={} lease={}",
        show(&kv.key),
        show(&kv.value),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease
    )
}

/// Splits `words` into positional arguments and `name[=value]` options.
fn split<'a>(words: &[&'a str]) -> (Vec<&'a str>, Vec<(&'a str, &'a str)>) {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    for word in words {
        match word.split_once('=') {
            Some((name, value))
                if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') =>
            {
                options.push((name, value))
            }
            _ if [
                "prev_kv",
                "ignore_value",
                "ignore_lease",
                "keys_only",
                "count_only",
            ]
            .contains(word) =>
            {
                options.push((word, "true"))
            }
            _ => positional.push(*word),
        }
    }
    (positional, options)
}

fn option<'a>(options: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|(option, _)| *option == name)
        .map(|(_, value)| *value)
}

fn number(options: &[(&str, &str)], name: &str) -> i64 {
    option(options, name).map_or(0, |value| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number"))
    })
}

fn flag(options: &[(&str, &str)], name: &str) -> bool {
    option(options, name).is_some()
}

fn parse_put(words: &[&str]) -> PutRequest {
    let (positional, options) = split(words);
    PutRequest {
        key: unescape(positional[0]),
        value: positional
            .get(1)
            .map_or_else(Bytes::new, |value| unescape(value)),
        lease: number(&options, "lease"),
        prev_kv: flag(&options, "prev_kv"),
        ignore_value: flag(&options, "ignore_value"),
        ignore_lease: flag(&options, "ignore_lease"),
    }
}

fn parse_delete(words: &[&str]) -> DeleteRangeRequest {
    let (positional, options) = split(words);
    DeleteRangeRequest {
        key: unescape(positional[0]),
        range_end: positional
            .get(1)
            .map_or_else(Bytes::new, |end| unescape(end)),
        prev_kv: flag(&options, "prev_kv"),
    }
}

fn parse_range(words: &[&str]) -> RangeRequest {
    let (positional, options) = split(words);
    RangeRequest {
        key: unescape(positional[0]),
        range_end: positional
            .get(1)
            .map_or_else(Bytes::new, |end| unescape(end)),
        limit: number(&options, "limit"),
        revision: number(&options, "rev"),
        sort_order: match option(&options, "order") {
            None | Some("none") => SortOrder::None,
            Some("asc") => SortOrder::Ascend,
            Some("desc") => SortOrder::Descend,
            Some(other) => panic!("unknown order {other}"),
        },
        sort_target: match option(&options, "target") {
            None | Some("key") => SortTarget::Key,
            Some("version") => SortTarget::Version,
            Some("create") => SortTarget::Create,
            Some("mod") => SortTarget::Mod,
            Some("value") => SortTarget::Value,
            Some(other) => panic!("unknown target {other}"),
        },
        keys_only: flag(&options, "keys_only"),
        count_only: flag(&options, "count_only"),
        min_mod_revision: number(&options, "min_mod"),
        max_mod_revision: number(&options, "max_mod"),
        min_create_revision: number(&options, "min_create"),
        max_create_revision: number(&options, "max_create"),
    }
}

fn parse_compare(words: &[&str]) -> Compare {
    let (key, rest) = (words[0], &words[1..]);
    let (range_end, rest) = if rest.len() == 4 {
        (unescape(rest[0]), &rest[1..])
    } else {
        (Bytes::new(), rest)
    };
    let operand = rest[2];
    let integer = || operand.parse::<i64>().expect("numeric operand");
    Compare {
        key: unescape(key),
        range_end,
        target: match rest[0] {
            "version" => CompareTarget::Version(integer()),
            "create" => CompareTarget::Create(integer()),
            "mod" => CompareTarget::Mod(integer()),
            "lease" => CompareTarget::Lease(integer()),
            "value" => CompareTarget::Value(if operand == "\"\"" {
                Bytes::new()
            } else {
                unescape(operand)
            }),
            other => panic!("unknown compare target {other}"),
        },
        result: match rest[1] {
            "=" => CompareResult::Equal,
            "!=" => CompareResult::NotEqual,
            ">" => CompareResult::Greater,
            "<" => CompareResult::Less,
            other => panic!("unknown compare result {other}"),
        },
    }
}

fn parse_op(words: &[&str]) -> RequestOp {
    match words[0] {
        "put" => RequestOp::Put(parse_put(&words[1..])),
        "delete" => RequestOp::DeleteRange(parse_delete(&words[1..])),
        "range" => RequestOp::Range(parse_range(&words[1..])),
        other => panic!("unknown txn op {other}"),
    }
}

fn error_text(error: &MvccError) -> String {
    format!("error: {error}\n")
}

fn write_range(out: &mut String, response: &RangeResponse, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}count={} more={}",
        response.count, response.more
    );
    for kv in &response.kvs {
        let _ = writeln!(out, "{indent}  {}", kv_line(kv));
    }
}

fn write_event(out: &mut String, event: &Event) {
    let kind = match event.kind {
        EventKind::Put => "put",
        EventKind::Delete => "delete",
    };
    let _ = write!(
        out,
        "{kind} {}.{} {}",
        event.kv.mod_revision,
        event.sub_revision,
        kv_line(&event.kv)
    );
    match &event.prev_kv {
        Some(prev) => {
            let _ = writeln!(out, " prev: {}", kv_line(prev));
        }
        None => out.push('\n'),
    }
}

fn write_response(out: &mut String, response: &ResponseOp, indent: &str) {
    match response {
        ResponseOp::Range(range) => {
            let _ = writeln!(out, "{indent}range:");
            write_range(out, range, &format!("{indent}  "));
        }
        ResponseOp::Put(put) => {
            let _ = writeln!(
                out,
                "{indent}put: prev={}",
                put.prev_kv.as_ref().map_or("none".to_owned(), kv_line)
            );
        }
        ResponseOp::DeleteRange(delete) => {
            let _ = writeln!(out, "{indent}delete: deleted={}", delete.deleted);
            for kv in &delete.prev_kvs {
                let _ = writeln!(out, "{indent}  prev: {}", kv_line(kv));
            }
        }
        ResponseOp::Txn(txn) => {
            let _ = writeln!(out, "{indent}txn: succeeded={}", txn.succeeded);
            for nested in &txn.responses {
                write_response(out, nested, &format!("{indent}  "));
            }
        }
    }
}

impl Interpreter {
    fn run(&mut self, command: &str, block: &[&str]) -> String {
        let words: Vec<&str> = command.split_whitespace().collect();
        let mut out = String::new();
        let next = self.revision + 1;
        match words[0] {
            "put" => match self.store.put(next, 0, &parse_put(&words[1..])) {
                Ok((response, _)) => {
                    self.revision = next;
                    let _ = writeln!(out, "revision={next}");
                    if let Some(prev) = response.prev_kv {
                        let _ = writeln!(out, "prev: {}", kv_line(&prev));
                    }
                }
                Err(error) => out = error_text(&error),
            },
            "delete" => {
                let (response, events) =
                    self.store.delete_range(next, 0, &parse_delete(&words[1..]));
                if !events.is_empty() {
                    self.revision = next;
                }
                let _ = writeln!(
                    out,
                    "deleted={} revision={}",
                    response.deleted, self.revision
                );
                for kv in &response.prev_kvs {
                    let _ = writeln!(out, "prev: {}", kv_line(kv));
                }
            }
            "range" => {
                let request = parse_range(&words[1..]);
                // The server resolves 0 to its current revision and rejects future ones.
                let revision = if request.revision == 0 {
                    self.revision
                } else {
                    request.revision
                };
                if revision > self.revision {
                    return error_text(&MvccError::FutureRevision);
                }
                match self.store.range(&request, revision) {
                    Ok(response) => write_range(&mut out, &response, ""),
                    Err(error) => out = error_text(&error),
                }
            }
            "compare" => {
                let compare = parse_compare(&words[1..]);
                let outcome = self.store.compare(&compare);
                let _ = writeln!(
                    out,
                    "keys_found={} all_true={} result={}",
                    outcome.keys_found,
                    outcome.all_true,
                    combine_compare(&compare, &[outcome])
                );
            }
            "txn" => {
                let mut request = TxnRequest::default();
                for line in block {
                    let line_words: Vec<&str> = line.split_whitespace().collect();
                    match line_words[0] {
                        "if" => request.compare.push(parse_compare(&line_words[1..])),
                        "then" => request.success.push(parse_op(&line_words[1..])),
                        "else" => request.failure.push(parse_op(&line_words[1..])),
                        other => panic!("unknown txn line {other}"),
                    }
                }
                match self.store.txn(next, &request) {
                    Ok(outcome) => {
                        if outcome.wrote {
                            self.revision = next;
                        }
                        let _ = writeln!(
                            out,
                            "succeeded={} revision={}",
                            outcome.response.succeeded, self.revision
                        );
                        for response in &outcome.response.responses {
                            write_response(&mut out, response, "  ");
                        }
                        for event in &outcome.events {
                            out.push_str("  event: ");
                            write_event(&mut out, event);
                        }
                    }
                    Err(error) => out = error_text(&error),
                }
            }
            "compact" => {
                let revision: i64 = words[1].parse().expect("compact revision");
                // The server's checks, as etcd's: not at or below the current one, not future.
                if revision <= self.store.compact_revision() {
                    return error_text(&MvccError::Compacted);
                }
                if revision > self.revision {
                    return error_text(&MvccError::FutureRevision);
                }
                self.store.compact(revision);
                let _ = writeln!(out, "compact_revision={}", self.store.compact_revision());
            }
            "history" => {
                let (positional, options) = split(&words[1..]);
                let end = positional
                    .get(1)
                    .map_or_else(Bytes::new, |end| unescape(end));
                let key = unescape(positional[0]);
                match self.store.history(
                    &key,
                    &end,
                    number(&options, "from"),
                    number(&options, "to"),
                ) {
                    Ok(events) => {
                        for event in &events {
                            write_event(&mut out, event);
                        }
                        if events.is_empty() {
                            out.push_str("no events\n");
                        }
                    }
                    Err(error) => out = error_text(&error),
                }
            }
            "retained" => {
                for event in self.store.retained_events() {
                    write_event(&mut out, &event);
                }
            }
            "state" => {
                let _ = writeln!(
                    out,
                    "revision={} last_revision={} compact_revision={} keys={}",
                    self.revision,
                    self.store.last_revision(),
                    self.store.compact_revision(),
                    self.store.key_count()
                );
            }
            other => panic!("unknown command {other}"),
        }
        out
    }
}

/// Runs one file; returns its text with the actual outputs in place of the expected ones.
fn run_file(text: &str) -> (String, Vec<String>) {
    let mut interpreter = Interpreter {
        store: MvccStore::new(),
        revision: 1,
    };
    let mut rewritten = String::new();
    let mut failures = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut at = 0;
    while at < lines.len() {
        let line = lines[at];
        if line.trim().is_empty() || line.starts_with('#') {
            rewritten.push_str(line);
            rewritten.push('\n');
            at += 1;
            continue;
        }
        let command = line;
        let command_line = at + 1;
        at += 1;
        let mut block = Vec::new();
        while at < lines.len() && lines[at] != "----" {
            block.push(lines[at].trim());
            at += 1;
        }
        assert!(
            at < lines.len(),
            "line {command_line}: `{command}` has no ---- line"
        );
        at += 1;
        let mut expected = String::new();
        while at < lines.len() && !lines[at].is_empty() {
            expected.push_str(lines[at]);
            expected.push('\n');
            at += 1;
        }
        let actual = interpreter.run(command, &block);
        if actual != expected {
            failures.push(format!(
                "line {command_line}: {command}\n--- expected\n{expected}--- actual\n{actual}"
            ));
        }
        rewritten.push_str(command);
        rewritten.push('\n');
        for block_line in &block {
            let _ = writeln!(rewritten, "  {block_line}");
        }
        rewritten.push_str("----\n");
        rewritten.push_str(&actual);
    }
    (rewritten, failures)
}

#[test]
fn testdata() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&directory)
        .expect("tests/testdata exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the testdata files, found {files:?}"
    );
    let rewrite = std::env::var_os("REWRITE").is_some();
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable testdata");
        let (rewritten, file_failures) = run_file(&text);
        if rewrite {
            std::fs::write(&path, rewritten).expect("writable testdata");
        } else {
            failures.extend(
                file_failures
                    .into_iter()
                    .map(|failure| format!("{}: {failure}", path.display())),
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
