"""sqlite-utils without pandas: the catalogue's import leaves pandas out, and later users get it."""

from __future__ import annotations

import subprocess
import sys


def test_the_catalogue_does_not_import_pandas_and_pandas_still_imports_after() -> None:
    script = (
        "import sys, labeller.catalogue, sqlite_utils.db\n"
        "assert 'pandas' not in sys.modules and sqlite_utils.db.pd is None\n"
        "import pandas\n"
        "print(pandas.Timestamp(0).year)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1970"


def test_pandas_imported_first_is_left_as_it_is() -> None:
    script = (
        "import pandas, sys, labeller.catalogue, sqlite_utils.db\n"
        "assert sqlite_utils.db.pd is pandas and sys.modules['pandas'] is pandas\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
