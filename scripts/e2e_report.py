#!/usr/bin/env python3
"""Turn `go test -json` output of etcd's e2e suite into a JSON report and a per-tier table.

stdlib only. Used by scripts/etcd-e2e-compat.sh; can be run by hand on a saved .jsonl:

  e2e_report.py --jsonl go-test.jsonl --report report.json --target rusd \
      [--tiers-json tiers.json] [--test-list all-tests.txt] [--expected FILE] \
      [--command "..."] [--started ISO] [--wall-seconds N] [--go-exit N] [--meta k=v ...]

Exit status: 0 normally; with --expected, 1 if any expected test did not pass.
"""
import argparse
import datetime
import json
import os
import platform
import re
import sys


def parse_jsonl(path):
    """Return (tests, pkg_result, pkg_output, non_json_lines).

    tests: name -> {"status", "duration_s", "output": [lines]} for top-level tests and subtests.
    A test with a "run" event but no terminal event gets status "fail" and "incomplete": True
    (the test binary timed out or crashed while it ran).
    """
    tests = {}
    order = []
    pkg_result = None
    pkg_output = []
    non_json = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                non_json.append(line)
                continue
            if not isinstance(ev, dict):
                non_json.append(line)
                continue
            action = ev.get("Action")
            name = ev.get("Test")
            if not name:
                if action in ("pass", "fail", "skip"):
                    # one event per test process: the package failed if any process failed
                    if pkg_result != "fail":
                        pkg_result = action
                elif action == "output":
                    pkg_output.append(ev.get("Output", ""))
                continue
            t = tests.get(name)
            if t is None:
                t = {"status": None, "duration_s": None, "output": []}
                tests[name] = t
                order.append(name)
            if action == "output":
                t["output"].append(ev.get("Output", ""))
            elif action in ("pass", "fail", "skip"):
                t["status"] = action
                if "Elapsed" in ev:
                    t["duration_s"] = ev["Elapsed"]
    for name in order:
        t = tests[name]
        if t["status"] is None:
            t["status"] = "fail"
            t["incomplete"] = True
    return tests, order, pkg_result, pkg_output, non_json


