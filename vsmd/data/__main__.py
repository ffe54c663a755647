"""``python -m vsmd.data vsmd.toml`` (or ``vsmd.service``): print a packaged file."""

from __future__ import annotations

import sys

from vsmd.data import FILES, read


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in FILES:
        print(f"usage: python -m vsmd.data {{{','.join(FILES)}}}", file=sys.stderr)
        return 2
    sys.stdout.write(read(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
