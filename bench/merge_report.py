"""The report's section on ``memory_merge``: every number comes from the run's figures (keys
``merge.``, taken by bench/merge_step.py)."""

from __future__ import annotations

from bench.goals import num, sizes
from bench.stats import Results
from bench.tables import table

KERNEL_DEFAULT_RATE = 5000  # pages/s: pages_to_scan 100 every 20 ms
WHEN = (
    ("idle", "idle, MCP server ready, no session yet"),
    ("served", "after one MCP session each"),
)


def merge_n(res: Results) -> int | None:
    have = sizes(res, "merge.", ".idle.merged_uss_mib")
    return have[-1] if have else None


def _rows(res: Results, n: int) -> list[list[str]]:
    m, k = res.median, f"merge.{n}"
    rows = []
    for when, what in WHEN:
        got = [
            m(f"{k}.{when}.{key}")
            for key in (
                "plain_uss_mib",
                "merged_uss_mib",
                "plain_pss_total_mib",
                "merged_pss_total_mib",
            )
        ]
        values = [v for v in got if v is not None]
        if len(values) == len(got):
            rows.append([what, *(num(v) for v in values), num(values[2] - values[3])])
    return rows


def merge_section(res: Results) -> list[str]:
    n = merge_n(res)
    if n is None:
        return []
    rows = _rows(res, n)
    if not rows:
        return []
    m, k = res.median, f"merge.{n}"
    rate, cpu = m(f"{k}.pages_to_scan_per_s"), m(f"{k}.ksmd_cpu_pct")
    settle, later = m(f"{k}.settle_s"), m(f"{k}.settle_later_s")
    out = [
        "## Page merging (`memory_merge`)",
        "",
        f"Two daemons up side by side with {n:,} idle VSMs each, both with the MCP server (the "
        "default), one with `memory_merge = true`, while the kernel's KSM ran "
        f"(the step set it to scan {num(rate or 0)} pages/s and put the machine's settings "
        "back afterwards). USS is the median VSM's; PSS is summed over the daemon's VSMs, "
        "what they cost the machine together.",
        "",
    ]
    out += table(
        [
            "When",
            "USS, merging off (MiB)",
            "USS, merging on (MiB)",
            "PSS of all, off (MiB)",
            "PSS of all, on (MiB)",
            "saved (MiB)",
        ],
        rows,
    )
    if settle is not None and cpu is not None:
        out.append(
            f"- The merged VSMs' USS held still {num(settle)} s after they were all up "
            f"({num(later or 0)} s after the sessions); KSM's thread used {num(cpu)}% of a "
            f"core meanwhile (the author's reading: that CPU follows the scan rate, here "
            f"{num((rate or 0) / KERNEL_DEFAULT_RATE)} times the kernel's default of "
            f"{KERNEL_DEFAULT_RATE:,} pages/s; at the default a pass takes that much longer)."
        )
    return [*out, ""]
