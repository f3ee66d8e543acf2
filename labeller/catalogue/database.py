"""sqlite-utils, imported without pandas.

sqlite-utils imports pandas whenever it is installed, for one column type (pandas.Timestamp)
that the catalogue never stores, and nothing else of labeller's uses pandas. Importing
`labeller.cli` took 340 ms with it, 91 ms without (`labeller scans`: 0.42 s, 0.25 s). Where
something has imported pandas already, sqlite-utils sees it as usual.
"""

from __future__ import annotations

import sys

_blocked = "pandas" not in sys.modules
if _blocked:
    sys.modules["pandas"] = None  # type: ignore[assignment]  # `import pandas` raises ImportError
try:
    from sqlite_utils import Database, Migrations
finally:
    if _blocked and "pandas" in sys.modules and sys.modules["pandas"] is None:
        del sys.modules["pandas"]  # a later `import pandas` (a user's, a library's) works

__all__ = ["Database", "Migrations"]
