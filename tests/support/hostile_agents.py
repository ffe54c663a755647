"""A hostile agent for the trust-boundary tests: it tries every attack of docs/security.md.

Loaded with ``agent_modules = [..., "tests.support.hostile_agents"]``. ``handle("attack", ...)``
runs them all from inside its VSM and answers, per attack, what happened: ``refused ...`` (by
the broker, the daemon, the target VSM or the kernel) or ``ALLOWED ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import orjson
import pika
import pika.exceptions

from vsmd.agents import AgentContext, AgentRegistry, AsyncAgent, Sender
from vsmd.security.token_service import fetch_token_blocking
from vsmd.spec import VsmSpec

Outcome = dict[str, str]


def find_spec(root: object) -> VsmSpec:
    """What hostile code does: walk from the context object to whatever it can reach."""
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(root, 0)]
    while todo:
        obj, depth = todo.pop()
        if isinstance(obj, VsmSpec):
            return obj
        if id(obj) in seen or depth > 4:
            continue
        seen.add(id(obj))
        for value in getattr(obj, "__dict__", {}).values():
            todo.append((value, depth + 1))
    raise LookupError("no spec reachable from the context")


def readable_regions() -> Iterator[tuple[int, int]]:
    with open("/proc/self/maps") as maps:
        for line in maps:
            addr, perms = line.split()[:2]
            if perms.startswith("r") and "[vvar]" not in line and "[vsyscall]" not in line:
                start, end = (int(x, 16) for x in addr.split("-"))
                yield start, end


def contains(data: bytes, secret: dict[str, Any]) -> bool:
    """Whether ``data`` holds the secret, known here only by its first 4 bytes, length and
    SHA-256: the secret itself never enters this process through the test."""
    prefix, size = bytes.fromhex(secret["prefix"]), int(secret["len"])
    at = data.find(prefix)
    while at != -1:
        if hashlib.sha256(data[at : at + size]).hexdigest() == secret["sha256"]:
            return True
        at = data.find(prefix, at + 1)
    return False


def dumpable() -> None:
    """Undo the daemon's PR_SET_DUMPABLE 0 (after a uid change /proc/self is root's): hostile
    code can, so the scans below see what it would see."""
    ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)


def scan_memory(secrets: list[dict[str, Any]]) -> list[str]:
    """The names of the secrets found anywhere in this process's memory (freed included)."""
    dumpable()
    found: set[str] = set()
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        for start, end in readable_regions():
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            found.update(s["name"] for s in secrets if contains(chunk, s))
    return sorted(found)


class HostileAgent(AsyncAgent):
    async def handle(
        self, ctx: AgentContext, kind: str, body: dict[str, Any], sender: Sender
    ) -> dict[str, Any]:
        spec = find_spec(ctx)
        if kind == "flood":  # admin requests, one after the other, each refused
            return await asyncio.to_thread(Attacks(spec, body).flood, int(body["n"]))
        if kind != "attack":
            return {"echo": body}
        return await asyncio.to_thread(Attacks(spec, body).run_all)


