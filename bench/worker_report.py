"""The report's worker section: every number comes from the run's figures (keys ``worker.`` and
``workerfloor.``, taken by bench/worker_step.py)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.goals import num, sizes
from bench.stats import Results
from bench.tables import table
from bench.worker_tasks import ASYNC_KIND as ASYNC

VSMD, FLOOR = "worker", "workerfloor"


@dataclass(frozen=True)
class Batch:
    """The medians of one kind of batch: ``k`` workers or consumers, one task kind."""

    rate: float | None  # tasks/s
    n: int  # tasks per batch
    runs: int
    seconds: float | None
    publish_s: float | None
    serve: float | None  # CPU ms per task of the workers or the consumers
    manage: float | None  # of the daemon and the workers' parent (vsmd only)
    broker: float | None
    submitter: float | None

    @property
    def all(self) -> float | None:
        parts = [self.serve, self.broker, self.submitter]
        if None in parts:
            return None
        return sum(p for p in parts if p is not None) + (self.manage or 0.0)

    def busy(self) -> float | None:
        """Cores the measured processes kept busy over the window."""
        total = self.all
        return self.rate * total / 1e3 if self.rate is not None and total is not None else None


def batch(res: Results, prefix: str, k: int, kind: str = "") -> Batch | None:
    key = f"{prefix}.{k}.{kind}"
    fig = res.figures.get(f"{key}tasks_per_s")
    if fig is None:
        return None
    m = res.median
    took = m(f"{key}s")
    rate = m(f"{key}tasks_per_s")
    parts = [m(f"{key}cpu_{who}_ms") for who in ("daemon", "parent")]
    manage = sum(p for p in parts if p is not None) if prefix == VSMD else None
    serve = m(f"{key}cpu_workers_ms") if prefix == VSMD else m(f"{key}cpu_consumers_ms")
    return Batch(
        rate,
        int(m(f"{key}tasks") or 0),
        len(fig.samples),
        took,
        m(f"{key}publish_s"),
        serve,
        manage,
        m(f"{key}cpu_broker_ms"),
        m(f"{key}cpu_submitter_ms"),
    )


def _v(v: float | None) -> str:
    return num(v) if v is not None else "—"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _x(r: float | None) -> str:
    return f"{num(r)}x" if r is not None else "—"


def _sub(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _abs(a: float | None) -> float | None:
    return abs(a) if a is not None else None


def _more(diff: float | None) -> str:
    return "less" if diff is not None and diff < 0 else "more"


def _batches(runs: int) -> str:
    return "batch" if runs == 1 else "batches"


def _line(text: str, *values: float | None) -> str | None:
    """A bullet of the report, or None when one of its figures was not measured."""
    if any(v is None for v in values):
        return None
    return "- " + text.format(*(f"{v:,}" if isinstance(v, int) else num(v or 0) for v in values))


def _counts(res: Results) -> list[int]:
    return sizes(res, f"{VSMD}.", ".tasks_per_s")


def _who(k: int) -> str:
    return "1 worker" if k == 1 else f"{k} workers under one parent"


def _rate_rows(res: Results) -> list[list[str]]:
    rows = []
    for k in _counts(res):
        for kind, task in (("", "plain"), (ASYNC, "async")):
            v, f = batch(res, VSMD, k, kind), batch(res, FLOOR, k)
            if v is None:
                continue
            floor = f.rate if f else None
            runs = f"{v.runs}" + (f" / {f.runs}" if f else "")
            what = f"{_who(k)}, {task} no-op task"
            row = [what, f"{v.n:,}", _v(v.rate), _v(floor), _x(_ratio(v.rate, floor)), runs]
            rows.append(row)
    return rows


def _cpu_rows(res: Results, cores: int) -> list[list[str]]:
    rows = []
    for k in _counts(res):
        for prefix, kind, what in (
            (VSMD, "", f"vsmd, {_who(k)}, plain task"),
            (FLOOR, "", f"bare client, {k} consumer" + ("s" if k > 1 else "")),
            (VSMD, ASYNC, f"vsmd, {_who(k)}, async task"),
        ):
            b = batch(res, prefix, k, kind)
            if b is None:
                continue
            busy = b.busy()
            rows.append(
                [
                    what,
                    _v(b.serve),
                    _v(b.manage) if prefix == VSMD else "",
                    _v(b.broker),
                    _v(b.submitter),
                    _v(b.all),
                    f"{num(busy)} of {cores}" if busy is not None else "—",
                ]
            )
    return rows


def _prose(res: Results, cores: int) -> list[str | None]:
    counts = _counts(res)
    if not counts:
        return []
    one, many = counts[0], counts[-1]
    v1, f1 = batch(res, VSMD, one), batch(res, FLOOR, one)
    a1 = batch(res, VSMD, one, ASYNC)
    vk, fk = batch(res, VSMD, many), batch(res, FLOOR, many)
    out: list[str | None] = []
    if v1 and f1:
        out.append(
            _line(
                _who(one).capitalize()
                + " (the default `concurrency`, 4) ran {} tasks/s of a plain no-op task "
                "(median of {} "
                + _batches(v1.runs)
                + " of {} tasks); a bare-client consumer with the same "
                "prefetch ran {} tasks/s: vsmd at {}x the floor. Per task the worker's "
                "process used {} CPU ms, the bare consumer {} ms.",
                v1.rate,
                v1.runs,
                v1.n,
                f1.rate,
                _ratio(v1.rate, f1.rate),
                v1.serve,
                f1.serve,
            )
        )
    if v1 and a1 and a1.serve is not None and v1.serve is not None:
        cost = v1.serve - a1.serve
        out.append(
            _line(
                "With an async no-op task, which runs on the VSM's loop instead of in a thread, "
                "the same worker ran {} tasks/s and used {} CPU ms per task: a plain task, run "
                "in a thread, cost its process {} CPU ms "
                + _more(cost)
                + " per task than an async one, which cost {} ms "
                + _more(_sub(a1.serve, f1.serve if f1 else None))
                + " than the bare consumer.",
                a1.rate,
                a1.serve,
                abs(cost),
                _abs(_sub(a1.serve, f1.serve if f1 else None)),
            )
        )
    if vk and fk and v1 and f1 and many != one:
        out.append(
            _line(
                "{} workers under one parent, tasks spread over their queues in turn, ran {} "
                "tasks/s together ({} "
                + _batches(vk.runs)
                + " of {} tasks), {}x one worker; {} bare consumers "
                "ran {} tasks/s, {}x one: vsmd at {}x the floor.",
                many,
                vk.rate,
                vk.runs,
                vk.n,
                _ratio(vk.rate, v1.rate),
                many,
                fk.rate,
                _ratio(fk.rate, f1.rate),
                _ratio(vk.rate, fk.rate),
            )
        )
    for k, b, f in ((one, v1, f1), (many, vk, fk)):
        if b is None or b.all is None or b.rate is None:
            continue
        bound = cores * 1e3 / b.all
        floor_all = f.all if f else None
        out.append(
            _line(
                "With " + _who(k) + ", the processes measured (the worker side, the daemon and "
                "any parent, the broker, the submitter) used {} CPU ms per task together, "
                "those of the floor {}: at that cost the machine's {} cores carry at most {} "
                "tasks/s, and the {} tasks/s reached are {}% of that. The submitter was done "
                "publishing {} s into the {} s of a batch (medians).",
                b.all,
                floor_all,
                cores,
                bound,
                b.rate,
                b.rate / bound * 100,
                b.publish_s,
                b.seconds,
            )
        )
    return out


def worker_section(res: Results, cores: int) -> list[str]:
    rates = _rate_rows(res)
    if not rates:
        return []
    out = [
        "## Workers: tasks through the worker agent",
        "",
        "`worker` VSMs with the default settings (`concurrency` 4), and next to them "
        "consumers on the bare client (vsmd/amqp/) doing the same broker work per task "
        "(`bench/worker_floor.py`: "
        "prefetch 4, manual acks, the result published with confirms, then the ack). One "
        "submitter process feeds both alike; tasks/s is the batch over the time from its "
        "first publish until the last result came back. vsmd and the floor take turns.",
        "",
    ]
    head = ["Tasks through", "Tasks per batch", "vsmd tasks/s", "bare-client tasks/s"]
    out += table([*head, "vsmd/bare", "Batches"], rates)
    cpu = _cpu_rows(res, cores)
    if cpu:
        out += ["CPU ms per task, medians over the batches, in exactly the measured window:", ""]
        head = ["Batch", "workers / consumers", "daemon + parent", "broker", "submitter"]
        out += table([*head, "all", "cores busy"], cpu)
    return [*out, *[ln for ln in _prose(res, cores) if ln], ""]
