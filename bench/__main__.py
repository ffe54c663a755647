"""``python -m bench [--quick] [--out DIR]``: run the whole suite once and write the report.

Full mode writes docs/benchmarks.md and docs/benchmarks.json; --quick writes to bench/results/
(git-ignored) unless --out says otherwise, so a quick check never replaces the real figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import inspect
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from bench import (
    before_step,
    loop_step,
    mcp_step,
    merge_step,
    nerves,
    scale_step,
    suite,
    worker_step,
)
from bench.analysis import where_time_goes
from bench.discussion import discussion
from bench.goals import evaluate
from bench.machine import describe
from bench.plan import FULL, QUICK, Plan
from bench.report import render
from bench.resources import beam_pid
from bench.stats import Figure, Results, log
from bench.vsmd_proc import REPO
from vsmd.broker.embedded import EmbeddedBroker


def _on_term(_sig: int, _frame: FrameType | None) -> None:
    raise SystemExit(143)  # unwinds through every finally: daemons, peers and the node stop


def _source() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = len(
        [ln for ln in git("status", "--porcelain", "--", "vsmd", "vsmctl").splitlines() if ln]
    )
    return f"git {git('rev-parse', '--short', 'HEAD') or '?'}" + (
        f" + {changed} uncommitted changes in vsmd/ or vsmctl/" if changed else ""
    )


def _code_hash() -> str:
    """Of vsmd/ and vsmctl/ as they are on disk: the code under test."""
    digest = hashlib.sha256()
    for path in sorted([*REPO.glob("vsmd/**/*.py"), *REPO.glob("vsmctl/**/*.py")]):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _sampler() -> dict[str, Any]:
    import vsmd.daemon.service
    from vsmd.config import Config

    return {
        "configurable": suite.sampler_configurable(),
        "interval": getattr(Config(), "sample_interval", None),
        "module": importlib.util.find_spec("vsmd.daemon.quotas") is not None,
        "wired": "sample" in inspect.getsource(vsmd.daemon.service),
    }


def _run(
    plan: Plan, workdir: Path, res: Results, data: dict[str, Any], only: set[str] | None
) -> None:
    node = EmbeddedBroker(workdir / "broker", name=f"vsmd-bench-{secrets.token_hex(4)}")
    log("starting a private RabbitMQ node")
    node.start()
    try:
        machine = describe(node.url)
        machine["source"] = f"{_source()} (vsmd/ + vsmctl/ sha256 {data['code_hash']})"
        machine.update(data["machine"])
        data["machine"] = machine
        ctx = suite.Ctx(node.url, workdir, beam_pid(os.getpid()), plan, res)
        steps = [
            ("vsmd", lambda: suite.run_vsmd_main(ctx)),
            ("floor", lambda: suite.run_floor(ctx)),
            ("multiprocessing", lambda: suite.run_multiprocessing(ctx)),
            ("supervisord", lambda: suite.run_supervisord(ctx)),
            (
                "nofreeze",
                lambda: suite.run_variant(
                    ctx, "nofreeze", plan.variant_latency, plan.variant_burst, gc_freeze=False
                ),
            ),
            (
                "nostandby",
                lambda: suite.run_variant(
                    ctx,
                    "nostandby",
                    plan.variant_latency,
                    plan.variant_burst,
                    spawn_standby=False,
                ),
            ),
            (
                "huge",
                lambda: suite.run_variant(
                    ctx, "huge", plan.variant_latency, plan.variant_burst, huge_pages=True
                ),
            ),
            (
                "exec",
                lambda: suite.run_variant(
                    ctx, "exec", plan.exec_latency, plan.exec_burst, spawn_strategy="exec"
                ),
            ),
            (
                "gc.collect with gc.freeze",
                lambda: suite.run_variant(
                    ctx,
                    "gcfreeze",
                    0,
                    plan.gc_burst,
                    agent="gccollect",
                    agent_modules=["bench.agents"],
                ),
            ),
            (
                "gc.collect without gc.freeze",
                lambda: suite.run_variant(
                    ctx,
                    "gcnofreeze",
                    0,
                    plan.gc_burst,
                    gc_freeze=False,
                    agent="gccollect",
                    agent_modules=["bench.agents"],
                ),
            ),
        ]
        if data["sampler"]["configurable"]:
            steps.append(("nosampler", lambda: suite.run_sampler_off(ctx)))
        steps.append(("trust", lambda: suite.run_trust(ctx)))
        steps.append(("nerves", lambda: nerves.run_nerves(ctx)))
        steps.append(("mcp", lambda: mcp_step.run_mcp(ctx)))
        steps.append(("workers", lambda: worker_step.run_workers(ctx)))
        steps.append(("merge", lambda: merge_step.run_merge(ctx)))
        steps.append(("loops", lambda: loop_step.run_loops(ctx)))
        steps.append(("before", lambda: before_step.run_before(ctx)))
        steps.append(("scale", lambda: scale_step.run_scale(ctx)))
        steps.append(("scale_merge", lambda: scale_step.run_scale_merged(ctx)))
        for name, step in steps:
            if only is None or name in only:
                suite.guarded(ctx, name, step)
    finally:
        log("stopping the private RabbitMQ node")
        node.stop()


def _reap_leftovers(res: Results) -> None:
    """Nothing this run started may outlive it."""
    left = psutil.Process().children(recursive=True)
    for p in left:
        with contextlib.suppress(psutil.Error):
            desc = " ".join(p.cmdline())[:120]
            p.kill()
            res.fail(f"leftover process killed at the end: {p.pid} {desc}")
    psutil.wait_procs(left, timeout=5)


def _write(out: Path, stem: str, data: dict[str, Any], res: Results, cores: int) -> None:
    goals = evaluate(res, data["sampler"])
    data["goals"] = [g.to_json() for g in goals]
    data["figures"] = {k: f.to_json() for k, f in res.figures.items()}
    data["failures"], data["notes"] = res.failures, res.notes
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / f"{stem}.md").write_text(
        render(data, res, goals, [*where_time_goes(res, cores, _interval(data)), *discussion(res)])
    )
    log(f"wrote {out / stem}.md and .json")


def _interval(data: dict[str, Any]) -> float:
    return float(data["sampler"].get("interval") or 1.0)


def _rerender(source: Path, out: Path) -> int:
    """Write the report again from an earlier run's JSON (after the report code changed)."""
    data = json.loads(source.read_text())
    res = Results(notes=list(data["notes"]), failures=list(data["failures"]))
    for key, f in data["figures"].items():
        res.figures[key] = Figure(key, f["label"], f["unit"], f["samples"], f["n"], f["note"])
    goals = evaluate(res, data["sampler"])
    cores = int(data["machine"].get("logical_cpus") or 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.md").write_text(
        render(data, res, goals, [*where_time_goes(res, cores, _interval(data)), *discussion(res)])
    )
    log(f"rendered {out / 'benchmarks.md'} from {source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, about a minute")
    parser.add_argument("--out", type=Path, help="directory for benchmarks.md and .json")
    parser.add_argument(
        "--only",
        help="comma-separated steps (vsmd, floor, nerves, mcp ...): a partial report",
    )
    parser.add_argument(
        "--from-json", type=Path, help="only re-render benchmarks.md from a run's JSON"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (REPO / ("bench/results" if args.quick else "docs"))
    if args.from_json:
        return _rerender(args.from_json, out)
    signal.signal(signal.SIGTERM, _on_term)
    res = Results()
    data: dict[str, Any] = {"plan": plan.to_json(), "machine": {}, "sampler": _sampler()}
    # Other work on the machine skews everything: say how busy it was before we started.
    data["machine"] = {
        "cpu_busy_before_pct": psutil.cpu_percent(interval=2.0),
        "loadavg_start": _loadavg(),
    }
    data["code_hash"] = _code_hash()
    workdir = Path(tempfile.mkdtemp(prefix="vsmd-bench-"))
    start = time.perf_counter()
    try:
        only = set(args.only.split(",")) if args.only else None
        if only is not None:
            res.note(f"only these steps were run: {', '.join(sorted(only))}")
        _run(plan, workdir, res, data, only)
    except Exception as exc:
        res.fail(f"the run stopped early: {type(exc).__name__}: {exc}")
    finally:
        _reap_leftovers(res)
        shutil.rmtree(workdir, ignore_errors=True)
        data["duration_s"] = time.perf_counter() - start
        data["machine"]["loadavg_end"] = _loadavg()
        if _code_hash() != data["code_hash"]:
            res.note(
                "vsmd/ or vsmctl/ changed on disk during the run: processes started after the "
                f"change ran the new code (now {_source()}, sha256 {_code_hash()})"
            )
        data["workdir_removed"] = not workdir.exists()
        _write(out, "benchmarks", data, res, os.cpu_count() or 1)
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