def failure_excerpt(lines, limit=30):
    """The most telling lines of a failed test's output: error lines plus the 3 lines after
    each (the framework prints the server's last lines after "match not found"), else the
    tail."""
    pat = re.compile(r"(Error|error|FAIL|panic|timed out|unexpected|expected|Fatal|fatal|"
                     r"not found|unknown flag|EOF|exit status|signal)")
    lines = [ln.rstrip("\n") for ln in lines]
    keep_idx = []
    for i, s in enumerate(lines):
        if pat.search(s) and not s.lstrip().startswith("=== "):
            for j in range(i, min(i + 4, len(lines))):
                if not keep_idx or keep_idx[-1] < j:
                    keep_idx.append(j)
    keep = [lines[i] for i in keep_idx] or lines[-limit:]
    if len(keep) > limit:
        keep = keep[:limit // 2] + ["..."] + keep[-limit // 2:]
    return [k[:400] for k in keep]


def read_list(path):
    names = []
    with open(path, "r", encoding="utf-8") as f:
        for raw in f:
            s = raw.split("#", 1)[0].strip()
            if s:
                names.append(s)
    return names


def machine_info():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "arch": platform.machine()}
    try:
        with open("/proc/meminfo") as f:
            for ln in f:
                if ln.startswith("MemTotal:"):
                    info["mem_total_kb"] = int(ln.split()[1])
                    break
    except OSError:
        pass
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jsonl", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--tiers-json", help='{"1": {"name":..., "regex":...}, ...}')
    ap.add_argument("--selected-tiers", default="", help="comma list of tiers that were asked for")
    ap.add_argument("--test-list", help="file with every top-level test name of the suite")
    ap.add_argument("--expected", help="expected-pass list (check mode)")
    ap.add_argument("--run-regex", default="")
    ap.add_argument("--command", default="")
    ap.add_argument("--started", default="")
    ap.add_argument("--wall-seconds", type=float, default=None)
    ap.add_argument("--go-exit", type=int, default=None)
    ap.add_argument("--meta", action="append", default=[], help="extra key=value for the report")
    a = ap.parse_args()

    tests, order, pkg_result, pkg_output, non_json = parse_jsonl(a.jsonl)
    top = [n for n in order if "/" not in n]

    tiers = {}
    if a.tiers_json:
        with open(a.tiers_json) as f:
            tiers = json.load(f)
    all_tests = read_list(a.test_list) if a.test_list and os.path.exists(a.test_list) else []

    run_re = re.compile(a.run_regex) if a.run_regex else None
    selected = [t for t in a.selected_tiers.split(",") if t]

    # Tests that were selected by the -run regex but produced no event at all (the binary died
    # before reaching them, or the suite does not have them).
    not_run = []
    if run_re and all_tests:
        not_run = [n for n in all_tests if run_re.search(n) and n not in tests]

    tier_rows = []
    for key in sorted(tiers, key=lambda k: int(k)):
        tdef = tiers[key]
        rx = re.compile(tdef["regex"])
        members = [n for n in top if rx.search(n)]
        in_suite = [n for n in all_tests if rx.search(n)] if all_tests else []
        if selected and "6" not in selected:
            if key not in selected:
                continue
        elif not members:
            continue
        c = {"pass": 0, "fail": 0, "skip": 0}
        for n in members:
            c[tests[n]["status"]] += 1
        nr = [n for n in not_run if rx.search(n)]
        tier_rows.append({
            "tier": int(key), "name": tdef.get("name", ""), "regex": tdef["regex"],
            "tests_in_suite": len(in_suite) if all_tests else None,
            "ran": len(members), "pass": c["pass"], "fail": c["fail"] + len(nr), "skip": c["skip"],
            "not_run": nr,
            "seconds": round(sum((tests[n]["duration_s"] or 0) for n in members), 2),
        })

    total = {"pass": 0, "fail": 0, "skip": 0}
    for n in top:
        total[tests[n]["status"]] += 1
    total["fail"] += len(not_run)

    report = {
        "target": a.target,
        "date": a.started or datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": a.command,
        "run_regex": a.run_regex,
        "selected_tiers": [int(t) for t in selected],
        "machine": machine_info(),
        "go_test_exit": a.go_exit,
        "package_result": pkg_result,
        "wall_seconds": a.wall_seconds,
        "totals": {"top_level": len(top), **total, "not_run": len(not_run)},
        "tiers": tier_rows,
        "not_run": not_run,
        "tests": [],
    }
    for kv in a.meta:
        if "=" in kv:
            k, v = kv.split("=", 1)
            report[k] = v
    for n in order:
        t = tests[n]
        row = {"name": n, "top_level": "/" not in n, "status": t["status"],
               "duration_s": t["duration_s"]}
        if t.get("incomplete"):
            row["incomplete"] = True
        if t["status"] == "fail":
            row["failure"] = failure_excerpt(t["output"])
        if t["status"] == "skip":
            lines = [l.strip() for l in t["output"]
                     if l.strip() and not l.lstrip().startswith(("=== ", "--- "))]
            row["skip_reason"] = [s[:300] for s in lines[-2:]]
        report["tests"].append(row)
    pkg_tail = [l.rstrip("\n") for l in pkg_output if l.strip()][-30:]
    if non_json:
        pkg_tail = [l[:400] for l in non_json[-30:]] + pkg_tail
    report["package_output_tail"] = pkg_tail

    exit_code = 0
    if a.expected is not None:
        listed = read_list(a.expected)
        expected = list(dict.fromkeys(listed))   # unique, in order
        dups = sorted({n for n in listed if listed.count(n) > 1})
        missing = []
        for n in expected:
            st = tests.get(n, {}).get("status")
            if st != "pass":
                missing.append({"name": n, "status": st or "not run"})
        report["expected"] = {"file": a.expected, "count": len(expected),
                              "duplicates": dups, "not_passing": missing}
        if missing:
            exit_code = 1

    with open(a.report, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    # ---- human table ----
    out = sys.stdout
    out.write("\n== etcd v3.5.17 e2e suite against %s ==\n" % a.target)
    out.write("%-5s %-26s %6s %6s %6s %6s %6s %9s\n" %
              ("tier", "name", "suite", "ran", "pass", "fail", "skip", "seconds"))
    for r in tier_rows:
        out.write("%-5s %-26s %6s %6d %6d %6d %6d %9.1f\n" % (
            r["tier"], r["name"][:26],
            "-" if r["tests_in_suite"] is None else r["tests_in_suite"],
            r["ran"], r["pass"], r["fail"], r["skip"], r["seconds"]))
    out.write("%-5s %-26s %6s %6d %6d %6d %6d %9s\n" % (
        "all", "(top-level tests run)", len(all_tests) or "-", len(top), total["pass"],
        total["fail"], total["skip"],
        "%.1f" % a.wall_seconds if a.wall_seconds is not None else "-"))
    failed = [n for n in top if tests[n]["status"] == "fail"]
    if failed or not_run:
        out.write("\nFailed top-level tests:\n")
        for n in failed:
            extra = " (no result: timeout or crash)" if tests[n].get("incomplete") else ""
            out.write("  FAIL %s%s\n" % (n, extra))
        for n in not_run:
            out.write("  NOT RUN %s\n" % n)
    if pkg_result == "fail" and not top:
        out.write("\nThe test package failed without running any test:\n")
        for l in pkg_tail[-15:]:
            out.write("  " + l + "\n")
    if a.expected is not None:
        exp = report["expected"]
        out.write("\nExpected-pass list %s: %d tests\n" % (a.expected, exp["count"]))
        if exp["duplicates"]:
            out.write("(listed more than once: %s)\n" % ", ".join(exp["duplicates"]))
        if exp["not_passing"]:
            out.write("EXPECTED TESTS NOT PASSING (%d):\n" % len(exp["not_passing"]))
            for m in exp["not_passing"]:
                out.write("  %s: %s\n" % (m["name"], m["status"]))
        else:
            out.write("All %d expected tests passed.\n" % exp["count"])
    out.write("\nreport: %s\n" % a.report)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
