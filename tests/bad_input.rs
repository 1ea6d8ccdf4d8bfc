//! Bad input: junk bytes on the client port must not hurt the server; a corrupted WAL must stop
//! start-up with a clear error (no panic); a torn WAL tail must be cut off at start-up with every
//! acknowledged write before it kept. Each test runs with `--shards 1` and `--shards 2`.
//!
//! The WAL tests read etcd's record framing (src/etcdfmt/walpb.rs): an 8-byte little-endian
//! length field (padding in its top byte), then `walpb.Record{type = 1, crc = 2, data = 3}`
//! and zero padding to 8 bytes; types 1 = metadata, 2 = raft entry, 3 = hard state, 4 = CRC,
//! 5 = snapshot. Files are preallocated: the records end at the first zero length field.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{b, each_shards, Client, Rng, Server};

const HEADER: usize = 8;
const TYPE_ENTRY: u8 = 2;

/// (offset, record length, type) of every whole record, up to the zeroed end; panics on a
/// frame that runs past the end of the file.
fn records(data: &[u8]) -> Vec<(usize, usize, u8)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + HEADER <= data.len() {
        let field = u64::from_le_bytes(data[off..off + 8].try_into().unwrap());
        if field == 0 {
            break;
        }
        let len = (field & !(0xff << 56)) as usize;
        let padding = if field >> 63 == 1 {
            ((field >> 56) & 7) as usize
        } else {
            0
        };
        assert!(
            off + HEADER + len + padding <= data.len(),
            "torn record at {off}"
        );
        // The record's first field is its type: 0x08, then the type as a one-byte varint.
        out.push((off, len, data[off + HEADER + 1]));
        off += HEADER + len + padding;
    }
    out
}

/// Where the records end (the zeroed, preallocated rest follows).
fn records_end(recs: &[(usize, usize, u8)]) -> usize {
    let (off, len, _) = *recs.last().unwrap();
    (off + HEADER + len).div_ceil(8) * 8
}

fn the_wal(srv: &Server) -> PathBuf {
    let files = srv.wal_files();
    assert!(
        !files.is_empty(),
        "no WAL file in {}",
        srv.wal_dir().display()
    );
    files.last().unwrap().clone()
}

/// `n` sequential puts `k000..`, each acknowledged; returns (key, value, revision).
async fn acked_puts(c: &mut Client, n: usize) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for i in 0..n {
        let k = format!("k{i:03}");
        let v = format!("value-{i}-{}", "x".repeat(i % 50));
        let rev = c.put_rev(&k, &v).await;
        out.push((k, v, rev));
    }
    out
}

/// Asserts that the keys are present with their values and revisions.
async fn assert_present(c: &mut Client, puts: &[(String, String, i64)], what: &str) {
    for (k, v, rev) in puts {
        let kv = c
            .get(k)
            .await
            .unwrap_or_else(|| panic!("{what}: acknowledged {k} (revision {rev}) is missing"));
        assert_eq!(
            (&kv.value, kv.mod_revision),
            (&b(v), *rev),
            "{what}: key {k}"
        );
    }
}

fn flip(path: &Path, offset: usize, mask: u8) {
    let mut data = std::fs::read(path).unwrap();
    data[offset] ^= mask;
    std::fs::write(path, &data).unwrap();
}

/// The start-up refused: non-zero exit (not a signal, not a panic), a log naming the WAL file and
/// the offset.
#[track_caller]
fn assert_clean_refusal(f: &common::StartFailure, wal: &Path, offset: usize) {
    let status = f
        .status
        .unwrap_or_else(|| panic!("the server hung instead of refusing; log:\n{}", f.log));
    assert!(
        status.code().is_some_and(|c| c != 0),
        "expected a non-zero exit code, got {status:?}; log:\n{}",
        f.log
    );
    assert!(
        !f.log.contains("panicked") && !f.log.contains("RUST_BACKTRACE"),
        "start-up panicked instead of reporting the corruption:\n{}",
        f.log
    );
    let name = wal.file_name().unwrap().to_string_lossy();
    assert!(
        f.log.contains(name.as_ref()),
        "the error does not name the WAL file {name}:\n{}",
        f.log
    );
    assert!(
        f.log.contains(&format!("offset {offset}")),
        "the error does not name the offset {offset}:\n{}",
        f.log
    );
}

