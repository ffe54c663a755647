"""vsmctl top's data half: row order and which events become alerts."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from vsmctl.render_top import render
from vsmctl.top import ALERT_WINDOW, ALERTS_SHOWN, Alerts, Snapshot, SortKey, sort_rows
from vsmd.protocol import VsmInfo


def _info(vsm_id: str, status: str = "running", **kw: Any) -> VsmInfo:
    return VsmInfo(
        id=vsm_id,
        name=kw.pop("name", vsm_id),
        parent=None,
        path=kw.pop("path", vsm_id),
        depth=1,
        pid=1,
        status=status,
        agent="noop",
        config={},
        started_at=None,
        exit_code=None,
        children=[],
        **kw,
    )


def test_sort_orders_numbers_largest_first_and_text_a_to_z() -> None:
    a = _info("a", metrics={"cpu_percent": 5.0, "rss_mb": 30.0, "msg_in": 1.0}, restarts=2)
    b = _info("b", metrics={"cpu_percent": 50.0, "rss_mb": 10.0, "msg_in": 2.0, "msg_out": 3.0})
    c = _info("c", "failed")  # no sample: below every sampled VSM
    rows = [a, b, c]

    def ids(key: SortKey, rev: bool = False) -> list[str]:
        return [i.id for i in sort_rows(rows, key, rev)]

    assert ids(SortKey.tree) == ["a", "b", "c"]
    assert ids(SortKey.tree, True) == ["c", "b", "a"]
    assert ids(SortKey.cpu) == ["b", "a", "c"]
    assert ids(SortKey.rss) == ["a", "b", "c"]
    assert ids(SortKey.rss, True) == ["c", "b", "a"]
    assert ids(SortKey.restarts) == ["a", "b", "c"]  # ties keep tree order
    assert ids(SortKey.msgs) == ["b", "a", "c"]  # in + out
    assert ids(SortKey.status) == ["c", "a", "b"]  # the failed one first
    assert ids(SortKey.id, True) == ["c", "b", "a"]


def test_alerts_keep_the_last_few_and_the_latest_per_vsm() -> None:
    alerts = Alerts()
    alerts.add(
        3,
        [
            {"seq": 1, "time": 100.0, "kind": "terminated", "vsm_id": "a", "message": "ok"},
            {"seq": 2, "time": 100.0, "kind": "quota_warn", "vsm_id": "a", "message": "rss"},
            {"seq": 3, "time": 101.0, "kind": "unreachable", "vsm_id": "b", "message": "gone"},
        ],
    )
    assert alerts.last_seq == 3
    assert [e["kind"] for e in alerts.recent] == ["quota_warn", "unreachable"]
    assert alerts.for_vsm("a", 110.0) == "quota_warn 10s ago"
    assert alerts.for_vsm("a", 100.0 + ALERT_WINDOW + 1) == ""  # old news leaves the row
    assert alerts.for_vsm("c", 110.0) == ""
    alerts.add(20, [{"seq": n, "time": 200.0, "kind": "failed", "vsm_id": "c"} for n in range(9)])
    assert len(alerts.recent) == ALERTS_SHOWN and alerts.last_seq == 20


def test_a_frame_fits_the_screen_and_says_what_it_hides() -> None:
    infos = [_info(f"v{n:02}") for n in range(50)]
    snap = Snapshot({"namespace": "ns", "pid": 7, "uptime": 3700}, infos, Alerts(), 0.0)
    console = Console(width=120, record=True)
    console.print(render(snap, SortKey.tree, False, height=24))
    text = console.export_text()
    assert len(text.splitlines()) <= 24
    assert "50 VSMs: 50 running" in text and "up 1:01:40" in text
    assert "v00" in text and "v49" not in text
    shown = sum(line[:1] == "v" and line[1:3].isdigit() for line in text.splitlines())
    assert f"{50 - shown} more VSM(s) below" in text
    snap.error = "no vsmd answering on namespace ns"
    console.print(render(snap, SortKey.tree, False, height=24))
    assert "no vsmd answering on namespace ns (retrying" in console.export_text()
