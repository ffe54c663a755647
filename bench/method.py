"""How each figure is taken: the text of the report's Method section."""

from __future__ import annotations

from typing import Any


def method(data: dict[str, Any]) -> list[str]:
    plan = data["plan"]
    fanout, levels = plan["tree"]
    total = sum(fanout**i for i in range(levels + 1))
    sizes = ", ".join(f"{n:,} x{r}" for n, r in plan["bursts"])
    return [
        "## Method",
        "",
        "- **One broker, one run.** The run starts a private RabbitMQ node (vsmd's "
        "`EmbeddedBroker`, open-files limit raised) and stops it at the end; every contender "
        "uses it, one after the other, under unique names. The machine's shared broker is never "
        "used. The run ends by checking that no process it started is left.",
        "- **vsmd** runs as `vsmd run --config ...` (a subprocess, as an operator runs it) with "
        "`max_total = 1200`, `max_children = 1000`, `spawn_timeout = 120`, `stop_timeout = 10`, "
        "`log_level = WARNING`; everything else is the default (sampler, throttles, heartbeat).",
        "- **spawn → ready**: `VsmClient.spawn_recursive_vsm()` returns when the daemon has heard "
        'the VSM\'s "ready"; one VSM at a time, each terminated before the next '
        f"({plan['latency_reps']} spawns).",
        f"- **Burst** ({sizes} repeats): N spawn requests published at once on one AMQP "
        "connection (reply-to, correlation ids), so the daemon is not paced by a client round "
        "trip; *up* ends at the last reply. *Down*: N terminate requests at once, until the last "
        "reply (the daemon answers when the process is reaped).",
        f"- **Tree**: one root VSM with the built-in `tree` agent, `fanout={fanout}`, "
        f"`levels={levels}`: {total:,} VSMs, each asking the daemon over the bus for its own "
        'children one after the other. *Up* ends at the last "ready" seen on the namespace\'s '
        "exchange (`up.#.ready`); *down* is the terminate of the root (leaves first).",
        "- **list**: `VsmClient.list_child_vsms()` (every VSM) and the same request on an "
        "already open channel. **vsmctl**: `subprocess.run` of `.venv/bin/vsmctl`, whole "
        "process, repeated.",
        f"- **Idle cost**: with N VSMs up and nothing asked, CPU over {plan['idle_seconds']:g} s "
        "from /proc/PID/task/*/schedstat (ns precision) of the daemon, the fork server, every "
        "VSM and the broker. **Memory** after that window: psutil `memory_full_info()` "
        "(RSS, USS, PSS) of every VSM; RSS of the daemon, fork server and broker.",
        "- **Floor** (`bench/forkfloor.py`): one single-threaded parent with pika and "
        "`bench/child.py` imported (and gc.freeze, as vsmd's fork server) calls `os.fork()` N "
        "times at once; each child makes the broker operations of a root VSM's start, one for "
        "one: a pika connection, a channel in confirm mode, qos, an exclusive inbox, four "
        "bindings on a topic exchange without waiting for bind-ok, a consumer, and "
        '"ready" published through the exchange, mandatory and confirmed; then it idles serving '
        "heartbeats and closes on SIGTERM. No daemon, no fork-server hop, no admission, no "
        "journal. *Down*: SIGTERM to every child, until the parent has reaped them all. Before "
        "every run of every contender the bench waits until the broker's open files have held "
        "still for 1 s (it has closed the previous run's connections).",
        "- **Peers** run `bench/child.py`'s lighter workload: pika connection, channel, qos, "
        'declare and consume an own exclusive queue, publish "ready" straight to the '
        "collector's queue, idle serving heartbeats, close on SIGTERM. **multiprocessing**: "
        "the `forkserver` start method, pika and the child pre-imported, its fork server "
        "warmed up; N `Process.start()` then N `terminate()`. "
        "**supervisord** (from the `bench` extra): one program with `numprocs = N`, "
        "`autostart = false`, `startsecs = 0`; `startAllProcesses(wait=False)` over XML-RPC "
        'until N "ready", then `stopAllProcesses(wait=True)`.',
        '- **Strategies**: `spawn_strategy = "exec"`; and the fork server without gc.freeze '
        "(`gc_freeze = false`). gc.freeze only "
        "matters once a VSM runs a full collection, so both fork-server settings are measured "
        "again with an agent (`bench/agents.py`) that calls `gc.collect()` at start. "
        "**Sampler off**: the default daemon with `sample_interval = 86400`.",
        *_nerves(plan),
        *_mcp(plan),
        *_workers(plan),
        *_merge_and_loops(plan),
        "",
    ]


