"""100,000 random admin requests, valid, near-valid and garbage, pipelined at a real daemon: every
one gets exactly one reply with a known code, the daemon neither crashes nor logs a traceback, its
registry holds afterwards what it held before (plus what the valid spawns made), and its memory
stays within a generous bound. Prints the figures kept in docs/reliability.md ("Fuzz")."""

from __future__ import annotations

import collections
import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pika
import pika.spec
import psutil
import pytest

from tests.support.harness import DaemonProc, running_daemon
from vsmd.bus.rpc import REPLY_TO
from vsmd.bus.topology import Topology
from vsmd.protocol import SpawnConfig

pytestmark = pytest.mark.stress

N = 100_000
WINDOW = 500  # requests in flight
SPAWN_EVERY = 5_000  # a few real spawns: 20 VSMs in all
KNOWN_CODES = {
    "BAD_JSON",
    "BAD_REQUEST",
    "TOO_LARGE",
    "UNKNOWN_COMMAND",
    "NOT_FOUND",
    # What a spawn may meet on a loaded machine; never INTERNAL.
    "THROTTLED",
    "QUOTA_EXCEEDED",
    "CONFLICT",
}
CONFIG = {"max_total": 100, "spawn_timeout": 60.0}
MIB = 1 << 20
DEEP = "deep-value-here"


class Requests:
    """A seeded mix of valid commands, near-valid ones and garbage, as admin request bodies."""

    def __init__(self, seed: int, keeper: str) -> None:
        self.rng = random.Random(seed)
        self.keeper = keeper

    def some_id(self) -> str:
        # Never another live VSM: a random id (NOT_FOUND) or the keeper (which only is read).
        return (
            self.keeper
            if self.rng.random() < 0.3
            else uuid.UUID(int=self.rng.getrandbits(128)).hex[:12]
        )

    def valid(self) -> dict[str, Any]:
        r = self.rng
        made: list[Any] = [
            lambda: {"cmd": "ping"},
            lambda: {"cmd": "list", "args": {"recursive": r.random() < 0.5}},
            lambda: {"cmd": "show", "args": {"id": self.some_id()}},
            lambda: {
                "cmd": "events",
                "args": {"since": r.randrange(1000), "limit": r.randrange(50)},
            },
            lambda: {"cmd": "state", "args": {"id": self.some_id()}},
            lambda: {"cmd": "policy_show", "args": {"id": self.some_id()}},
            # Terminate only ids that name nothing: the keeper must stay.
            lambda: {
                "cmd": "terminate",
                "args": {"id": uuid.UUID(int=r.getrandbits(128)).hex[:12]},
            },
        ]
        req: dict[str, Any] = r.choice(made)()
        return req

    def junk(self, depth: int = 0) -> Any:
        r = self.rng
        choices: list[Any] = [
            None,
            r.random() < 0.5,
            r.randrange(-(2**70), 2**70),
            r.uniform(-1e300, 1e300),
            "".join(chr(r.randrange(0x20, 0x2FFFF)) for _ in range(r.randrange(8))),
            "x" * r.randrange(300),
        ]
        if depth < 3:
            choices.append([self.junk(depth + 1) for _ in range(r.randrange(3))])
            choices.append({str(self.junk(3)): self.junk(depth + 1) for _ in range(r.randrange(3))})
        return r.choice(choices)

    def near_valid(self) -> dict[str, Any]:
        r = self.rng
        req: dict[str, Any] = self.valid() if r.random() < 0.8 else {"cmd": "spawn", "args": {}}
        args = req.setdefault("args", {})
        how = r.randrange(8)
        if how == 0:
            req["v"] = r.choice([0, 2, 99, "1", True, 1.5, None, 2**64])
        elif how == 1:
            req["cmd"] = r.choice(["explode", "", "PING", "ping ", str(self.junk())])
        elif how == 2:
            args["colour" + str(r.randrange(100))] = self.junk()  # an unknown field
        elif how == 3:
            args[r.choice(["id", "recursive", "since", "limit", "parent", "timeout"])] = self.junk()
        elif how == 4:
            # Spliced into the JSON text by body(): too deep for the json module to write.
            args["config" if req["cmd"] == "spawn" else "id"] = DEEP
        elif how == 5:
            req["args"] = self.junk()
        elif how == 6:
            args["name"] = "Not A Name " + chr(r.randrange(0x80, 0x2FFF))
        else:
            args["restart"] = "sometimes"
        if args.get("colour") is None and isinstance(req.get("args"), dict):
            # A near-valid spawn that was taken would leave a VSM behind: it must be refused.
            req["args"]["colour"] = 1
        return req

    def garbage(self) -> bytes:
        r, pick = self.rng, self.rng.randrange(6)
        if pick == 0:
            return r.randbytes(r.randrange(64))
        if pick == 1:
            return orjson.dumps(r.choice([[1, 2], "ping", 42, None, True]))
        if pick == 2:
            return b'{"v": 1, "cmd": "ping"'[: r.randrange(1, 22)]  # cut short
        if pick == 3:
            return (
                b'{"v": 1, "cmd": "spawn", "args": {"config": {"pad": "' + b"x" * 70_000 + b'"}}}'
            )
        if pick == 4:
            return b'{"v": 1, "cmd": "show", "args": {"id": "\\ud800"}}'  # a lone surrogate
        return b'{"v": 1e400, "cmd": NaN}'

    def body(self, i: int) -> tuple[str, bytes]:
        """The ``i``-th request: its command name (for the tally) and body."""
        if i % SPAWN_EVERY == SPAWN_EVERY // 2:
            return "spawn", orjson.dumps({"v": 1, "cmd": "spawn", "args": {"name": f"fz{i}"}})
        roll = self.rng.random()
        if roll < 0.4:
            req = self.valid()
        elif roll < 0.7:
            req = self.near_valid()
        else:
            # Oversized bodies stay rare: 70 KB each.
            raw = self.garbage()
            while len(raw) > 65536 and self.rng.random() < 0.99:
                raw = self.garbage()
            return "garbage", raw
        raw = json.dumps(req).encode("utf-8", "surrogatepass")
        depth = self.rng.choice([199, 250, 300, 1100])
        raw = raw.replace(b'"' + DEEP.encode() + b'"', b"[" * depth + b"1" + b"]" * depth)
        return str(req.get("cmd"))[:20], raw


