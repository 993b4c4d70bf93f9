"""Entry point of ``edgekit-gui``.

The desktop app is not built yet (it is its own piece of work, after the runtime,
converter and task layers); until then this entry point says so instead of failing
with an import error.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    sys.stderr.write("edgekit-gui: the desktop app is not part of this edgekit release yet; "
                     "use the `edgekit` command or the Python SDK.\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
