"""sqlite-utils, imported without pandas.

sqlite-utils imports pandas whenever it is installed, for one column type (pandas.Timestamp)
that the catalogue never stores. Importing pandas took 0.28-0.36 s of every command's start-up
(a `labeller scan` of 150,000 tokens of the 4-layer benchmark model runs about 10 s), and
nothing else of labeller's uses it. Where something has imported pandas already, sqlite-utils
sees it as usual.
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
