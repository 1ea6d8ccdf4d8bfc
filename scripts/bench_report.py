#!/usr/bin/env python3
"""Helpers for scripts/bench-vs-etcd.sh (python3 stdlib only).

Subcommands:
  fsync DIR [--n 500] [--out FILE]
      fdatasync latency on DIR's disk: N x (write 4 KiB + os.fdatasync), once overwriting
      already-written blocks, once appending to a growing file. Prints/writes JSON.
  wait-ready --log LOG --pid PID --start-ns NS [--timeout S]
      Wait until LOG has the line "ready to serve client requests"; print the seconds from
      NS (the exec time, `date +%s%N`) to that line (from the line's "ts" field when it has
      one, else from when the line was seen). Exit 1 if PID dies or on timeout.
  machine DIR [--out FILE]
      Machine facts (nproc, kernel, CPU, memory, the disk that holds DIR) as JSON.
  perf-fold FILE
      Coarse buckets (HTTP/2, raft, shard, executor parking, io-wq fsync, ...) of a rusd
      profile: FILE = `perf script --no-inline -F comm,ip,sym` of a `perf record -g` run.
  parse FILE
      Parse one `benchmark` output (Summary + Latency distribution) and print it as JSON.
  report RESULTS_DIR [--out docs/benchmarks.md]
      Build the results table from RESULTS_DIR and write it between the
      <!-- BEGIN GENERATED --> / <!-- END GENERATED --> markers of --out (the rest of the
      file, e.g. hand-written profiling notes, is kept). Prints the table to stdout as well.
"""

import argparse
import datetime as _dt
import glob
import json
import os
import re
import statistics
import sys
import time

READY_LINE = "ready to serve client requests"
BEGIN = "<!-- BEGIN GENERATED (scripts/bench-vs-etcd.sh; do not edit by hand) -->"
END = "<!-- END GENERATED -->"


# ---------------------------------------------------------------------------------------------
# fsync
# ---------------------------------------------------------------------------------------------

def _fsync_loop(path, n, overwrite):
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o644)
    buf = os.urandom(4096)
    lat = []
    try:
        if overwrite:
            # Pre-write the blocks that will be overwritten, so that fdatasync only has data
            # to flush (no size or extent change): the floor for a WAL on preallocated,
            # zero-filled segments.
            for i in range(64):
                os.pwrite(fd, buf, i * 4096)
            os.fsync(fd)
        for i in range(n):
            off = (i % 64) * 4096 if overwrite else i * 4096
            t = time.perf_counter()
            os.pwrite(fd, buf, off)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
    lat.sort()
    return {
        "n": n,
        "median_s": statistics.median(lat),
        "p90_s": lat[int(0.90 * (n - 1))],
        "p99_s": lat[int(0.99 * (n - 1))],
        "ceiling_ops": 1.0 / statistics.median(lat),
    }


def cmd_fsync(a):
    os.makedirs(a.dir, exist_ok=True)
    path = os.path.join(a.dir, ".fsync-probe.%d" % os.getpid())
    res = {
        "dir": os.path.abspath(a.dir),
        "overwrite": _fsync_loop(path, a.n, True),
        "append": _fsync_loop(path, a.n, False),
    }
    out = json.dumps(res, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out + "\n")
    ow, ap = res["overwrite"], res["append"]
    print("fdatasync 4 KiB (n=%d): overwrite median %.3f ms -> put-1 ceiling %.0f ops/s; "
          "append median %.3f ms -> %.0f ops/s"
          % (a.n, ow["median_s"] * 1e3, ow["ceiling_ops"], ap["median_s"] * 1e3,
             ap["ceiling_ops"]))


# ---------------------------------------------------------------------------------------------
# wait-ready
# ---------------------------------------------------------------------------------------------

def _parse_ts(s):
    # "2026-11-25T17:38:17.306194Z" (zap ISO8601, UTC)
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z$", s)
    if not m:
        return None
    y, mo, d, h, mi, sec, frac = m.groups()
    base = _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(sec),
                        tzinfo=_dt.timezone.utc).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read().rsplit(")", 1)[1].split()[0]
        return st not in ("Z", "X")
    except OSError:
        return False


