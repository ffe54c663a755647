"""``python -m bench.nofreeze CONFIG``: vsmd with gc.freeze switched off in the fork server.

vsmd has no config option for it; ``ForkServerPool.gc_freeze`` is a public attribute that the
pool sends with every spawn request, so this launcher builds the daemon as ``vsmd run`` does
and clears it before the loop starts. Nothing in vsmd/ is changed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from vsmd.config import load_config
from vsmd.daemon import Daemon


def main() -> int:
    config = load_config(Path(sys.argv[1]))
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pika").setLevel(logging.WARNING)
    daemon = Daemon(config)
    daemon.pool.gc_freeze = False
    return daemon.run()


if __name__ == "__main__":
    raise SystemExit(main())