class Attacks:
    def __init__(self, spec: VsmSpec, body: dict[str, Any]) -> None:
        self.spec = spec
        self.b = body
        url = urlsplit(spec.broker_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 5672
        self.vhost = url.path.lstrip("/") or "/"
        self.ns = spec.namespace
        self.user = ""
        self.token = ""

    def flood(self, n: int) -> dict[str, Any]:
        self.own_token()
        return {"answers": [self.rpc("", f"{self.ns}.admin", self.admin("list")) for _ in range(n)]}

    def run_all(self) -> dict[str, Any]:
        out: Outcome = {}
        steps: list[tuple[str, Callable[[], str]]] = [
            ("context", self.context),
            ("memory", self.memory),
            ("environ_cmdline", self.environ_cmdline),
            ("files", self.files),
            ("guest", self.guest),
            ("own_token", self.own_token),
            ("helper_token", self.helper_token),
            ("admin_queue", lambda: self.rpc("", f"{self.ns}.admin", self.admin("list"))),
            ("admin_terminate_parent", self.terminate_parent),
            ("admin_policy_parent", self.policy_parent),
            ("bind_up_all", lambda: self.bind("up.#")),
            ("bind_everything", lambda: self.bind("#")),
            ("bind_sibling", lambda: self.bind(f"vsm.{self.b['sibling']}")),
            ("consume_sibling_inbox", self.consume_sibling),
            ("purge_sibling_inbox", self.purge_sibling),
            ("delete_sibling_inbox", self.delete_sibling),
            ("declare_exchange", self.declare_exchange),
            ("up_as_sibling", lambda: self.publish(f"up.{self.b['sibling_path']}.ready")),
            ("state_of_parent", lambda: self.publish(f"up.{self.b['parent_path']}.state")),
            ("toparent_as_sibling", self.toparent_as_sibling),
            ("down_sibling", lambda: self.publish(f"down.{self.b['sibling_path']}")),
            ("forge_event", lambda: self.publish("event.daemon.restored")),
            ("call_sibling", self.call_sibling),
            ("call_parent", self.call_parent),
            ("as_daemon_user", self.as_daemon_user),
            ("policy_as_vsmd", self.policy_as_vsmd),
            ("spawn_under_sibling", self.spawn_under_sibling),
            ("declare_queues", self.declare_queues),
            ("connections", self.connections),
        ]
        for name, step in steps:
            try:
                out[name] = step()
            except pika.exceptions.ChannelClosedByBroker as exc:
                out[name] = f"refused by the broker: {exc.reply_code} {exc.reply_text[:160]}"
            except pika.exceptions.ProbableAuthenticationError:
                out[name] = "refused by the broker: login refused"
            except pika.exceptions.ProbableAccessDeniedError:
                out[name] = "refused by the broker: vhost access refused"
            except Exception as exc:  # an attack that broke is no attack that worked
                out[name] = f"error {type(exc).__name__}: {exc}"[:300]
        return {"outcomes": out, "user": self.user}

    # --- secrets ---------------------------------------------------------------------------

    def _hits(self, data: bytes) -> list[str]:
        return [s["name"] for s in self.b["secrets"] if contains(data, s)]

    def context(self) -> str:
        hits = self._hits(repr(self.spec.to_dict()).encode())
        if "@" in self.spec.broker_url or hits:
            return f"ALLOWED: the spec holds {hits or self.spec.broker_url}"
        return f"refused: the spec holds no credential ({self.spec.broker_url})"

    def memory(self) -> str:
        found = scan_memory(self.b["secrets"])
        return f"ALLOWED: found {found}" if found else "refused: no secret in this process"

    def environ_cmdline(self) -> str:
        dumpable()
        text = b""
        for name in ("environ", "cmdline"):
            with open(f"/proc/self/{name}", "rb") as f:
                text += f.read()
        hits = self._hits(text)
        if hits or b"amqp://" in text:
            return f"ALLOWED: {hits or 'a broker URL'} in environ or cmdline"
        return "refused: nothing in environ or cmdline"

    def files(self) -> str:
        read: list[str] = []
        for path in self.b["files"]:
            with contextlib.suppress(OSError):
                with open(path, "rb") as f:
                    f.read(1)
                read.append(path)
        return f"ALLOWED: read {read}" if read else "refused: every file closed to this uid"

    # --- broker identities -----------------------------------------------------------------

    def _connect(self, user: str, password: str) -> pika.BlockingConnection:
        creds = pika.PlainCredentials(user, password)
        params = pika.ConnectionParameters(self.host, self.port, self.vhost, creds)
        return pika.BlockingConnection(params)

    def guest(self) -> str:
        conn = self._connect("guest", "guest")
        conn.close()
        return "ALLOWED: guest logged in"

    def own_token(self) -> str:
        reply = fetch_token_blocking(self.spec.token_socket)
        self.user, self.token = str(reply["user"]), str(reply["token"])
        conn = self._connect(self.user, self.token)
        conn.close()
        return f"allowed (its own identity): {self.user}"

    def helper_token(self) -> str:
        code = (
            "from vsmd.security.token_service import fetch_token_blocking as f;"
            f"print(f({self.spec.token_socket!r}))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        if "token" in done.stdout and "error" not in done.stdout:
            return "ALLOWED: a helper process got a token"
        return f"refused: {done.stdout.strip()[:120] or done.stderr.strip()[-120:]}"

    # --- AMQP ------------------------------------------------------------------------------

    def _channel(self) -> tuple[pika.BlockingConnection, Any]:
        conn = self._connect(self.user, self.token)
        return conn, conn.channel()

    def _props(self, **extra: Any) -> pika.BasicProperties:
        return pika.BasicProperties(content_type="application/json", user_id=self.user, **extra)

    def _env(self, type_: str, body: dict[str, Any], sender: str | None = None) -> bytes:
        return orjson.dumps(
            {"v": 1, "type": type_, "sender": sender or self.spec.vsm_id, "path": "", "body": body}
        )

    @staticmethod
    def admin(cmd: str, **args: Any) -> bytes:
        return orjson.dumps({"v": 1, "cmd": cmd, "args": args})

    def rpc(self, exchange: str, key: str, body: bytes, user_id: str | None = None) -> str:
        """Publish a request and report the answer (or the broker's refusal)."""
        conn, ch = self._channel()
        try:
            ch.confirm_delivery()  # a refusal of the publish itself comes back here, not later
            got: list[bytes] = []
            ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: got.append(a[3]), auto_ack=True)
            corr = uuid.uuid4().hex
            props = self._props(reply_to="amq.rabbitmq.reply-to", correlation_id=corr)
            if user_id is not None:
                props.user_id = user_id
            ch.basic_publish(exchange, key, body, props)
            deadline = 50
            while not got and deadline:
                conn.process_data_events(0.2)
                deadline -= 1
            if not got:
                return "no answer"
            reply = orjson.loads(got[0])
            if reply.get("ok"):
                return f"ALLOWED: {str(reply.get('result'))[:160]}"
            err = reply["error"]
            return f"refused by the receiver: {err['code']} {err['message'][:160]}"
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def publish(self, key: str, body: bytes | None = None) -> str:
        conn, ch = self._channel()
        try:
            ch.confirm_delivery()
            ch.basic_publish(
                f"{self.ns}.recursive", key, body or self._env("ready", {}), self._props()
            )
            return f"ALLOWED: published on {key}"
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def bind(self, key: str) -> str:
        conn, ch = self._channel()
        try:
            ch.queue_bind(f"{self.ns}.vsm.{self.spec.vsm_id}", f"{self.ns}.recursive", key)
            return f"ALLOWED: bound to {key}"
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _on_sibling_inbox(self, op: Callable[[Any, str], Any]) -> str:
        conn, ch = self._channel()
        try:
            op(ch, f"{self.ns}.vsm.{self.b['sibling']}")
            return "ALLOWED"
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def consume_sibling(self) -> str:
        return self._on_sibling_inbox(lambda ch, q: ch.basic_consume(q, lambda *a: None))

    def purge_sibling(self) -> str:
        return self._on_sibling_inbox(lambda ch, q: ch.queue_purge(q))

    def delete_sibling(self) -> str:
        return self._on_sibling_inbox(lambda ch, q: ch.queue_delete(q))

    def declare_exchange(self) -> str:
        conn, ch = self._channel()
        try:
            ch.exchange_declare(f"{self.ns}.recursive", "topic", durable=True)
            return "ALLOWED: declared the tree's exchange"
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def toparent_as_sibling(self) -> str:
        return self.publish(f"toparent.{self.b['parent']}.{self.b['sibling']}")

    def call_sibling(self) -> str:
        body = self._env("call", {"kind": "hello", "args": {}})
        return self.rpc(f"{self.ns}.recursive", f"vsm.{self.b['sibling']}", body)

    def call_parent(self) -> str:
        body = self._env("call", {"kind": "hello", "args": {}})
        return self.rpc(f"{self.ns}.recursive", f"vsm.{self.b['parent']}", body)

    def as_daemon_user(self) -> str:
        body = self._env("call", {"kind": "hello", "args": {}}, sender="vsmd")
        return self.rpc(f"{self.ns}.recursive", f"vsm.{self.b['sibling']}", body, "vsmd-daemon")

    def policy_as_vsmd(self) -> str:
        body = self._env("policy", {"origin": self.b["parent"], "values": {}}, sender="vsmd")
        return self.rpc(f"{self.ns}.recursive", f"vsm.{self.b['sibling']}", body)

    def terminate_parent(self) -> str:
        return self.rpc("", f"{self.ns}.admin", self.admin("terminate", id=self.b["parent"]))

    def policy_parent(self) -> str:
        body = self.admin("policy_set", id=self.b["parent"], values={"x": 1})
        return self.rpc("", f"{self.ns}.admin", body)

    def spawn_under_sibling(self) -> str:
        path = self.spec.path
        body = self._env("spawn", {"parent": self.b["sibling"], "name": "intruder"})
        return self.rpc(f"{self.ns}.recursive", f"up.{path}.spawn", body)

    def declare_queues(self) -> str:
        """As many queues as asked for, each refused closes the channel: open another."""
        conn = self._connect(self.user, self.token)
        made = refused = 0
        try:
            ch = conn.channel()
            for i in range(int(self.b["queues"])):
                name = f"{self.ns}.vsm.x{i}" if i % 2 else f"flood-{i}"
                try:
                    ch.queue_declare(name)
                    made += 1
                except pika.exceptions.ChannelClosedByBroker:
                    refused += 1
                    ch = conn.channel()
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        verdict = "ALLOWED" if made else "refused by the broker"
        return f"{verdict}: {made} declared, {refused} refused"

    def connections(self) -> str:
        """``connections`` more connections with its own token, held as long as the broker
        lets them live (30 s at most): its runtime already holds one."""
        n = int(self.b["connections"])
        held = [self._connect(self.user, self.token) for _ in range(n)]
        left = held
        try:
            for _ in range(150):
                left = [c for c in left if _alive(c)]
                if len(left) <= 1:
                    return f"refused by vsmd: {n - len(left)} of {n} closed"
                time.sleep(0.2)
            return f"ALLOWED: {len(left)} of {n} still open"
        finally:
            for conn in held:
                with contextlib.suppress(Exception):
                    conn.close()


def _alive(conn: pika.BlockingConnection) -> bool:
    try:
        conn.process_data_events(0)
        return bool(conn.is_open)
    except pika.exceptions.AMQPError:
        return False


def register_agents(registry: AgentRegistry) -> None:
    registry.register("hostile", HostileAgent)