def cmd_wait_ready(a):
    start = a.start_ns / 1e9
    deadline = time.monotonic() + a.timeout
    pos = 0
    buf = ""
    while True:
        seen = time.time()
        try:
            with open(a.log, "r", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
        except FileNotFoundError:
            chunk = ""
        buf += chunk
        lines = buf.split("\n")
        buf = lines.pop()  # incomplete tail
        for line in lines:
            if READY_LINE in line:
                t = None
                try:
                    t = _parse_ts(json.loads(line).get("ts", ""))
                except (ValueError, AttributeError):
                    pass
                if t is None or t < start - 1:
                    t = seen
                print("%.4f" % (t - start))
                return 0
        if not _alive(a.pid):
            print("wait-ready: server (pid %d) exited before it was ready" % a.pid,
                  file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print("wait-ready: timed out after %ss" % a.timeout, file=sys.stderr)
            return 1
        time.sleep(0.002)


# ---------------------------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------------------------

def _read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _disk_of(path):
    """(mount source, fstype, /sys/block name) of the filesystem holding path."""
    path = os.path.realpath(path)
    best = None
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        src, mnt, fstype = parts[0], parts[1].replace("\\040", " "), parts[2]
        if path == mnt or path.startswith(mnt.rstrip("/") + "/") or mnt == "/":
            if best is None or len(mnt) >= len(best[1]):
                best = (src, mnt, fstype)
    if best is None:
        return None, None, None, None
    src, mnt, fstype = best
    block = None
    if src.startswith("/dev/"):
        name = os.path.basename(os.path.realpath(src))
        if os.path.exists("/sys/block/%s" % name):
            block = name
        else:  # a partition: /sys/class/block/<part>/.. is the disk
            p = os.path.realpath("/sys/class/block/%s" % name)
            parent = os.path.basename(os.path.dirname(p))
            if os.path.exists("/sys/block/%s" % parent):
                block = parent
    return src, mnt, fstype, block


VIRTIO_VENDOR = {"0x1af4": "virtio (Red Hat/QEMU)"}


def machine_info(d):
    src, mnt, fstype, block = _disk_of(d)
    disk = {"data_dir": os.path.realpath(d), "mount": mnt, "source": src, "fstype": fstype}
    if block:
        sysb = "/sys/block/%s" % block
        rot = _read(sysb + "/queue/rotational")
        vendor = _read(sysb + "/device/vendor")
        disk.update({
            "block": block,
            "model": _read(sysb + "/device/model") or None,
            "vendor": VIRTIO_VENDOR.get(vendor, vendor) or None,
            "rotational": rot,
            "kind": ("virtio block device" if block.startswith("vd") else
                     "NVMe" if block.startswith("nvme") else
                     ("HDD" if rot == "1" else "SSD")),
            "scheduler": _read(sysb + "/queue/scheduler"),
            "size_gib": round(int(_read(sysb + "/size", "0")) * 512 / 2**30, 1),
            "write_cache": _read(sysb + "/queue/write_cache") or None,
        })
    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "kernel": os.uname().release,
        "cpu": cpu,
        "mem_gib": round(mem_kib / 2**20, 1),
        "disk": disk,
    }


def cmd_machine(a):
    out = json.dumps(machine_info(a.dir), indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out + "\n")
    else:
        print(out)


# ---------------------------------------------------------------------------------------------
# parse
# ---------------------------------------------------------------------------------------------

def parse_benchmark(text):
    """Summary and latency percentiles of one `benchmark` run (secs -> seconds floats)."""
    res = {}
    m = re.search(r"Summary:(.*?)(?:\n\s*\n|\Z)", text, re.S)
    if not m:
        return None
    for key, name in (("Total", "total_s"), ("Slowest", "slowest_s"), ("Fastest", "fastest_s"),
                      ("Average", "avg_s"), ("Stddev", "stddev_s"),
                      ("Requests/sec", "rps")):
        mm = re.search(r"^\s*" + re.escape(key) + r":\s*([0-9.eE+-]+|NaN)", m.group(1), re.M)
        if mm:
            try:
                res[name] = float(mm.group(1))
            except ValueError:
                res[name] = None
    pct = {}
    for mm in re.finditer(r"^\s*([0-9.]+)% in ([0-9.eE+-]+) secs", text, re.M):
        pct[mm.group(1)] = float(mm.group(2))
    res["pct"] = pct
    for p in ("50", "90", "99"):
        res["p%s_s" % p] = pct.get(p)
    errs = re.search(r"Error distribution:(.*)", text, re.S)
    if errs:
        n = 0
        for mm in re.finditer(r"\[(\d+)\]", errs.group(1)):
            n += int(mm.group(1))
        res["errors"] = n
        res["error_text"] = errs.group(1).strip()[:500]
    else:
        res["errors"] = 0
    return res


def cmd_parse(a):
    with open(a.file, errors="replace") as f:
        print(json.dumps(parse_benchmark(f.read()), indent=2))


# ---------------------------------------------------------------------------------------------
# perf-fold
# ---------------------------------------------------------------------------------------------

# Each sample goes to the first bucket one of whose substrings occurs in its stack.
PERF_BUCKETS = [
    ("io-wq worker: fdatasync (io_fsync, ext4_sync_file, block flush)",
     ["ext4_sync_file", "io_fsync"]),
    ("io-wq worker: other (waking, idling)", ["io_wq_worker"]),
    ("executor park: membarrier() IPIs", ["membarrier"]),
    ("executor park: io_uring_enter sleep/wake", ["Parker::park"]),
    ("HTTP/2 + gRPC (hyper, h2, tonic; socket syscalls)", ["serve_http", "h2::", "hyper::"]),
    ("raft coordinator (raft-rs, WAL, apply)", ["Coordinator", "raft::"]),
    ("shard (MvccStore, shard handler)", ["shards::", "runtime::shard"]),
    ("glommio scheduler/reactor, other", ["glommio::"]),
]


def cmd_perf_fold(a):
    """Coarse buckets of rusd's CPU from `perf script --no-inline -F comm,ip,sym`."""
    with open(a.file, errors="replace") as f:
        samples = f.read().split("\n\n")
    counts = {}
    tot = kern = 0
    for smp in samples:
        lines = [l.strip() for l in smp.strip().split("\n") if l.strip()]
        if len(lines) < 2:
            continue
        tot += 1
        if lines[1].split()[0].startswith("ffffffff"):
            kern += 1
        stack = " ".join(lines[1:])
        for name, keys in PERF_BUCKETS:
            if any(k in stack for k in keys):
                counts[name] = counts.get(name, 0) + 1
                break
        else:
            counts["other"] = counts.get("other", 0) + 1
    if not tot:
        print("no samples (perf script needs -F comm,ip,sym and call graphs)")
        return 1
    print("samples: %d, leaf in the kernel: %.0f%%" % (tot, 100.0 * kern / tot))
    for name, v in sorted(counts.items(), key=lambda kv: -kv[1]):
        print("%5.1f%%  %s" % (100.0 * v / tot, name))


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

SERVERS = ("rusd", "etcd")

# name -> (kind, description, target)
WORKLOADS = [
    ("put-1", "bench", "put, 1 conn, 1 client", "within 10% of the fsync ceiling"),
    ("put-1000", "bench", "put, 100 conns, 1000 clients", "≥ 2× etcd, p99 ≤ etcd"),
    ("txn-put", "bench", "txn-put, 100 conns, 1000 clients", "≥ 2× etcd, p99 ≤ etcd"),
    ("txn-10", "bench", "txn-put, 10 puts per txn, 50 conns, 200 clients", "≥ 2× etcd"),
    ("txn-100", "bench", "txn-put, 100 puts per txn, 50 conns, 200 clients", "≥ 2× etcd"),
    ("txn-100-1", "bench", "txn-put, 100 puts per txn, 1 client", "≥ 2× etcd"),
    ("range-l", "bench", "linearizable get of one key, 100k keys stored", "≥ 2× etcd"),
    ("range-s", "bench", "serializable get of one key, 100k keys stored", "≥ 2× etcd"),
    ("watch-lat", "latency", "put → watch event latency", "p99 ≤ etcd"),
    ("lease-ka", "bench", "lease keep-alive, 100 conns, 1000 clients", "(none)"),
    ("memory", "memory", "RSS after loading the keys", "≤ 0.5× etcd"),
    ("recovery", "recovery", "restart with that data: exec → ready", "≤ etcd"),
]


def _load_meta(res_dir):
    meta = {}
    p = os.path.join(res_dir, "meta.env")
    for line in _read(p).splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            meta[k] = v
    return meta


def _runs(res_dir, w, server):
    """[(rep, kind, payload)] for one workload/server; kind in ok|unsupported|failed."""
    out = []
    d = os.path.join(res_dir, w)
    reps = set()
    for p in glob.glob(os.path.join(d, "%s-*.*" % server)):
        m = re.match(r"%s-(\d+)\." % re.escape(server), os.path.basename(p))
        if m:
            reps.add(int(m.group(1)))
    for rep in sorted(reps):
        base = os.path.join(d, "%s-%d" % (server, rep))
        if os.path.exists(base + ".unsupported"):
            out.append((rep, "unsupported", _read(base + ".unsupported")))
        elif os.path.exists(base + ".failed"):
            out.append((rep, "failed", _read(base + ".failed")))
        elif os.path.exists(base + ".val"):
            out.append((rep, "ok", _read(base + ".val")))
        elif os.path.exists(base + ".out"):
            with open(base + ".out", errors="replace") as f:
                parsed = parse_benchmark(f.read())
            if parsed is None:
                out.append((rep, "failed", "no Summary in benchmark output"))
            else:
                out.append((rep, "ok", parsed))
    return out


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _fmt_ops(x):
    return "—" if x is None else "{:,.0f}".format(x)


def _fmt_ms(x):
    if x is None:
        return "—"
    ms = x * 1e3
    return "%.3f" % ms if ms < 1 else "%.2f" % ms if ms < 100 else "%.0f" % ms


def _fmt_ratio(r, bold_if=None):
    if r is None:
        return "—"
    s = "%.2f×" % r
    return s


def summarize(res_dir):
    rows = []
    raw = []
    for w, kind, desc, target in WORKLOADS:
        if not os.path.isdir(os.path.join(res_dir, w)):
            continue
        per = {}
        for s in SERVERS:
            runs = _runs(res_dir, w, s)
            ok = [r for r in runs if r[1] == "ok"]
            uns = [r for r in runs if r[1] == "unsupported"]
            fail = [r for r in runs if r[1] == "failed"]
            info = {"n": len(ok), "runs": runs}
            if kind in ("bench", "latency"):
                info["rps"] = _med([r[2].get("rps") for r in ok])
                info["p50"] = _med([r[2].get("p50_s") for r in ok])
                info["p99"] = _med([r[2].get("p99_s") for r in ok])
                info["avg"] = _med([r[2].get("avg_s") for r in ok])
                info["errors"] = sum(r[2].get("errors", 0) for r in ok)
                info["each_rps"] = [r[2].get("rps") for r in ok]
                info["each_p99"] = [r[2].get("p99_s") for r in ok]
            elif kind == "memory":
                vals = [r[2].split() for r in ok]
                info["rss_mib"] = _med([int(v[0]) / 1024 for v in vals if v])
                info["each"] = [int(v[0]) / 1024 for v in vals if v]
                info["hwm_mib"] = _med([int(v[1]) / 1024 for v in vals if len(v) > 1])
            elif kind == "recovery":
                vals = [r[2].split() for r in ok]
                info["secs"] = _med([float(v[0]) for v in vals if v])
                info["each"] = [float(v[0]) for v in vals if v]
            if not ok and uns:
                info["status"] = "unsupported"
                info["msg"] = uns[0][2]
            elif not ok and fail:
                info["status"] = "failed"
                info["msg"] = fail[0][2]
            elif not ok:
                info["status"] = "missing"
            else:
                info["status"] = "ok"
                if fail or uns:
                    info["partial"] = "%d of %d runs failed" % (len(fail) + len(uns), len(runs))
            per[s] = info
        rows.append((w, kind, desc, target, per))
    return rows


def _cell(info, key, fmt):
    if info["status"] == "unsupported":
        return "not supported by rusd yet"
    if info["status"] == "failed":
        return "failed"
    if info["status"] == "missing":
        return "—"
    return fmt(info.get(key))


def render(res_dir):
    meta = _load_meta(res_dir)
    mach = {}
    try:
        with open(os.path.join(res_dir, "machine.json")) as f:
            mach = json.load(f)
    except (OSError, ValueError):
        pass
    probes = []
    for p in [os.path.join(res_dir, "fsync.json")] + sorted(
            glob.glob(os.path.join(res_dir, "put-1", "fsync-*.json"))):
        try:
            with open(p) as f:
                probes.append(json.load(f))
        except (OSError, ValueError):
            pass
    fs = None
    if probes:
        def agg(kind):
            meds = [x[kind]["median_s"] for x in probes]
            m = statistics.median(meds)
            return {"n": probes[0][kind]["n"], "median_s": m, "ceiling_ops": 1.0 / m,
                    "min_s": min(meds), "max_s": max(meds)}
        fs = {"overwrite": agg("overwrite"), "append": agg("append"), "probes": len(probes)}
    rows = summarize(res_dir)
    L = []
    a = L.append
    a(BEGIN)
    a("")
    a("## Results (%s run, %s)" % (meta.get("mode", "?"), meta.get("date", "?")))
    a("")
    a("Medians over %s alternating run(s) per server (rusd, etcd, rusd, etcd, …), each run on a "
      "fresh data dir. **ratio = rusd / etcd**: above 1 is better for throughput (ops/s), "
      "below 1 is better for latency, memory and restart time."
      % meta.get("runs", "?"))
    a("")
    a("memory: VmRSS of the server process (`/proc/PID/status`) 3 s after loading the keys "
      "(8 B keys, 256 B values; %s), %s load(s) per server. recovery: the loaded data dir restarted %s time(s) per server, "
      "alternating; the time from exec to the log line \"ready to serve client requests\"."
      % ("one put per request" if meta.get("mem_loader", "put") == "put"
         else "txn-put with 100 puts per txn", meta.get("mem_runs", "?"), meta.get("runs", "?")))
    a("")
    a("| workload | figure | rusd | etcd | ratio rusd/etcd | rusd p50 / p99 (ms) | "
      "etcd p50 / p99 (ms) | target |")
    a("|---|---|--:|--:|--:|--:|--:|---|")
    notes = []
    for w, kind, desc, target, per in rows:
        r, e = per.get("rusd"), per.get("etcd")
        if kind == "bench":
            ratio = (r["rps"] / e["rps"]) if (r["status"] == "ok" and e["status"] == "ok"
                                              and r["rps"] and e["rps"]) else None
            lat = lambda i: ("—" if i["status"] != "ok" else
                             "%s / %s" % (_fmt_ms(i.get("p50")), _fmt_ms(i.get("p99"))))
            a("| %s | ops/s | %s | %s | %s | %s | %s | %s |" % (
                w, _cell(r, "rps", _fmt_ops), _cell(e, "rps", _fmt_ops),
                _fmt_ratio(ratio), lat(r), lat(e), target))
        elif kind == "latency":
            ratio = (r["p99"] / e["p99"]) if (r["status"] == "ok" and e["status"] == "ok"
                                              and r["p99"] and e["p99"]) else None
            lat = lambda i: ("—" if i["status"] != "ok" else
                             "%s / %s" % (_fmt_ms(i.get("p50")), _fmt_ms(i.get("p99"))))
            a("| %s | p99 event latency (ms) | %s | %s | %s | %s | %s | %s |" % (
                w, _cell(r, "p99", _fmt_ms), _cell(e, "p99", _fmt_ms),
                _fmt_ratio(ratio), lat(r), lat(e), target))
        elif kind == "memory":
            ratio = (r["rss_mib"] / e["rss_mib"]) if (r["status"] == "ok" and
                                                      e["status"] == "ok") else None
            f = lambda x: "—" if x is None else "%.0f MiB" % x
            a("| memory (%s keys) | VmRSS | %s | %s | %s | | | %s |" % (
                meta.get("mem_keys", "?"), _cell(r, "rss_mib", f), _cell(e, "rss_mib", f),
                _fmt_ratio(ratio), target))
        elif kind == "recovery":
            ratio = (r["secs"] / e["secs"]) if (r["status"] == "ok" and e["status"] == "ok"
                                                and e["secs"]) else None
            f = lambda x: "—" if x is None else "%.2f s" % x
            a("| recovery (%s keys) | exec → ready | %s | %s | %s | | | %s |" % (
                meta.get("mem_keys", "?"), _cell(r, "secs", f), _cell(e, "secs", f),
                _fmt_ratio(ratio), target))
        for s in SERVERS:
            i = per[s]
            if i.get("partial"):
                notes.append("%s %s: %s (median of the others)" % (w, s, i["partial"]))
            if i["status"] == "failed":
                notes.append("%s %s failed: %s" % (w, s, i.get("msg", "")[:300]))
            if i["status"] == "unsupported" and s == "etcd":
                notes.append("%s etcd: %s" % (w, i.get("msg", "")))
            if i.get("errors"):
                notes.append("%s %s: the benchmark tool reported %d failed requests"
                             % (w, s, i["errors"]))
    for p in sorted(glob.glob(os.path.join(res_dir, "*", "*.attempt*.failed"))):
        w = os.path.basename(os.path.dirname(p))
        run = os.path.basename(p).split(".attempt")[0]
        notes.append("%s %s: failed once and was re-run (the table has the re-run): %s"
                     % (w, run, _read(p)))
    for p in sorted(glob.glob(os.path.join(res_dir, "*", "*.note"))):
        notes.append("%s %s: %s" % (os.path.basename(os.path.dirname(p)),
                                    os.path.basename(p)[:-5], _read(p)))
    a("")
    if fs:
        ow, ap = fs["overwrite"], fs["append"]
        put1 = next((p for w, _, _, _, p in rows if w == "put-1"), None)
        pct = ""
        if put1 and put1["rusd"]["status"] == "ok" and put1["rusd"].get("rps"):
            pct = (" rusd's put-1 reaches **%.0f%%** of it, etcd's %s."
                   % (100 * put1["rusd"]["rps"] / ow["ceiling_ops"],
                      ("%.0f%%" % (100 * put1["etcd"]["rps"] / ow["ceiling_ops"]))
                      if put1["etcd"]["status"] == "ok" and put1["etcd"].get("rps") else "—"))
        a("**fsync ceiling for put-1**: fdatasync of a 4 KiB write on the data dir's disk, "
          "median of %d probes of n=%d (one at the start, one right before and one right after each put-1 run; "
          "probe medians ranged %.3f–%.3f ms): %.3f ms overwriting already-written blocks → "
          "**%s ops/s**; %.3f ms appending to a growing file → %s ops/s.%s"
          % (fs["probes"], ow["n"], ow["min_s"] * 1e3, ow["max_s"] * 1e3,
             ow["median_s"] * 1e3, _fmt_ops(ow["ceiling_ops"]),
             ap["median_s"] * 1e3, _fmt_ops(ap["ceiling_ops"]), pct))
        a("")
    if notes:
        a("Notes from this run:")
        a("")
        for n in notes:
            a("- " + n)
        a("")
    # every run
    a("<details><summary>Every run (ops/s, or the figure in the table)</summary>")
    a("")
    a("| workload | rusd runs | etcd runs |")
    a("|---|---|---|")
    for w, kind, desc, target, per in rows:
        cells = []
        for s in SERVERS:
            i = per[s]
            parts = []
            for rep, k, payload in i["runs"]:
                if k != "ok":
                    parts.append(k)
                elif kind == "bench":
                    parts.append(_fmt_ops(payload.get("rps")))
                elif kind == "latency":
                    parts.append("p99 %s ms" % _fmt_ms(payload.get("p99_s")))
                elif kind == "memory":
                    parts.append("%.0f MiB" % (int(payload.split()[0]) / 1024))
                elif kind == "recovery":
                    parts.append("%.2f s" % float(payload.split()[0]))
            cells.append(", ".join(parts) or "—")
        a("| %s | %s | %s |" % (w, cells[0], cells[1]))
    loads = []
    for s in SERVERS:
        for rep, k, payload in _runs(res_dir, "memory-load", s):
            if k == "ok":
                loads.append((s, rep, payload.get("rps")))
    if loads:
        a("| (memory load, ops/s) | %s | %s |" % tuple(
            ", ".join(_fmt_ops(x) for s2, _, x in loads if s2 == s) for s in SERVERS))
    a("")
    a("</details>")
    a("")
    # machine
    a("### Machine and run")
    a("")
    if mach:
        d = mach.get("disk", {})
        disk = "%s (%s%s%s, rotational=%s, %s GiB, scheduler %s), %s on %s" % (
            d.get("source"), d.get("kind", "?"),
            (", model " + d["model"]) if d.get("model") else "",
            (", vendor " + d["vendor"]) if d.get("vendor") else "",
            d.get("rotational", "?"), d.get("size_gib", "?"), d.get("scheduler", "?"),
            d.get("fstype"), d.get("mount"))
        a("- nproc: **%s** (%s), memory %s GiB, kernel %s" % (
            mach.get("nproc"), mach.get("cpu"), mach.get("mem_gib"), mach.get("kernel")))
        a("- data dirs: `%s` — disk: %s (the same disk as the repo; not tmpfs)" % (
            meta.get("data_root", "?"), disk))
    a("- date: %s; wall time of the run: %s (after building rusd); load average at start / end: "
      "%s / %s" % (
        meta.get("date", "?"), meta.get("duration", "?"), meta.get("load_start", "?"),
        meta.get("load_end", "?")))
    a("- rusd: commit `%s`%s, `cargo build --release --bin rusd`" % (
        meta.get("rusd_commit", "?"),
        " (+ uncommitted changes in the working tree)" if meta.get("rusd_dirty") == "1" else ""))
    a("- etcd: %s; benchmark tool: etcd's `tools/benchmark` at v3.5.17 "
      "(both from `scripts/etcd-ref-tools.sh etcd benchmark`)" % meta.get("etcd_version", "?"))
    a("- the benchmark client runs on the same %s-core machine as the server and competes with "
      "it for CPU (true for both servers, so the ratio holds; the absolute numbers are low). "
      "The machine is shared (other engineers compile and run tests on it), so absolute "
      "figures are noisy: see \"Every run\" for the spread." % mach.get("nproc", "?"))
    if meta.get("mode") != "full":
        a("- **totals were reduced for this run** (%s; the exact totals are in the commands "
          "below)." % meta.get("mode"))
    a("")
    a("Both servers were started with exactly these flags (DIR a fresh directory per run):")
    a("")
    a("```")
    a("<server> " + meta.get("server_flags", "?"))
    a("```")
    a("")
    a("Commands (`B=benchmark --endpoints=%s --precise`):" % meta.get("endpoint", "?"))
    a("")
    a("```")
    for w, kind, desc, target, per in rows:
        c = _read(os.path.join(res_dir, w, "cmd.txt"))
        if c:
            for line in c.splitlines():
                a("%-10s %s" % (w + ":", line))
    a("```")
    a("")
    a(END)
    return "\n".join(L) + "\n"


DOC_HEAD = """# rusd vs etcd v3.5.17: benchmarks

How these numbers are made: `/work/shared/design/benchmarks.md` (method, workloads, targets).
Re-run with `scripts/bench-vs-etcd.sh` (full, ~25 min on 2 cores) or
`scripts/bench-vs-etcd.sh --quick` (smoke, a few minutes); the script rewrites the generated
section below and keeps the rest of this file.

"""


def cmd_report(a):
    text = render(a.results)
    if a.out:
        old = _read(a.out) if os.path.exists(a.out) else ""
        if BEGIN in old and END in old:
            pre = old.split(BEGIN, 1)[0]
            post = old.split(END, 1)[1]
            new = pre + text.rstrip("\n") + post
            if not new.endswith("\n"):
                new += "\n"
        elif old:
            new = old.rstrip("\n") + "\n\n" + text
        else:
            new = DOC_HEAD + text
        with open(a.out, "w") as f:
            f.write(new)
    sys.stdout.write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("fsync")
    s.add_argument("dir")
    s.add_argument("--n", type=int, default=500)
    s.add_argument("--out")
    s.set_defaults(fn=cmd_fsync)
    s = sub.add_parser("wait-ready")
    s.add_argument("--log", required=True)
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--start-ns", type=int, required=True)
    s.add_argument("--timeout", type=float, default=300)
    s.set_defaults(fn=cmd_wait_ready)
    s = sub.add_parser("machine")
    s.add_argument("dir")
    s.add_argument("--out")
    s.set_defaults(fn=cmd_machine)
    s = sub.add_parser("parse")
    s.add_argument("file")
    s.set_defaults(fn=cmd_parse)
    s = sub.add_parser("perf-fold")
    s.add_argument("file")
    s.set_defaults(fn=cmd_perf_fold)
    s = sub.add_parser("report")
    s.add_argument("results")
    s.add_argument("--out")
    s.set_defaults(fn=cmd_report)
    a = p.parse_args()
    sys.exit(a.fn(a) or 0)


if __name__ == "__main__":
    main()
