"""Refusals read from the embedded node's log (lines as RabbitMQ 3.10 writes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.harness import poll_for
from vsmd.daemon.broker_log import BrokerLogFollower, parse

ACCESS = (
    "2026-12-01 08:14:23.289107+00:00 [error] <0.1105.0> operation queue.bind caused a channel "
    "exception access_refused: access to topic 'up.#' in exchange 'ns.recursive' in vhost "
    "'vsmd' refused for user 'vsm-e7fa7ff8717a'\n"
)
USER_ID = (
    "2026-12-01 08:14:23.4+00:00 [error] <0.1.0> operation basic.publish caused a channel "
    "exception precondition_failed: user_id property set to 'vsmd-daemon' but authenticated "
    "user was 'vsm-e7fa7ff8717a'\n"
)


def test_parse_names_the_vsm_and_what_it_tried() -> None:
    assert parse(ACCESS) == {
        "user": "vsm-e7fa7ff8717a",
        "what": "queue.bind: access to topic 'up.#' in exchange 'ns.recursive' in vhost 'vsmd'",
    }
    assert parse(USER_ID) == {
        "user": "vsm-e7fa7ff8717a",
        "what": "a message with user_id 'vsmd-daemon'",
    }
    # Not a VSM (an operator's mistake, a login) or not a refusal: nothing to count.
    assert parse(ACCESS.replace("vsm-e7fa7ff8717a", "vsmd-operator")) is None
    assert parse("... PLAIN login refused: user 'guest' - invalid credentials\n") is None


def test_the_follower_reads_what_is_appended_after_its_start(tmp_path: Path) -> None:
    path = tmp_path / "node.log"
    path.write_text(ACCESS)  # before the start: not this daemon's business
    got: list[dict[str, Any]] = []
    follower = BrokerLogFollower(path, got.append)
    follower.start()
    try:
        with path.open("a") as f:
            f.write(USER_ID[:40])  # a line half written: not read yet
            f.flush()
            f.write(USER_ID[40:] + "x" * 5000 + "\n" + ACCESS)  # an overlong line is skipped
        poll_for(lambda: len(got) >= 2, 5.0, 0.02, "two refusals")
        assert [g["what"][:10] for g in got] == ["a message ", "queue.bind"]
        assert all(g["ev"] == "broker_refusal" for g in got)
    finally:
        follower.stop()