def _pair_rounds(plan: dict[str, Any]) -> str:
    rounds = plan.get("nerve_pair_rounds")
    if not rounds:
        return ""  # a run from before the rounds
    return (
        f"Latency and request/reply are split into {rounds} rounds; in each, the pair's share "
        "and the bare client's share of both (below) are taken one after the other, the floor "
        "first in every other round, with the daemon and the pair up and idle meanwhile. "
    )


def _nerves(plan: dict[str, Any]) -> list[str]:
    if "nerve_probes" not in plan:
        return []  # a run from before these figures
    cap = plan["nerve_floor_cap"]
    return [
        '- **Between VSMs** (a daemon with `agent_modules = ["bench.agents"]`; agents in '
        "`bench/nerve_agents.py`; times from `CLOCK_MONOTONIC`, one clock for every process on "
        "Linux). *State latency*: a child writes `ctx.state.set` "
        f"{plan['nerve_probes']} times, {plan['nerve_gap'] * 1e3:g} ms apart, each value "
        "carrying its write time; the parent reads `ctx.state.child_get` on every turn of "
        "its loop from 3 ms before a write is due until it sees it (the agent API has no call "
        "on arrival, and a timer wakes no finer than 1 ms). *Rate*: "
        f"{plan['nerve_children']} children of one parent each write for "
        f"{plan['nerve_seconds']:g} s on a fixed schedule, together "
        f"{plan['nerve_offered']:,} writes/s (twice the goal: what arrives is what the tree "
        "carries, not what the writers were asked for), the i-th write of a run to key `w<i>`, "
        "so that no write replaces another before it is sent; "
        "a writer behind its schedule makes the writes due at once and sleeps at least 1 ms (a "
        "writer that never sleeps takes the CPU the broker needs to confirm a delta), and "
        "after each turn's writes it sets a progress mark, which travels with them or after "
        "them. The parent reads the marks (`ctx.state.child_get`) until it has every child's "
        "last: the updates counted are those the marks say its replica holds. A queue of the "
        "bench bound to `toparent.<parent id>.*` counts the deltas "
        "(the broker routes each to one more queue). *Request/reply*: `ctx.request` of the "
        f"parent to its child, {plan['nerve_rr']} times after 5 to warm up. "
        + _pair_rounds(plan)
        + "*Broadcast*: a "
        f"root with {plan['nerve_subtree']:,} children `ctx.broadcast`s "
        f"{plan['nerve_rounds']} times, 0.5 s after each `ctx.broadcast` returned; each child "
        "notes the arrival time and sends them all to the root afterwards; *until all have it* "
        "is the latest arrival of a round. The CPU of the VSMs, the broker, the daemon and the "
        "machine's kdamond threads (where it runs them) is taken around the root's rounds and "
        "divided by the messages received.",
        "- **Bare client** (`bench/nerve_floor.py`): the VSM's own AMQP client (vsmd/amqp/) "
        "without the runtime, on uvloop; two processes on the same broker, one connection "
        "each, messages of vsmd's size (a delta, a call envelope). Latency: one message at a "
        "time, as far apart as the probes. Rate: as many messages as vsmd's "
        "deltas"
        + (f" (at most {cap:,})" if cap else "")
        + ", published at once without confirms, consumed without acks. Request/reply: "
        "direct reply-to, plain (one channel a side, no acks) and with a VSM's channels (requests "
        "published mandatory without confirms; the inbox on a confirming channel with a "
        "prefetch of 64, each request acked once answered; the reply on a second channel "
        "without confirms). Broadcast: one process that has imported the client and uvloop forks "
        f"{plan['nerve_subtree']:,} receivers (as the fork server forks VSMs); each opens its own "
        "connection, binds an exclusive inbox to a topic exchange, consumes it with a prefetch "
        "of 64 and acks each message once it has noted its arrival; the process then publishes "
        "the same rounds, 0.5 s apart, from a connection of its own, taking the CPU of the "
        "receivers, the broker and kdamond around them.",
    ]


def _mcp(plan: dict[str, Any]) -> list[str]:
    if "mcp_calls" not in plan:
        return []  # a run from before these figures
    return [
        '- **MCP** (a daemon with `agent_modules = ["bench.agents"]`; agents in '
        "`bench/mcp_agents.py`). The child adds a tool that does nothing (`noop`) with "
        "`ctx.mcp.tool`; the parent opens `ctx.mcp_client(child)` and calls `noop`, then the "
        f"built-in `status`, {plan['mcp_calls']:,} times each, one call at a time, after 5 to "
        "warm up (the first also lists the tools), timing each with `time.perf_counter`; then "
        f"`ctx.request` of the same child as often. *Rate*: the parent opens "
        f"{plan['mcp_clients']} sessions with the child and each calls `noop` one call after "
        f"another for {plan['mcp_seconds']:g} s ({plan['mcp_rate_repeats']} runs); the "
        "window ends when the last call is back. *CPU per call*: the calling VSM, the called "
        "VSM and the broker, from /proc/PID/task/*/schedstat read by the parent just before "
        "and after the calls, divided by the calls. *Floor*: bare-client request/reply "
        "(`bench/nerve_floor.py`, direct reply-to) with requests and replies of the sizes a "
        "`noop` tools/call and its answer have on the wire (taken from one call on a session "
        "of the bench's own), as many round trips, plain and with a VSM's channels (as "
        "between VSMs above).",
        "- **MCP memory**: two daemons up at once, one with `mcp_server = false`, both with "
        f"`bench.agents` loaded; {plan['mcp_vsms']} idle VSMs of the default agent each, spawned "
        "at once. USS (psutil `memory_full_info()`) of every VSM once two readings 0.2 s apart "
        "agree on the median; then the bench opens one MCP session with each VSM of the daemon "
        "with MCP in turn (initialize, `status`, close; its own connection), and both daemons' "
        "VSMs are measured again the same way.",
    ]