class Pipeline:
    """Publishes requests on one channel with direct reply-to, ``WINDOW`` of them in flight."""

    def __init__(self, d: DaemonProc) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(d.broker_url))
        self.ch = self.conn.channel()
        self.queue = Topology(d.namespace).admin_queue
        self.pending: dict[str, str] = {}  # correlation id -> command
        self.replies: dict[str, dict[str, Any]] = {}
        self.codes: collections.Counter[str] = collections.Counter()
        self.strays: list[str] = []  # replies to nothing pending: a second reply, or a wrong id
        self.spawned: list[str] = []
        self.ch.basic_consume(REPLY_TO, self.on_reply, auto_ack=True)

    def on_reply(self, _ch: Any, _m: Any, props: pika.spec.BasicProperties, body: bytes) -> None:
        corr = props.correlation_id or ""
        cmd = self.pending.pop(corr, None)
        if cmd is None:
            self.strays.append(corr)
            return
        reply = orjson.loads(body)
        code = "ok" if reply["ok"] else reply["error"]["code"]
        self.codes[code] += 1
        if reply["ok"] and cmd == "spawn":
            self.spawned.append(reply["result"]["id"])
        if code != "ok":
            assert reply["error"]["message"], reply
        self.replies[corr] = {"cmd": cmd, "code": code}

    def send(self, corr: str, cmd: str, body: bytes) -> None:
        props = pika.BasicProperties(reply_to=REPLY_TO, correlation_id=corr)
        self.ch.basic_publish("", self.queue, body, props)
        self.pending[corr] = cmd

    def run(self, requests: Iterator[tuple[str, bytes]]) -> None:
        last_progress = time.monotonic()
        done = 0
        for i, (cmd, body) in enumerate(requests):
            self.send(f"fz-{i}", cmd, body)
            while len(self.pending) >= WINDOW:
                last_progress = self.wait(last_progress)
            done = i + 1
        assert done == N
        while self.pending:
            last_progress = self.wait(last_progress)

    def wait(self, last_progress: float) -> float:
        before = len(self.pending)
        self.conn.process_data_events(time_limit=1.0)
        if len(self.pending) < before:
            return time.monotonic()
        assert time.monotonic() - last_progress < 60, (
            f"no reply for 60 s; {len(self.pending)} pending, e.g. {list(self.pending)[:5]}"
        )
        return last_progress

    def close(self) -> None:
        self.conn.close()


def registry(d: DaemonProc) -> list[tuple[str, str, str]]:
    return sorted((v.id, v.path, v.status) for v in d.client().list_child_vsms())


def test_a_hundred_thousand_random_admin_requests(broker_url: str, tmp_path: Path) -> None:
    with running_daemon(broker_url, tmp_path / "state", config=CONFIG) as d:
        c = d.client(timeout=60)
        keeper = c.spawn_recursive_vsm(None, SpawnConfig(name="keeper"))
        before = registry(d)
        daemon = psutil.Process(d.proc.pid)
        rss_before = daemon.memory_info().rss
        gen = Requests(seed=20_240_601, keeper=keeper.id)
        pipe = Pipeline(d)
        started = time.monotonic()
        try:
            pipe.run(gen.body(i) for i in range(N))
            seconds = time.monotonic() - started
            # Absence of a second reply can only be seen over a window: any would come within it.
            pipe.conn.process_data_events(time_limit=2.0)
        finally:
            pipe.close()
        rss_after = daemon.memory_info().rss
        report(pipe, seconds, rss_before, rss_after)

        assert pipe.strays == []
        assert len(pipe.replies) == N
        assert set(pipe.codes) <= KNOWN_CODES | {"ok"}, pipe.codes
        assert d.proc.poll() is None, d.log()[-5000:]
        assert c.ping()["pong"] is True
        assert 1 <= len(pipe.spawned) <= N // SPAWN_EVERY
        after = registry(d)
        spawned = [row for row in after if row[0] in pipe.spawned]
        assert sorted([*before, *spawned]) == after
        for vsm_id in pipe.spawned:
            assert c.terminate_child_vsm(vsm_id) == [vsm_id]
        assert registry(d) == before
        # Generous: the daemon's memory must not grow with the number of requests handled.
        assert rss_after < rss_before + 256 * MIB, (rss_before, rss_after)
        log = d.log()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


def report(pipe: Pipeline, seconds: float, rss_before: int, rss_after: int) -> None:
    by_cmd: collections.Counter[str] = collections.Counter(r["cmd"] for r in pipe.replies.values())
    print(
        f"\nfuzz admin: {N} requests in {seconds:.1f} s, {N / seconds:.0f} requests/s, "
        f"window {WINDOW}\n"
        f"replies by code: {dict(pipe.codes.most_common())}\n"
        f"requests by command: {dict(by_cmd.most_common(12))}\n"
        f"spawned and terminated: {len(pipe.spawned)}\n"
        f"daemon RSS: {rss_before / MIB:.1f} MiB before, {rss_after / MIB:.1f} MiB after"
    )
