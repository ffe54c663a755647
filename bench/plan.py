"""How much of everything to measure: the full run (~25 min on 2 cores) or --quick (~3 min)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Between spawns measured with the fork server idle: long past a VSM's start, so the fork
# server's standby (when on) is forked and connected before the next.
APART_GAP_S = 0.3


@dataclass(frozen=True)
class Plan:
    quick: bool
    ping_reps: int  # admin round trips of ping
    latency_reps: int  # sequential spawn -> ready of one VSM
    apart_reps: int  # VSMs spawned one at a time with the fork server idle before each
    bursts: tuple[tuple[int, int], ...]  # (N, repeats): N spawns at once, then N terminates
    state_sizes: tuple[int, ...]  # N at which list, vsmctl, memory and idle CPU are measured
    list_reps: int
    cli_reps: int
    idle_seconds: float
    tree: tuple[int, int]  # (fanout, levels) of the built-in tree agent under one root
    tree_repeats: int
    variant_latency: int  # sequential spawns for the no-gc.freeze fork server
    variant_burst: tuple[int, int]  # (N, repeats) for every strategy; memory compared there
    exec_latency: int  # sequential spawns for the exec strategy (about a second each)
    exec_burst: tuple[int, int]
    gc_burst: tuple[int, int]  # VSMs whose agent runs gc.collect(), with and without gc.freeze
    peers: tuple[tuple[int, int, int], ...]  # (N, floor and multiprocessing repeats, supervisord)
    nerve_probes: int  # state writes child -> parent, one at a time, for the latency
    nerve_gap: float  # s between two of them
    nerve_rr: int  # request/reply parent -> child
    # rounds the probes and round trips are split into, each next to the bare client's
    nerve_pair_rounds: int
    nerve_children: int  # children writing at once for the rate
    nerve_seconds: float  # how long each writes
    # writes/s of all of them together, on a fixed schedule: twice the goal, so that what
    # arrives is what the tree carries, not what the writers were asked for
    nerve_offered: int
    nerve_rate_repeats: int
    nerve_floor_cap: int  # most messages of the rate's floor (0: as many as vsmd's deltas)
    nerve_subtree: int  # VSMs under the root that broadcasts
    nerve_rounds: int  # broadcasts, 0.5 s apart
    mcp_calls: int  # sequential MCP tools/call parent -> child (and as many bare round trips)
    mcp_clients: int  # MCP sessions calling one VSM at once, for the rate
    mcp_seconds: float  # how long each of them calls
    mcp_rate_repeats: int
    mcp_vsms: int  # idle VSMs per daemon whose memory is measured with and without MCP
    worker_tasks: tuple[tuple[int, int], ...]  # (workers, tasks submitted to them in one batch)
    worker_repeats: int  # batches of each, vsmd and the floor taking turns
    scale: tuple[int, int]  # (VSMs per batch, largest N) of the scale step

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


FULL = Plan(
    quick=False,
    ping_reps=100,
    latency_reps=100,
    apart_reps=20,
    bursts=((100, 3), (300, 3), (1000, 3)),
    state_sizes=(1, 100, 1000),
    list_reps=50,
    cli_reps=20,
    idle_seconds=10.0,
    tree=(10, 3),
    tree_repeats=2,
    variant_latency=50,
    variant_burst=(100, 3),
    exec_latency=20,
    exec_burst=(100, 2),
    gc_burst=(100, 1),
    peers=((1, 20, 5), (100, 3, 2), (300, 3, 2), (1000, 3, 1)),
    nerve_probes=200,
    nerve_gap=0.02,
    nerve_rr=500,
    nerve_pair_rounds=5,
    nerve_children=100,
    nerve_seconds=3.0,
    nerve_offered=40_000,
    nerve_rate_repeats=2,
    nerve_floor_cap=0,
    nerve_subtree=1000,
    nerve_rounds=10,
    mcp_calls=1000,
    mcp_clients=10,
    mcp_seconds=3.0,
    mcp_rate_repeats=2,
    mcp_vsms=100,
    worker_tasks=((1, 2000), (10, 4000)),
    worker_repeats=3,
    scale=(500, 3000),
)

QUICK = Plan(
    quick=True,
    ping_reps=20,
    latency_reps=20,
    apart_reps=5,
    bursts=((20, 2),),
    state_sizes=(1, 20),
    list_reps=10,
    cli_reps=5,
    idle_seconds=3.0,
    tree=(3, 2),
    tree_repeats=1,
    variant_latency=10,
    variant_burst=(20, 1),
    exec_latency=3,
    exec_burst=(10, 1),
    gc_burst=(20, 1),
    peers=((1, 5, 2), (20, 2, 1)),
    nerve_probes=50,
    nerve_gap=0.02,
    nerve_rr=100,
    nerve_pair_rounds=2,
    nerve_children=20,
    nerve_seconds=1.0,
    nerve_offered=40_000,
    nerve_rate_repeats=1,
    nerve_floor_cap=3000,
    nerve_subtree=50,
    nerve_rounds=5,
    mcp_calls=200,
    mcp_clients=10,
    mcp_seconds=1.0,
    mcp_rate_repeats=1,
    mcp_vsms=30,
    worker_tasks=((1, 200), (10, 400)),
    worker_repeats=1,
    scale=(100, 200),
)