def _workers(plan: dict[str, Any]) -> list[str]:
    if "worker_tasks" not in plan:
        return []  # a run from before these figures
    batches = ", ".join(f"{n:,} tasks through {k}" for k, n in plan["worker_tasks"])
    return [
        "- **Workers** (a daemon of its own; `worker` VSMs with `tasks_modules = "
        '["bench.worker_tasks"]` and otherwise the default settings, `concurrency` 4; the '
        "ten under a parent of the default agent). One process of the bench "
        "(`bench/worker_floor.py`) submits tasks as `TaskSubmitter` does: a task envelope each, "
        "persistent, mandatory, with publisher confirms and direct reply-to on the publishing "
        "channel; but 64 publishes in flight at once, not one, and the messages built before "
        "the window. It first runs 5 tasks one at a time through each queue, then publishes "
        f"a batch ({batches}) spread over the queues in turn and waits for every result; "
        "tasks/s is the batch over the time from its first publish until the last result. The "
        "task does nothing: a plain function (the worker runs it in one of its threads), and "
        "for one worker also an `async def` (run on the VSM's loop). *Floor*: the same "
        "submitter against bare-client consumers (vsmd/amqp/ without the runtime), one process "
        "and durable queue each, "
        "declared as a worker declares its queue: a consuming channel with prefetch 4 and "
        "manual acks; each delivery is decoded, the same no-op function called on the loop, "
        "its result published with confirms to the reply-to on the connection's other channel "
        "(as a VSM's replies go on its main one), then acked. vsmd and the floor take turns, "
        f"{plan['worker_repeats']} {'batch' if plan['worker_repeats'] == 1 else 'batches'} of "
        "each. *CPU per task*: the workers or consumers, "
        "the daemon and the parent, and the broker from /proc/PID/task/*/schedstat read by the "
        "bench around the batch, the submitter its own; divided by the tasks.",
    ]


def _merge_and_loops(plan: dict[str, Any]) -> list[str]:
    n = plan.get("mcp_vsms")
    if n is None:
        return []
    return [
        f"- **Page merging** (`bench/merge_step.py`): two daemons with {n:,} idle VSMs each, "
        "both with the MCP server, one with `memory_merge = true`. The step switches the "
        "kernel's KSM on for its window (`run`, `pages_to_scan`, `sleep_millisecs` in "
        "/sys/kernel/mm/ksm, put back as found at its end; it needs root and Linux 6.4+, "
        "otherwise the run notes it was not measured). Figures are taken once the merging "
        "daemon's median USS moved less than 0.05 MiB over one full KSM pass (compared from the "
        "fourth pass on: KSM merges a page only on the pass after the one that saw it "
        "unchanged), then again after one MCP session with each VSM of both daemons. *PSS of "
        "all*: psutil PSS summed over a daemon's VSMs. *KSM's CPU*: the ksmd thread's "
        "/proc schedstat from all VSMs up until the first figures.",
        "- **Event loops** (`bench/loop_step.py`): two daemons side by side with "
        '`event_loop = "uvloop"` and `"asyncio"`, the agents of the MCP step; in turns, each '
        "measures a quarter of the MCP step's calls (tools/call of `noop` and `ctx.request`, "
        "parent to child) and a quarter of its spawns (spawn → ready with `VsmClient`, each "
        "terminated before the next).",
        "- **Before the asyncio runtime** (`bench/before_step.py`): the tree of git `d0d971f^` "
        "(the last whose VSMs ran on pika in threads) taken out of git into the run's work "
        "directory and started as a second daemon on the same node, next to today's with its "
        "defaults. One spawn → ready at a time on each side in turns (admin requests on an "
        "open channel, the same for both), then N idle VSMs on one side at a time in the order "
        "old, now, now, old: the burst that brings them up, and their USS once its median held "
        "still after at least 3 s idle.",
    ]
