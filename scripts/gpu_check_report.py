"""The record of scripts/gpu_check.sh: results.json (every figure, schema below) and summary.md
(rendered from it), both rewritten after every step so a run cut short still leaves them
current. Standard library only: runs before anything is installed.

    gpu_check_report.py init   OUT --dry-run 0|1 --env-file FILE
    gpu_check_report.py step   OUT --name N --status S --seconds T --limit L --log LOG
                               [--reason R] [--kind pytest|bench|autotune|memcheck|backends|build]
                               [--data FILE]
    gpu_check_report.py finish OUT --seconds T

results.json, schema "lambda-kernels/gpu-check/1":
    schema      "lambda-kernels/gpu-check/1"
    started     UTC time, ISO 8601
    finished    UTC time, or null while running
    seconds     wall seconds of the whole run (null while running)
    dry_run     true when run without a GPU (FORCE=1): GPU steps are "skipped", no figures
    overall     "running", "pass" (every step passed or was skipped), "fail"
    env         {key: value} read by the script: git, gpu, capability, driver, python, torch,
                cuda, triton, nproc, host, ... (strings)
    steps       in the order they ran, each:
        name     e.g. "correctness (CUDA)"
        kind     what its figures are: pytest, bench, autotune, memcheck, backends, build, or ""
        status   "pass", "fail", "timeout" (its time limit ran out), "skipped"
        reason   why skipped/failed (e.g. "no GPU"), or null
        seconds  wall seconds; limit_s: its time limit
        log      path of its log inside logs.tar.gz
        figures  what the step measured, by kind (empty when skipped):
                 pytest:   {passed, failed, errors, skipped, failures: [test ids]}, read
                           from the JUnit XML, or with partial: true from the -v log when
                           the time limit cut the run off
                 bench:    lambda-bench's JSON (results with ms, TFLOP/s, memory, metadata)
                 autotune: autotune_report's JSON (chosen tiles, ms, useful TFLOP/s, SDPA)
                 memcheck: {errors: int}
                 backends: {name: null if it runs on the GPU, else why not}
                 build:    {archs: the arch list compiled}
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import xml.etree.ElementTree as ET

SCHEMA = "lambda-kernels/gpu-check/1"
STATUSES = ("pass", "fail", "timeout", "skipped")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _path(out):
    return os.path.join(out, "results.json")


def load(out) -> dict:
    with open(_path(out)) as f:
        return json.load(f)


def save(out, record) -> None:
    tmp = _path(out) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, _path(out))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary(record))


def _read_env(path) -> dict:
    env = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep and key:
                    env[key.strip()] = value.strip()
    return env


_VERBOSE_LINE = re.compile(r"(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)|"
                           r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(tests/\S+::\S+)")
_OUTCOME = dict(PASSED="passed", XPASS="passed", FAILED="failed", ERROR="errors",
                SKIPPED="skipped", XFAIL="skipped")


def pytest_log_figures(log) -> dict:
    """Counts from `pytest -v` lines (with or without xdist), for a run its time limit cut off
    before the JUnit XML was written."""
    figures = dict(passed=0, failed=0, errors=0, skipped=0, failures=[], partial=True)
    if not log or not os.path.exists(log):
        return figures
    seen = set()
    for line in open(log, errors="replace"):
        match = _VERBOSE_LINE.search(line)
        if not match:
            continue
        test_id = match.group(1) or match.group(4)
        outcome = _OUTCOME[match.group(2) or match.group(3)]
        if (test_id, outcome) in seen:
            continue
        seen.add((test_id, outcome))
        figures[outcome] += 1
        if outcome in ("failed", "errors"):
            figures["failures"].append(test_id)
    return figures


def pytest_figures(junit_xml, log=None) -> dict:
    figures = dict(passed=0, failed=0, errors=0, skipped=0, failures=[])
    if not junit_xml or not os.path.exists(junit_xml):
        return pytest_log_figures(log) if log else figures
    try:
        root = ET.parse(junit_xml).getroot()
    except ET.ParseError:  # cut off mid-write by the step's time limit
        return pytest_log_figures(log) if log else figures
    for case in root.iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            figures["failed"] += 1
            figures["failures"].append(test_id)
        elif case.find("error") is not None:
            figures["errors"] += 1
            figures["failures"].append(test_id)
        elif case.find("skipped") is not None:
            figures["skipped"] += 1
        else:
            figures["passed"] += 1
    return figures


def memcheck_figures(log) -> dict:
    text = open(log, errors="replace").read() if log and os.path.exists(log) else ""
    found = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    return {"errors": sum(int(n) for n in found) if found else None}


def json_figures(path):
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def figures_for(kind, data, log):
    if kind == "pytest":
        return pytest_figures(data, log)
    if kind == "memcheck":
        return memcheck_figures(log)
    if kind in ("bench", "autotune", "backends", "build"):
        return json_figures(data)
    return {}


def summary(record) -> str:
    env = record["env"]
    lines = ["# lambda-kernels GPU check" + (" (dry run: no GPU)" if record["dry_run"] else ""),
             "",
             f"overall: **{record['overall']}**, started {record['started']}, "
             + (f"{record['seconds']} s" if record["seconds"] is not None else "still running"),
             "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in env.items()]
    lines += ["", "| # | step | status | s (limit) | figures / reason |", "|---|---|---|---|---|"]
    for index, step in enumerate(record["steps"], 1):
        lines.append(f"| {index} | {step['name']} | {step['status']} | {step['seconds']} "
                     f"({step['limit_s']}) | {_brief(step)} |")
    lines += ["", "Every figure is in results.json; every step's log in logs.tar.gz "
              "(docs/gpu.md)."]
    return "\n".join(lines) + "\n"


def _brief(step) -> str:
    figures, reason = step["figures"], step["reason"]
    text = ""
    if step["kind"] == "pytest" and figures:
        text = (f"{figures['passed']} passed, {figures['failed']} failed, {figures['errors']} "
                f"errors, {figures['skipped']} skipped")
        if figures.get("partial"):
            text += " before the time limit"
        if figures["failures"]:
            text += "; first failures: " + ", ".join(figures["failures"][:3])
    elif step["kind"] == "memcheck" and figures:
        text = f"{figures['errors']} errors"
    elif step["kind"] == "backends" and figures:
        text = "; ".join(f"{name}: {why or 'runs'}" for name, why in figures.items())
    elif step["kind"] == "bench" and isinstance(figures, dict) and figures.get("results"):
        text = f"{len(figures['results'])} rows (results.json)"
    elif step["kind"] == "autotune" and isinstance(figures, list) and figures:
        text = f"{len(figures)} shapes tuned (results.json)"
    elif step["kind"] == "build" and figures:
        text = f"archs {figures.get('archs')}"
    if reason:
        text = f"{reason}; {text}" if text else reason
    return text.replace("|", "/").replace("\n", " ")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["init", "step", "finish"])
    parser.add_argument("out")
    parser.add_argument("--dry-run", type=int, default=0)
    parser.add_argument("--env-file")
    parser.add_argument("--name")
    parser.add_argument("--status", choices=STATUSES)
    parser.add_argument("--reason")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--log")
    parser.add_argument("--kind", default="")
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    if args.action == "init":
        save(args.out, dict(schema=SCHEMA, started=_now(), finished=None, seconds=None,
                            dry_run=bool(args.dry_run), overall="running",
                            env=_read_env(args.env_file), steps=[]))
        return 0
    record = load(args.out)
    if args.action == "step":
        figures = {} if args.status == "skipped" else figures_for(args.kind, args.data, args.log)
        record["steps"].append(dict(
            name=args.name, status=args.status, reason=args.reason or None,
            seconds=round(args.seconds, 1), limit_s=args.limit, kind=args.kind,
            log=os.path.join("logs", os.path.basename(args.log)) if args.log else None,
            figures=figures))
    else:
        record["finished"] = _now()
        record["seconds"] = round(args.seconds, 1)
        bad = [s for s in record["steps"] if s["status"] in ("fail", "timeout")]
        record["overall"] = "fail" if bad else "pass"
    save(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
