#!/usr/bin/env python3
"""Stall watchdog for an e2e run (stdlib only). Used by scripts/etcd-e2e-compat.sh.

etcd's e2e framework waits for "ready to serve client requests" with NO timeout: a server
binary that starts but never prints that line (or hangs later while the framework waits on
its output) stalls the whole `go test` run until -timeout, and every later test is lost.

This watchdog follows the `go test -json` stream while it is written. When no test or subtest
has started or finished for --limit seconds while one is running, it SIGKILLs the server
processes that this run started (processes whose /proc/PID/exe is --server-exe, whose argv[0] is --arg0, and whose
pid was not in --before-pids), and the run's etcdctl/etcdutl processes (--tool), since a client
that hangs blocks the framework too (it reads their output without a timeout). The framework then sees the pty close, the test fails, and the run goes on.
It exits when the process --pid (the go test command) is gone.
"""
import argparse
import json
import os
import signal
import sys
import time


def run_pids(exes, arg0s):
    """pids whose /proc/PID/exe is in exes and whose argv[0] is in arg0s."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/exe" % d) not in exes:
                continue
            with open("/proc/%s/cmdline" % d, "rb") as f:
                first = f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
            if first in arg0s:
                out.append(int(d))
        except OSError:
            pass
    return out


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jsonl", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--server-exe", required=True)
    ap.add_argument("--arg0", required=True, help="argv[0] the run starts the server with")
    ap.add_argument("--tool", action="append", default=[], metavar="EXE=ARG0",
                    help="client tool of this run (etcdctl, etcdutl): its binary and argv[0]")
    ap.add_argument("--before-pids", default="")
    ap.add_argument("--limit", type=float, required=True)
    ap.add_argument("--log", required=True, help="file to append watchdog actions to")
    a = ap.parse_args()

    before = set()
    if a.before_pids and os.path.exists(a.before_pids):
        with open(a.before_pids) as f:
            before = {int(x) for x in f.read().split() if x.strip().isdigit()}

    running = set()        # tests and subtests started and not finished
    last_progress = time.time()
    pos = 0
    buf = ""
    while alive(a.pid):
        try:
            with open(a.jsonl, "r", encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
        except OSError:
            chunk = ""
        buf += chunk
        *lines, buf = buf.split("\n")
        now = time.time()
        for ln in lines:
            try:
                ev = json.loads(ln)
            except ValueError:
                continue
            name = ev.get("Test") if isinstance(ev, dict) else None
            if not name:
                continue
            act = ev.get("Action")
            if act == "run":
                running.add(name)
                last_progress = now
            elif act in ("pass", "fail", "skip"):
                running.discard(name)
                last_progress = now
        if running and now - last_progress > a.limit:
            pids = [p for p in run_pids({a.server_exe}, {a.arg0}) if p not in before]
            # a hung client (e.g. etcdctl waiting on a server that never answers) blocks the
            # framework just as well: kill this run's etcdctl/etcdutl too
            tools = [t.split("=", 1) for t in a.tool if "=" in t]
            pids += [p for p in run_pids({e for e, _ in tools}, {g for _, g in tools})
                     if p not in before]
            leaf = max(running, key=lambda n: n.count("/"))
            msg = ("%s watchdog: no test started or finished for %.0fs (> %.0fs) while %s runs:"
                   " SIGKILL pids %s (server, etcdctl, etcdutl of this run)\n"
                   % (time.strftime("%H:%M:%S"), now - last_progress, a.limit, leaf, pids))
            with open(a.log, "a") as lf:
                lf.write(msg)
            sys.stderr.write("etcd-e2e-compat " + msg.split(" ", 1)[1])
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            last_progress = now   # next kill only after another full limit
        time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
