"""A client of an OpenAI-compatible chat-completions server (llama.cpp, vLLM, Ollama, OpenAI):
timeouts, retries with backoff on what may pass (connection errors, 429, 5xx), token counts.

The HTTP client is made on the first call: one made at VSM start would cost every VSM its
memory whether it ever calls or not.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from vsmd.errors import AgentError, ConfigError, Timeout

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class LlmSettings:
    base_url: str
    model: str
    api_key: str | None
    timeout: float
    retries: int
    backoff: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LlmSettings:
        return cls(
            base_url=str(config["base_url"]).rstrip("/"),
            model=str(config["model"]),
            api_key=_api_key(config),
            timeout=float(config.get("timeout", 60.0)),
            retries=int(config.get("retries", 2)),
            backoff=float(config.get("backoff", 0.5)),
        )


def _api_key(config: dict[str, Any]) -> str | None:
    """From the environment variable or file the config names; never from the config itself,
    which the daemon journals and shows in `list`."""
    if config.get("api_key_env"):
        return os.environ.get(str(config["api_key_env"])) or None
    if config.get("api_key_file"):
        try:
            return Path(str(config["api_key_file"])).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read api_key_file: {exc.strerror}") from None
    return None


class ChatClient:
    def __init__(self, settings: LlmSettings) -> None:
        self.s = settings
        self._http: httpx2.AsyncClient | None = None
        self.requests = 0  # HTTP requests made, retries included

    async def chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """One completion; AgentError or Timeout when it cannot be had within the retries."""
        body: dict[str, Any] = {"model": self.s.model, "messages": messages}
        if tools:
            body["tools"] = tools
        last = ""
        for attempt in range(self.s.retries + 1):
            if attempt:
                await asyncio.sleep(self.s.backoff * 2 ** (attempt - 1))
            try:
                reply = await self._client().post(f"{self.s.base_url}/chat/completions", json=body)
            except httpx2.TimeoutException:
                last = f"no answer within {self.s.timeout:g} s"
                continue
            except httpx2.TransportError as exc:
                last = f"cannot reach {self.s.base_url}: {type(exc).__name__}: {exc}"
                continue
            finally:
                self.requests += 1
            if reply.status_code in RETRY_STATUS:
                last = f"HTTP {reply.status_code}: {reply.text[:200]}"
                continue
            if reply.status_code >= 400:
                raise AgentError(
                    f"the model server refused: HTTP {reply.status_code}: {reply.text[:300]}"
                )
            return _completion(reply)
        tries = self.s.retries + 1
        if last.startswith("no answer"):
            raise Timeout(f"the model server: {last} ({tries} tries)")
        raise AgentError(f"the model server failed {tries} times; last: {last}")

    def _client(self) -> httpx2.AsyncClient:
        if self._http is None:
            headers = {"Authorization": f"Bearer {self.s.api_key}"} if self.s.api_key else {}
            self._http = httpx2.AsyncClient(timeout=self.s.timeout, headers=headers)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def _completion(reply: httpx2.Response) -> dict[str, Any]:
    try:
        data = reply.json()
        message = data["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise AgentError(
            f"the model server's answer is no chat completion: {reply.text[:300]}"
        ) from None
    if not isinstance(message, dict):
        raise AgentError("the model server's answer has no message object")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return {"message": message, "usage": usage}
