"""Results of benchmarks/gpu_check.sh: one JSON file per step as it finishes, and a Markdown summary.

    python benchmarks/gpu_report.py step NAME --out DIR --rc RC --seconds S [--timeout T] [--result FILE]
    python benchmarks/gpu_report.py summary --out DIR

``step`` writes DIR/NAME.json: ``status`` is ``ok`` (exit 0 and, when the step writes a result
file, that file says ok), ``partial`` (stopped by its time limit with some results written),
``timeout``, ``fail`` or ``skipped``; with the exit code, seconds, the step's result and the
tail of its log. ``summary`` writes DIR/summary.md from every step file there.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

STEPS = ("env", "cuda_tests", "throughput_eager", "ddp_resume", "loader", "throughput_compiled")
TIMEOUT_RCS = (124, 137)


def junit_counts(path: Path) -> dict:
    """Counts and skip reasons from a pytest --junitxml file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    reasons: dict[str, int] = {}
    failed: list[str] = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for child in case:
            if child.tag == "skipped":
                msg = (child.get("message") or "").strip()
                reasons[msg] = reasons.get(msg, 0) + 1
            elif child.tag in ("failure", "error"):
                first = (child.get("message") or "").splitlines()[:1]
                failed.append(f"{name}: {first[0][:200] if first else ''}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "skip_reasons": reasons, "failed": failed}


def load_result(path: Path | None) -> object:
    if path is None or not path.is_file():
        return None
    if path.suffix == ".xml":
        return junit_counts(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def step_status(rc: int, result: object, has_result_file: bool, skipped: bool) -> str:
    if skipped:
        return "skipped"
    reported = result.get("status") if isinstance(result, dict) else None
    if rc in TIMEOUT_RCS:
        return "partial" if result else "timeout"
    if rc != 0 or reported == "fail":
        return "fail"
    if has_result_file and not result:
        return "fail"  # said nothing it promised to
    return "ok"


def write_step(a: argparse.Namespace) -> int:
    out = Path(a.out)
    result_path = Path(a.result) if a.result else None
    result = load_result(result_path)
    log = out / f"{a.name}.log"
    tail = log.read_text(errors="replace").splitlines()[-40:] if log.is_file() else []
    record = {"step": a.name, "status": step_status(a.rc, result, result_path is not None, a.skipped),
              "rc": a.rc, "seconds": a.seconds, "timeout_s": a.timeout, "result": result, "log_tail": tail}
    if a.note:
        record["note"] = a.note
    (out / f"{a.name}.json").write_text(json.dumps(record, indent=1))
    print(f"[gpu_check] step {a.name}: {record['status']} (exit {a.rc}, {a.seconds} s)", flush=True)
    return 0 if record["status"] == "ok" else 1


def _fmt(v: object, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else ("-" if v is None else str(v))


def summary(a: argparse.Namespace) -> int:
    out = Path(a.out)
    steps = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem in STEPS}
    lines = ["# gpu_check results", "", "| step | status | exit | seconds | limit (s) |", "|---|---|---|---|---|"]
    for name in STEPS:
        s = steps.get(name)
        if s:
            lines.append(f"| {name} | {s['status']} | {s['rc']} | {s['seconds']} | {_fmt(s.get('timeout_s'), 'd')} |")
        else:
            lines.append(f"| {name} | not run | - | - | - |")
    env = steps.get("env", {}).get("result")
    if isinstance(env, dict):
        lines += ["", "## Device and versions", ""] + [f"- {k}: {v}" for k, v in env.items() if k != "status"]
    tests = steps.get("cuda_tests", {}).get("result")
    if isinstance(tests, dict):
        lines += ["", "## CUDA tests (pytest -m cuda)", "",
                  f"{tests['passed']} passed, {tests['failures'] + tests['errors']} failed, "
                  f"{tests['skipped']} skipped of {tests['tests']}"]
        lines += [f"- skipped ({n}): {r}" for r, n in tests["skip_reasons"].items()]
        lines += [f"- FAILED {f}" for f in tests["failed"]]
    for name in ("throughput_eager", "throughput_compiled"):
        md = out / f"{name}.md"
        if md.is_file():
            lines += ["", f"## {name.replace('_', ' ')}", "", md.read_text().strip()]
    ddp = steps.get("ddp_resume", {}).get("result")
    if isinstance(ddp, dict):
        keys = ("model", "backend", "device", "steps", "stop_requested_at_step", "checkpoint_step",
                "checkpoint_epoch_step", "worker_exit_143", "compared_steps", "identical_steps", "max_rel_loss_diff",
                "reference_img_s", "reference_seconds", "interrupted_seconds", "resumed_seconds", "error")
        lines += ["", "## DDP: SIGTERM and resume", ""] + [f"- {k}: {_fmt(ddp[k], '.3g')}" for k in keys if k in ddp]
    loader = steps.get("loader", {}).get("result")
    if isinstance(loader, dict) and loader.get("rows"):
        lines += ["", f"## Data loader, img/s at {loader['img_size']} px, batch {loader['batch_size']} "
                  f"({loader['device']})", "",
                  "| workers | gaheads | gaheads + device normalisation | timm | gaheads / timm | prefetch / timm |",
                  "|---|---|---|---|---|---|"]
        for r in loader["rows"]:
            lines.append(f"| {r['workers']} | {r['gaheads']['img_s']:.0f} | {r['gaheads_prefetch']['img_s']:.0f} "
                         f"| {r['timm']['img_s']:.0f} | {r['gaheads_vs_timm']:.2f} "
                         f"| {r['gaheads_prefetch_vs_timm']:.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"[gpu_check] summary: {out / 'summary.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("name", choices=STEPS)
    s.add_argument("--out", required=True)
    s.add_argument("--rc", type=int, required=True)
    s.add_argument("--seconds", type=int, required=True)
    s.add_argument("--timeout", type=int, default=None)
    s.add_argument("--result", default=None)
    s.add_argument("--skipped", action="store_true")
    s.add_argument("--note", default=None)
    m = sub.add_parser("summary")
    m.add_argument("--out", required=True)
    a = p.parse_args(argv)
    return write_step(a) if a.cmd == "step" else summary(a)


if __name__ == "__main__":
    sys.exit(main())
