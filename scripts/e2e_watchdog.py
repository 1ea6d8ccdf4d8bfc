#!/usr/bin/env python3
"""Stall watchdog for an e2e run (stdlib only). Used by scripts/etcd-e2e-compat.sh.

etcd's e2e framework waits for "ready to serve client requests" with NO timeout: a server
binary that starts but never prints that line (or hangs later while the framework waits on
its output) stalls the whole `go test` run until -timeout, and every later test is lost.

This watchdog follows the `go test -json` stream while it is written. When one top-level test
has been running for longer than --limit seconds, it SIGKILLs the server processes that this
run started (processes whose /proc/PID/exe is --server-exe and whose pid was not in
--before-pids). The framework then sees the pty close, the test fails, and the run goes on.
It exits when the process --pid (the go test command) is gone.
"""
import argparse
import json
import os
import signal
import sys
import time


def server_pids(exe):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.readlink("/proc/%s/exe" % d) == exe:
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
    ap.add_argument("--before-pids", default="")
    ap.add_argument("--limit", type=float, required=True)
    ap.add_argument("--log", required=True, help="file to append watchdog actions to")
    a = ap.parse_args()

    before = set()
    if a.before_pids and os.path.exists(a.before_pids):
        with open(a.before_pids) as f:
            before = {int(x) for x in f.read().split() if x.strip().isdigit()}

    running = {}   # top-level test -> (start time, kills done)
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
            if not name or "/" in name:
                continue
            act = ev.get("Action")
            if act == "run":
                running[name] = [now, 0]
            elif act in ("pass", "fail", "skip"):
                running.pop(name, None)
        for name, st in list(running.items()):
            started, kills = st
            # kill at limit, and again every 60s after that if the test is still stuck
            if now - started > a.limit + 60 * kills:
                pids = [p for p in server_pids(a.server_exe) if p not in before]
                with open(a.log, "a") as lf:
                    lf.write("%s watchdog: %s running for %.0fs (> %.0fs): SIGKILL server pids %s\n"
                             % (time.strftime("%H:%M:%S"), name, now - started, a.limit, pids))
                sys.stderr.write("etcd-e2e-compat watchdog: %s stalled %.0fs; killing server pids %s\n"
                                 % (name, now - started, pids))
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                st[1] = kills + 1
        time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