#[test]
fn junk_on_the_client_port_does_not_hurt() {
    each_shards(|shards| async move {
        let mut srv = Server::start(shards);
        let mut c = srv.client().await;
        c.put("before", "1").await;
        let addr = srv.endpoint();
        let mut rng = Rng::new(0x0bad_10b5 + shards as u64);
        let junk =
            |rng: &mut Rng, n: usize| -> Vec<u8> { (0..n).map(|_| rng.next_u64() as u8).collect() };
        let send = |bytes: &[u8], hold: bool| {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let _ = s.write_all(bytes);
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            if hold {
                Some(s)
            } else {
                None
            }
        };
        let mut held = Vec::new();
        // Random bytes, large and small.
        for n in [1, 7, 100, 4096, 64 * 1024] {
            send(&junk(&mut rng, n), false);
        }
        // An HTTP/2 preface followed by garbage frames; a bogus frame header claiming a huge
        // length; HTTP/1 nonsense; a TLS-looking first byte followed by junk.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut p = preface.clone();
        p.extend(junk(&mut rng, 1000));
        send(&p, false);
        let mut p = preface.clone();
        p.extend([0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]);
        p.extend(junk(&mut rng, 100));
        send(&p, false);
        send(
            b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\nContent-Length: -5\r\n\r\n",
            false,
        );
        send(b"POST /etcdserverpb.KV/Put HTTP/1.1\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false);
        let mut tls = vec![0x16, 0x03, 0x01, 0x02, 0x00];
        tls.extend(junk(&mut rng, 600));
        send(&tls, false);
        // Connections that stay open, half-sent.
        held.extend(send(&preface[..10], true));
        held.extend(send(b"GET /version HTTP/1.1\r\nHost: x\r\n", true));
        held.extend(send(&junk(&mut rng, 3), true));
        // Many connect/close cycles.
        for _ in 0..200 {
            drop(TcpStream::connect(&addr).expect("connect"));
        }

        assert!(srv.is_running(), "the server died; log:\n{}", srv.log());
        // The existing connection and new ones still work.
        c.put("after", "2").await;
        assert_eq!(c.get("before").await.unwrap().value, b("1"));
        let mut c2 = srv.client().await;
        assert_eq!(c2.get("after").await.unwrap().value, b("2"));
        assert_eq!(srv.etcdctl(&["get", "after"]).ok(), "after\n2\n");
        assert_eq!(c2.revision().await, 3);
        drop(held);
    });
}

#[test]
fn corrupt_wal_record_stops_startup_with_a_clear_error() {
    each_shards(|shards| async move {
        let mut srv = Server::start(shards);
        let mut c = srv.client().await;
        let puts = acked_puts(&mut c, 40).await;
        srv.kill();
        let wal = the_wal(&srv);
        let pristine = std::fs::read(&wal).unwrap();
        let recs = records(&pristine);

        let end = records_end(&recs);
        // One bit of a payload in the middle of the records.
        let mid = recs
            .iter()
            .find(|(off, len, kind)| off + HEADER + len >= end / 2 && *kind == TYPE_ENTRY)
            .copied()
            .unwrap();
        let offset = mid.0 + HEADER + mid.1 / 2;
        flip(&wal, offset, 0x10);
        let f = srv.restart_expecting_failure();
        assert_clean_refusal(&f, &wal, mid.0);
        // The failed start-up did not "repair" the file.
        let mut corrupted = pristine.clone();
        corrupted[offset] ^= 0x10;
        assert_eq!(
            std::fs::read(&wal).unwrap(),
            corrupted,
            "a refused start-up changed the WAL"
        );

        // A flipped checksum byte (the record's second field: 0x10, then the CRC), and a
        // flipped type byte, are caught the same way.
        std::fs::write(&wal, &pristine).unwrap();
        flip(&wal, mid.0 + HEADER + 3, 0x01);
        assert_clean_refusal(&srv.restart_expecting_failure(), &wal, mid.0);
        std::fs::write(&wal, &pristine).unwrap();
        flip(&wal, mid.0 + HEADER + 1, 0x02);
        assert_clean_refusal(&srv.restart_expecting_failure(), &wal, mid.0);

        // The byte in the exact middle of the records, whatever it belongs to.
        std::fs::write(&wal, &pristine).unwrap();
        let mut middle = end / 2;
        let rec = recs
            .iter()
            .find(|(off, len, _)| middle < (off + HEADER + len).div_ceil(8) * 8)
            .copied()
            .unwrap();
        if middle < rec.0 + HEADER {
            // A length field: that case has a test of its own; take the checksum instead.
            middle = rec.0 + HEADER + 3;
        } else if middle >= rec.0 + HEADER + rec.1 {
            // Padding, which no checksum covers (nor etcd's): take the record's last byte.
            middle = rec.0 + HEADER + rec.1 - 1;
        }
        flip(&wal, middle, 0x80);
        assert_clean_refusal(&srv.restart_expecting_failure(), &wal, rec.0);

        // Put back, the WAL is fine again and nothing was lost.
        std::fs::write(&wal, &pristine).unwrap();
        srv.restart();
        let mut c = srv.client().await;
        assert_present(&mut c, &puts, "after undoing the corruption").await;
    });
}

/// A record in the middle whose length field is damaged so that it seems to run past the end
/// of the file looks like a torn write, but it is not the last write: the records after it hold
/// acknowledged writes. Start-up must refuse rather than cut them off.
#[test]
fn corrupt_length_in_the_middle_is_not_taken_for_a_torn_tail() {
    each_shards(|shards| async move {
        let mut srv = Server::start(shards);
        let mut c = srv.client().await;
        let puts = acked_puts(&mut c, 40).await;
        srv.kill();
        let wal = the_wal(&srv);
        let pristine = std::fs::read(&wal).unwrap();
        let recs = records(&pristine);
        let mid = recs[recs.len() / 2];
        assert!(recs.len() > 10, "expected many records, got {}", recs.len());
        // Bit 17 of the length: the record now claims ~128 KiB more than the file holds.
        flip(&wal, mid.0 + 2, 0x02);
        match srv.try_restart() {
            Err(f) => assert_clean_refusal(&f, &wal, mid.0),
            Ok(()) => {
                let mut c = srv.client().await;
                assert_present(&mut c, &puts, "after a corrupt length field").await;
            }
        }
    });
}

#[test]
fn torn_wal_tail_is_cut_and_acknowledged_writes_survive() {
    each_shards(|shards| async move {
        // How much of the last record to cut: a few bytes, most of the payload, all but part
        // of the header.
        for cut in ["3 bytes", "half the last record", "all but 4 header bytes"] {
            let mut srv = Server::start(shards);
            let mut c = srv.client().await;
            let puts = acked_puts(&mut c, 30).await;
            srv.kill();
            let wal = the_wal(&srv);
            let data = std::fs::read(&wal).unwrap();
            let recs = records(&data);
            let last = *recs.last().unwrap();
            let keep = match cut {
                "3 bytes" => last.0 + HEADER + last.1 - 3,
                "half the last record" => last.0 + (HEADER + last.1) / 2,
                _ => last.0 + 4,
            };
            std::fs::write(&wal, &data[..keep]).unwrap();

            srv.restart();
            let mut c = srv.client().await;
            // Only the write in the torn record (if it was an entry) may be gone.
            let may_lose_last = last.2 == TYPE_ENTRY;
            let must = if may_lose_last {
                &puts[..puts.len() - 1]
            } else {
                &puts[..]
            };
            assert_present(&mut c, must, cut).await;
            let (lk, lv, lrev) = puts.last().unwrap();
            let last_present = match c.get(lk).await {
                Some(kv) => {
                    assert_eq!((&kv.value, kv.mod_revision), (&b(lv), *lrev), "{cut}");
                    true
                }
                None => false,
            };
            let expected_rev = if last_present { *lrev } else { lrev - 1 };
            assert_eq!(c.revision().await, expected_rev, "{cut}");

            // The WAL goes on from the cut, and what is written now survives a restart too.
            let more = vec![(
                "after-cut".to_string(),
                "1".to_string(),
                c.put_rev("after-cut", "1").await,
            )];
            assert_eq!(more[0].2, expected_rev + 1, "{cut}");
            srv.kill();
            srv.restart();
            let mut c = srv.client().await;
            assert_present(&mut c, must, cut).await;
            assert_present(&mut c, &more, cut).await;
            assert_eq!(c.revision().await, expected_rev + 1, "{cut}");
        }
    });
}

/// Discovery is not implemented: a member given `--discovery` or `--discovery-srv` must stop
/// with a clear error, not start alone from the default `--initial-cluster`.
#[test]
fn discovery_flags_stop_start_up_instead_of_a_lone_member() {
    for flag in ["--discovery-srv", "--discovery"] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("d");
        let value = if flag == "--discovery" {
            "https://discovery.example.com/abc"
        } else {
            "example.com"
        };
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rusd"))
            .args([flag, value, "--data-dir"])
            .arg(&data_dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: the member started");
        assert!(
            stderr.contains("rusd does not implement cluster discovery"),
            "{flag}: {stderr}"
        );
        assert!(!data_dir.exists(), "{flag}: a data dir was created");
    }
}
