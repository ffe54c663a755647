"""The floor's parent: a plain process with pika and the child's code imported, forking.

``python -m bench.forkfloor URL EXCHANGE`` answers ``ok`` once imported, then reads commands
on stdin, one per line: ``up N`` forks N children at once (each runs bench.child in its VSM
shape: the broker work of a VSM's start) and answers with their pids; ``down`` sends every
child SIGTERM and answers ``down`` once all are reaped. End of input stops what is left.

This is the cheapest way to get N processes doing a VSM's broker work: no daemon, no fork
server hop, no admission or journal, one ``os.fork()`` per child from a single-threaded parent.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import traceback

from bench import child


def _fork(url: str, exchange: str, name: str) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child.child_main(url, "", name, exchange)
            code = 0
        except BaseException:
            traceback.print_exc()  # to the bench's stderr: a child that failed says why
        finally:
            os._exit(code)  # never back into the parent's loop, nor its buffers flushed twice
    return pid


def _down(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)


def main(url: str, exchange: str) -> int:
    # As vsmd's fork server does: the children do not copy pages for the collector's sake.
    gc.freeze()
    print("ok", flush=True)
    pids: list[int] = []
    batch = 0
    try:
        for line in sys.stdin:
            cmd = line.split()
            if cmd[:1] == ["up"] and len(cmd) == 2:
                batch += 1
                new = [_fork(url, exchange, f"b{batch}c{i}") for i in range(int(cmd[1]))]
                pids += new
                print(" ".join(map(str, new)), flush=True)
            elif cmd == ["down"]:
                _down(pids)
                pids = []
                print("down", flush=True)
            else:
                print(f"error: unknown command {line.strip()!r}", flush=True)
    finally:
        _down(pids)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
