"""The choices the figures support, and what stands behind each missed goal, in this run's
numbers. Rendered after "Where the time goes"; every number comes from the run's results."""

from __future__ import annotations

from bench.analysis import _line
from bench.stats import Results


def _default_strategy(res: Results) -> list[str | None]:
    m = res.median
    return [
        _line(
            "**Default: the fork server with gc.freeze.** spawn -> ready {} ms against {} ms for "
            "a fresh interpreter (exec), {} MiB of USS per idle VSM against {} MiB, and a burst "
            "of 100 in {} s against {} s.",
            m("vsmd.spawn_ready_ms"),
            m("exec.spawn_ready_ms"),
            m("vsmd.mem.100.vsm_uss_mib"),
            m("exec.mem.100.vsm_uss_mib"),
            m("vsmd.burst.100.up_s"),
            m("exec.burst.100.up_s"),
        ),
        _line(
            "gc.freeze stays on: it costs nothing measurable at spawn ({} ms with, {} ms "
            "without), and once an agent runs a full collection it keeps a VSM's USS at {} MiB "
            "instead of {} MiB (the collector no longer writes to every inherited page) and a "
            "burst of 100 at {} s instead of {} s.",
            m("vsmd.spawn_ready_ms"),
            m("nofreeze.spawn_ready_ms"),
            m("gcfreeze.mem.100.vsm_uss_mib"),
            m("gcnofreeze.mem.100.vsm_uss_mib"),
            m("gcfreeze.burst.100.up_s"),
            m("gcnofreeze.burst.100.up_s"),
        ),
        "- A direct fork of the daemon is not offered: the daemon has threads (the fork-server "
        "reader, the signal watcher, pika's wake-ups), and a fork of a threaded process may "
        "inherit a lock held by another thread. The floor above, a single-threaded parent "
        "with pika pre-imported forking each child, is what such a fork would cost.",
        "- `exec` stays available for users who want nothing shared with the fork server "
        '(`spawn_strategy = "exec"`).',
    ]


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _missed(res: Results) -> list[str | None]:
    m = res.median
    sup = m("supervisord.1000.cpu_children_s")
    vsm = m("vsmd.burst.1000.cpu_vsms_s")
    broker_sup, broker_vsm = m("supervisord.1000.cpu_broker_s"), m("vsmd.burst.1000.cpu_broker_s")
    bound = None
    if None not in (sup, vsm, broker_sup, broker_vsm):
        bound = (sup + broker_sup) / (vsm + broker_vsm)  # type: ignore[operator]
    ratio = _over(m("supervisord.1000.up_s"), m("vsmd.burst.1000.up_s"))
    uss = m("vsmd.mem.1000.vsm_uss_mib")
    # Each line only when its goal was missed in this run (the goals table has the verdicts).
    return [
        None
        if ratio is None or ratio >= 10.0
        else _line(
            "**supervisord >= 10x slower: missed.** Both are CPU-bound on 2 cores. For 1,000 "
            "processes supervisord's children use {} CPU s (a fresh interpreter importing pika "
            "each) and the broker {} CPU s; vsmd's VSMs use {} CPU s and the broker {} CPU s. "
            "The ratio of the CPU work, about {}x, bounds the wall-time ratio on this machine, "
            "whatever vsmd does (vsmd took {}x the floor's wall time for the same 1,000). 10x "
            "would need machines "
            "where supervisord's per-process interpreter start is dearer relative to the broker, "
            "or cheaper AMQP connection set-up (most of a VSM's start, see above).",
            sup,
            broker_sup,
            vsm,
            broker_vsm,
            bound,
            _over(m("vsmd.burst.1000.up_s"), m("floor.1000.up_s")),
        ),
        None
        if uss is None or uss <= 6.0
        else _line(
            "**Idle VSM USS <= 6 MiB: missed by {} MiB.** An idle VSM writes to {} MiB of pages "
            "after the fork: its own AMQP connection and channel objects and buffers, the "
            "runtime and agent objects it creates, and the inherited pages whose objects' "
            "reference counts it touches. Candidates: build more of the per-VSM state in the "
            "fork server before forking.",
            uss - 6.0,
            uss,
        ),
    ]


def discussion(res: Results) -> list[str]:
    lines = [ln for ln in (*_default_strategy(res), *_missed(res)) if ln]
    return ["## Choices and missed goals", "", *lines, ""] if lines else []
