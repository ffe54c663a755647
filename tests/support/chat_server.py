"""A chat-completions server (the OpenAI-compatible API) with scripted answers, for llm_worker
tests: it answers from what the conversation says, so every VSM of a tree can share it.

Script, by the task's prompt (the conversation's last user message):
- ``PLAN <a> <b>``: spawn workers a and b, delegate ``PART <x>`` to each, then combine their
  answers into ``combined: <answer a> | <answer b>``;
- ``PART <x>``: answers ``<x> says <X>``;
- ``LOOP``: asks for the ``status`` tool forever;
- ``FORBID``: asks for ``terminate_child``, then answers what the tool said;
- ``SLOW``: answers after ``slow_seconds``.
Failures on demand: ``fail_next`` requests get HTTP 500.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


class ChatServer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fail_next = 0
        self.slow_seconds = 0.0
        self.requests: list[dict[str, Any]] = []
        self._ids = itertools.count()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = server.answer(self.path, body)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- the script -----------------------------------------------------------------------------

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests.append(body)
            if self.fail_next > 0:
                self.fail_next -= 1
                return 500, {"error": "scripted failure"}
        if path != "/v1/chat/completions":
            return 404, {"error": f"no {path}"}
        messages = body["messages"]
        # This task's prompt is the last user message (earlier ones are the worker's memory),
        # and the tool results after it are this task's.
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        first = messages[last]["content"]
        results = [m["content"] for m in messages[last:] if m["role"] == "tool"]
        word = first.split()[0]
        script = {
            "PLAN": self._plan,
            "PART": self._part,
            "LOOP": self._loop,
            "FORBID": self._forbid,
        }
        if word == "SLOW":
            time.sleep(self.slow_seconds)
        return 200, script.get(word, self._echo)(first, results)

    def _plan(self, first: str, results: list[str]) -> dict[str, Any]:
        a, b = first.split()[1:3]
        if not results:
            return self._calls(("spawn_worker", {"name": a}), ("spawn_worker", {"name": b}))
        if len(results) == 2:
            return self._calls(
                ("delegate", {"child": a, "prompt": f"PART {a}"}),
                ("delegate", {"child": b, "prompt": f"PART {b}"}),
            )
        answers = [json.loads(r)["answer"] for r in results[2:]]
        return self._say("combined: " + " | ".join(answers))

    def _part(self, first: str, results: list[str]) -> dict[str, Any]:
        x = first.split()[1]
        return self._say(f"{x} says {x.upper()}")

    def _loop(self, first: str, results: list[str]) -> dict[str, Any]:
        return self._calls(("status", {}))

    def _forbid(self, first: str, results: list[str]) -> dict[str, Any]:
        if not results:
            return self._calls(("terminate_child", {"id": "0123456789ab"}))
        return self._say(f"the tool said: {results[0]}")

    def _echo(self, first: str, results: list[str]) -> dict[str, Any]:
        return self._say("slow answer" if first == "SLOW" else f"echo: {first}")

    def _say(self, text: str) -> dict[str, Any]:
        return {"choices": [{"message": {"role": "assistant", "content": text}}], "usage": USAGE}

    def _calls(self, *calls: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        tool_calls = [
            {
                "id": f"call{next(self._ids)}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args in calls
        ]
        message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        return {"choices": [{"message": message}], "usage": USAGE}
