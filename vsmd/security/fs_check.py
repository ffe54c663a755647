"""Whether a VSM under a uid of its own can still run Python: read the interpreter, its standard
library and every import path. A Python under a home directory only its owner may enter (a
pyenv under /root, say) cannot be run by other users; secure mode then refuses to start instead
of handing agents a half-working interpreter."""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
from pathlib import Path


def _open_to_others(path: Path) -> bool:
    """Every directory on the way can be entered by others, and the path itself read."""
    try:
        target = path.resolve()
        for parent in reversed(target.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        mode = os.stat(target).st_mode
    except OSError:
        return True  # a path that does not exist is nothing a VSM would need
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
    return mode & need == need


def closed_to_others() -> list[str]:
    """What a VSM running as another uid could not read; empty when all is well."""
    paths = {Path(sys.executable), Path(sysconfig.get_paths()["stdlib"])}
    paths.update(Path(p) for p in sys.path if p)
    return sorted(str(p) for p in paths if not _open_to_others(p))
