"""Secure mode on the daemon's side: a token and a uid for every VSM, roles for operators.

The daemon is the only holder of the signing key. A VSM gets its token from the token socket
(vsmd/security/token_service.py), never from its spec, so the fork server, whose memory
every later VSM inherits, holds no secret.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from vsmd.bus.topology import Topology
from vsmd.config import Config
from vsmd.daemon.conn_guard import CloseFn
from vsmd.errors import Unauthorized
from vsmd.security.identity import (
    RESOURCE_SERVER_ID,
    ROLES,
    VHOST,
    VIEWER_COMMANDS,
    Place,
    vsm_id_of,
)
from vsmd.security.token_service import TokenService
from vsmd.security.tokens import TokenMinter
from vsmd.spec import VsmSpec

log = logging.getLogger("vsmd.trust")


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


class Trust:
    def __init__(
        self,
        config: Config,
        topo: Topology,
        key: bytes,
        broker_log: Path | None = None,
        close_connections: CloseFn | None = None,
    ) -> None:
        self.minter = TokenMinter(key, RESOURCE_SERVER_ID, VHOST)
        # A fresh name at every start; who connects is decided by SO_PEERCRED, not by the name.
        address = f"\0vsmd-tokens-{config.namespace}-{secrets.token_hex(8)}"
        self.tokens = TokenService(self.minter, topo, address, config.token_ttl)
        self.vsm_broker_url = without_credentials(config.broker_url)
        self._uid_base = config.vsm_uid_base if os.geteuid() == 0 else 0
        self._uids: dict[str, int] = {}  # a live VSM keeps its uid across restarts
        self._free_uids: list[int] = []  # a heap
        self._next_uid = self._uid_base
        # The embedded node's log, where the broker's own refusals of VSMs are told.
        self.broker_log = broker_log
        # How the daemon closes a VSM's connections beyond its cap (the embedded node's CLI).
        self.close_connections = close_connections

    def start(self) -> None:
        self.tokens.start()

    def stop(self) -> None:
        self.tokens.stop()

    # --- VSMs ------------------------------------------------------------------------------

    def prepare(self, spec: VsmSpec) -> VsmSpec:
        """The spec as a VSM of secure mode gets it: no credentials, where to ask for them."""
        place = Place(spec.vsm_id, spec.path, spec.parent_id, spec.ancestors)
        self.tokens.register(place)
        return dataclasses.replace(
            spec,
            broker_url=self.vsm_broker_url,
            token_socket=self.tokens.path,
            uid=self._uid(spec.vsm_id),
        )

    def _uid(self, vsm_id: str) -> int:
        if not self._uid_base:
            return 0
        if vsm_id not in self._uids:
            # The lowest uid a removed VSM gave back, else the next never used.
            if self._free_uids:
                uid = heapq.heappop(self._free_uids)
            else:
                uid, self._next_uid = self._next_uid, self._next_uid + 1
            self._uids[vsm_id] = uid
        return self._uids[vsm_id]

    def spawned(self, vsm_id: str, pid: int) -> None:
        """From the fork-server reader thread, so a VSM asking at once is answered at once."""
        self.tokens.bind_pid(vsm_id, pid)

    def exited(self, pid: int) -> None:
        self.tokens.forget_pid(pid)

    def moved(self, vsm_id: str, path: str, ancestors: tuple[str, ...]) -> None:
        """Re-parented: its next token covers the keys of its new place."""
        parent = ancestors[-1] if ancestors else None
        self.tokens.register(Place(vsm_id, path, parent, ancestors))

    def removed(self, vsm_id: str) -> None:
        self.tokens.forget(vsm_id)
        uid = self._uids.pop(vsm_id, None)
        if uid is not None:
            heapq.heappush(self._free_uids, uid)

    # --- who may ask what ------------------------------------------------------------------

    @staticmethod
    def check_admin(user: str | None, command: str) -> None:
        role = ROLES.get(user or "")
        if role is None:
            raise Unauthorized(
                f"admin requests need operator or viewer credentials; "
                f"{user or 'an unnamed client'} has neither"
            )
        if role == "viewer" and command not in VIEWER_COMMANDS:
            raise Unauthorized(
                f"{command!r} needs the operator role; a viewer may "
                f"{', '.join(sorted(VIEWER_COMMANDS))}"
            )

    @staticmethod
    def check_vsm(user: str | None, claimed: str) -> None:
        """A VSM's message to the daemon is from the VSM the broker says it is."""
        if vsm_id_of(user) != claimed:
            raise Unauthorized(
                f"a message naming {claimed[:64]!r} as sender came from {user or 'nobody named'}"
            )
