"""Secure mode: who may say what to a VSM, judged by the broker-checked ``user_id``.

The broker refuses a publish whose ``user_id`` is not the connection's own user, so the id a
message carries there is who sent it; the envelope's ``sender`` must agree with it.
"""

from __future__ import annotations

from vsmd.bus.topology import Topology
from vsmd.errors import Unauthorized
from vsmd.protocol import Envelope
from vsmd.security.identity import DAEMON_USER, OPERATOR_USER, VIEWER_USER, vsm_id_of
from vsmd.spec import VsmSpec
from vsmd.vsm.calls import Delivery


def admit(
    msg: Delivery, env: Envelope, spec: VsmSpec, ancestors: tuple[str, ...], topo: Topology
) -> None:
    """Return if the message may reach the VSM of ``spec``; raise Unauthorized otherwise.

    The daemon anything; operators calls and pings, viewers pings; the VSM itself and its
    ancestors anything a VSM may send; a child only on its own upward key, and any VSM of the
    tree only its alert to this VSM as its root.
    """
    user, me = msg.user_id, spec.vsm_id
    if user == DAEMON_USER:
        return
    if env.sender == "vsmd":
        raise Unauthorized(f"{user or 'an unnamed sender'} spoke as the daemon")
    if user == OPERATOR_USER or (user == VIEWER_USER and env.type in ("ping", "probe")):
        return
    sender = vsm_id_of(user)
    if sender is None or sender != env.sender:
        raise Unauthorized(
            f"{user or 'an unnamed sender'} may not send {env.type[:32]!r} to {spec.path}"
        )
    if sender == me or sender in ancestors:
        return
    if msg.exchange == topo.exchange and msg.routing_key in (
        f"toparent.{me}.{sender}",
        f"alg.{me}.{sender}",
    ):
        return
    raise Unauthorized(f"{user} is outside the authority over {spec.path}")
