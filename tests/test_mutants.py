"""tools/mutants.py: every one-line bug of the core maths is caught.

The fast tests check both mutant tables against the code (each original text
found exactly once, each named test present); the slow ones apply every
mutant to a temporary copy and run its tests (see the README's development
section for their run times).
"""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import mutants  # noqa: E402


def test_mutant_table_matches_the_code():
  assert mutants.problems() == []
  assert len(mutants.MUTANTS) >= 16


def test_second_set_matches_the_code_and_explains_its_equivalents():
  assert mutants.problems(mutants.REFERENCE_MUTANTS) == []
  assert len(mutants.REFERENCE_MUTANTS) >= 100
  for m in mutants.REFERENCE_MUTANTS:
    assert m.suite == mutants.suite_files(m.path)
    assert not m.equivalent or len(m.equivalent) > 40, m.name


def test_a_moved_original_is_reported_stale(tmp_path):
  (tmp_path / "lfr_jax").mkdir()
  (tmp_path / "lfr_jax" / "m.py").write_text("x = 1\nx = 1\n")
  moved = mutants.Mutant("moved", "lfr_jax/m.py", "y = 2", "y = 3",
                         ("tests/test_mutants.py::test_x",), "gone")
  twice = mutants.Mutant("twice", "lfr_jax/m.py", "x = 1", "x = 2",
                         ("tests/test_mutants.py::test_x",), "ambiguous")
  found = mutants.problems([moved, twice], root=str(tmp_path))
  assert any(p.startswith("moved: stale") for p in found)
  assert any(p.startswith("twice: stale, its original occurs 2") for p in found)
  assert mutants._try(moved, str(tmp_path), 10).status == "stale"


def test_suite_runs_go_fastest_first_within_each_file(tmp_path):
  from tools import mutants_plugin
  nodes = ["tests/a.py::slow", "tests/a.py::untimed", "tests/a.py::quick",
           "tests/b.py::other", "tests/a.py::late"]
  times = {"tests/a.py::slow": 9.0, "tests/a.py::quick": 0.5,
           "tests/a.py::late": 1.0, "tests/b.py::other": 0.1}
  order = mutants_plugin.fastest_first(nodes, times)
  assert [nodes[i] for i in order] == [
      "tests/a.py::quick", "tests/a.py::late", "tests/a.py::slow",
      "tests/a.py::untimed", "tests/b.py::other"]
  path = tmp_path / "times.json"
  assert mutants_plugin.read_times(str(path)) == {}
  path.write_text("not json")
  assert mutants_plugin.read_times(str(path)) == {}


def test_test_runs_share_a_compilation_cache_inside_the_copy(tmp_path):
  env = mutants._env(str(tmp_path), order=True)
  assert env["JAX_COMPILATION_CACHE_DIR"].startswith(str(tmp_path))
  assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
  assert "LFR_MUTANTS_ORDER" in env and "LFR_MUTANTS_TIMES" not in env


def test_a_sample_is_reproducible_and_in_the_order_drawn():
  table = mutants.REFERENCE_MUTANTS
  first = mutants.sample(table, 10, seed=3)
  assert first == mutants.sample(table, 10, seed=3)
  assert len({m.name for m in first}) == 10
  assert first != mutants.sample(table, 10, seed=4)
  every = mutants.sample(table, len(table) + 5, seed=3)
  assert sorted(m.name for m in every) == sorted(m.name for m in table)
  assert every[:10] == first  # a prefix of a full draw is a sample too


def test_records_compare_on_the_mutants_both_runs_tried(tmp_path):
  names = [m.name for m in mutants.REFERENCE_MUTANTS[:3]]
  results = [mutants.Result(mutants.REFERENCE_MUTANTS[0], "caught", "t::a",
                            2.0),
             mutants.Result(mutants.REFERENCE_MUTANTS[1], "missed", "", 3.0)]
  path = tmp_path / "old.json"
  mutants.write_record(str(path), results, "old", planned=3, command="c")
  old = mutants.read_record(str(path))
  assert (old["caught"], old["total"], old["planned"]) == (1, 2, 3)
  assert old["hardware"].endswith("CPU")
  line = mutants.comparison(
      {names[0]: "caught", names[1]: "caught", names[2]: "caught"}, old)
  assert "On the 2 mutants both tried: this suite 2 of 2 caught" in line
  assert "the old suite" in line and "1 of 2 caught" in line
  assert "not recorded" in mutants.comparison({names[0]: "caught"}, None)
  text = mutants.report(old, old)
  assert f"| {names[0]} |" in text and "not run" in text
  rerun = dict(old, command="again",
               mutants={names[1]: {"status": "caught", "caught_by": "t::b",
                                   "seconds": 1.0}})
  merged = mutants.merge_records([old, rerun])
  assert (merged["caught"], merged["total"]) == (2, 2)
  assert old["mutants"][names[1]]["status"] == "missed"  # not modified


@pytest.mark.slow
def test_every_mutant_is_caught():
  results = mutants.run(log=lambda line: print(line, flush=True))
  print(mutants.table(results))
  missed = [f"{r.mutant.name}: {r.status} {r.detail[-300:]}"
            for r in results if r.status != "caught"]
  assert not missed, "\n".join(missed)


@pytest.mark.slow
def test_every_constant_mutant_is_caught_or_equivalent():
  results = mutants.run(mutants.REFERENCE_MUTANTS,
                        log=lambda line: print(line, flush=True))
  print(mutants.table(results))
  missed = [f"{r.mutant.name}: {r.status} {r.detail[-300:]}"
            for r in results if r.status not in ("caught", "equivalent")]
  assert not missed, "\n".join(missed)
