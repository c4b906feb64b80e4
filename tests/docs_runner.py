"""Run one page's Python snippets in order, in one namespace, as a script of that page would.

Used by tests/test_docs.py in a child process (a fresh interpreter per page: typed event classes,
threads and event loops of one page never meet another's). Reads a JSON list of
``{"where": "docs/x.md:12", "code": "..."}`` on stdin. A block with a top-level ``await`` runs
on the page's event loop, as in ``python -m asyncio``; the others run as plain statements.
On the first failure it prints the block's location, the block and the traceback, and exits 1.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import sys
import traceback
from typing import Any


def main() -> int:
    blocks: list[dict[str, str]] = json.load(sys.stdin)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()
    try:
        for block in blocks:
            try:
                # dont_inherit: a snippet runs as a script would, without this module's
                # `from __future__ import annotations` (SQLAlchemy reads the annotations)
                code = compile(
                    block["code"],
                    block["where"],
                    "exec",
                    flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                    dont_inherit=True,
                )
                if code.co_flags & inspect.CO_COROUTINE:
                    loop.run_until_complete(eval(code, namespace))
                else:
                    exec(code, namespace)
            except BaseException:
                print(f"--- {block['where']} failed:\n{block['code']}", file=sys.stderr)
                traceback.print_exc()
                return 1
            print(f"--- {block['where']} ran", file=sys.stderr, flush=True)
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
