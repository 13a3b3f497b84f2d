"""Every module's docstring example runs as written (docs match the code)."""

import importlib
import os
import pkgutil
import re
import textwrap

import pytest

import lfr_jax

_EXAMPLE = re.compile(r"Example[^\n]*::\n\n((?:    .*\n|\n)+)")
# Examples that need data or files beyond what a unit test provides.
_SKIP = {"lfr_jax.training"}


def _modules():
  names = ["lfr_jax"]
  for info in pkgutil.walk_packages(lfr_jax.__path__, "lfr_jax."):
    names.append(info.name)
  return sorted(n for n in names if n not in _SKIP)


@pytest.mark.parametrize("name", _modules())
def test_module_docstring_example_runs(name):
  module = importlib.import_module(name)
  doc = module.__doc__ or ""
  assert doc.strip(), f"{name} has no module docstring"
  blocks = _EXAMPLE.findall(doc + "\n")
  assert blocks, f"{name}'s docstring has no 'Example::' block"
  for i, block in enumerate(blocks):  # every Example block, each on its own
    code = textwrap.dedent(block)
    exec(compile(code, f"<{name} docstring, example {i + 1}>", "exec"), {})


def test_readme_python_examples_run():
  readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
  blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
  assert blocks, "README has no python example"
  for code in blocks:
    exec(compile(code, "<README.md>", "exec"), {})


def test_readme_lists_every_training_preset_and_variant():
  """The preset table omitted presets and the variant list a variant."""
  from configs import common
  root = os.path.join(os.path.dirname(__file__), "..")
  readme = open(os.path.join(root, "README.md")).read()
  table = readme.split("## Training presets", 1)[1].split("\n## ", 1)[0]
  listed = set(re.findall(r"configs/(\w+)\.py", table))
  for group, names in re.findall(r"configs/(\w+?)_\{([\w,]+)\}\.py", table):
    listed |= {f"{group}_{name}" for name in names.split(",")}
  presets = {f[:-3] for f in os.listdir(os.path.join(root, "configs"))
             if f.endswith(".py") and f[:-3] not in ("__init__", "common",
                                                     "evaluate")}
  assert presets - listed == set()
  for variant in filter(None, common.VARIANTS):
    assert f"`:{variant}`" in table, variant
