"""pytest plugin of ``tools/mutants.py``: test times in, fastest tests first.

``tools/mutants.py`` loads it (``-p tools.mutants_plugin``) into every test
run of its temporary copy. With ``LFR_MUTANTS_TIMES`` set to a JSON file it
writes there the seconds each test took (setup, call and teardown), merged
with what the file already holds; with ``LFR_MUTANTS_ORDER`` set to such a
file it runs each test file's tests in increasing order of those seconds
(unknown tests last, in their collected order; the files keep their order,
so module-scoped fixtures are set up once), so that ``pytest -x`` stops at
the cheapest test that catches a mutant. Without either variable it does
nothing.

Example::

    from tools import mutants_plugin
    order = mutants_plugin.fastest_first(
        ["tests/a.py::slow", "tests/a.py::new", "tests/a.py::quick",
         "tests/b.py::other"],
        {"tests/a.py::slow": 9.0, "tests/a.py::quick": 0.5})
    # [2, 0, 1, 3]: a.py's quick test, its slow one, the one never timed,
    # then b.py's
"""

from __future__ import annotations

import json
import os

TIMES = "LFR_MUTANTS_TIMES"
ORDER = "LFR_MUTANTS_ORDER"

_seconds: dict[str, float] = {}


def read_times(path: str) -> dict[str, float]:
  """The seconds per test node id in ``path`` ({} if absent or unreadable)."""
  try:
    with open(path, encoding="utf-8") as f:
      return {str(k): float(v) for k, v in json.load(f).items()}
  except (OSError, ValueError, AttributeError):
    return {}


def fastest_first(node_ids: list[str], seconds: dict[str, float]
                  ) -> list[int]:
  """Indices of ``node_ids``: the files in their first order, each file's
  tests by increasing time, unknown ones last, ties in their order."""
  files: dict[str, int] = {}
  for node in node_ids:
    files.setdefault(node.split("::")[0], len(files))
  return sorted(range(len(node_ids)),
                key=lambda i: (files[node_ids[i].split("::")[0]],
                               node_ids[i] not in seconds,
                               seconds.get(node_ids[i], 0.0)))


def pytest_collection_modifyitems(session, config, items):
  del session, config
  path = os.environ.get(ORDER)
  if not path:
    return
  order = fastest_first([item.nodeid for item in items], read_times(path))
  items[:] = [items[i] for i in order]


def pytest_runtest_logreport(report):
  if os.environ.get(TIMES):
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + float(
        report.duration)


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  path = os.environ.get(TIMES)
  if not path or not _seconds:
    return
  merged = read_times(path)
  merged.update(_seconds)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(merged, f, indent=0, sort_keys=True)
