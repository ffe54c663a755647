"""Files that hold secrets: written whole (a reader never sees half) and readable by their
owner only, from the moment they exist."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # an older file of that name may have had another mode
        f.write(data)
    os.replace(tmp, path)
