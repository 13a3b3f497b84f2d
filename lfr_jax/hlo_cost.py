"""FLOPs and bytes of a compiled step with its loops counted as often as they run.

XLA's cost analysis (``compiled.cost_analysis()``) visits a ``while`` loop's
body once, whatever its trip count: a rolled K-step inner maximization is
counted as one step. :func:`loop_corrected_cost` reads the compiled (already
optimized and partitioned) HLO module, finds every ``while`` loop and its
trip count (from its condition: counter ``<`` constant, counter starting at a
constant), measures each loop body's own cost by cost-analysing the module a
second time with that body replaced by the identity, and adds the body
``trips - 1`` more times (times the trips of the loops around it):

    total = counted_once + sum over loops L of own(L) * (trips(L, with
            enclosing loops) - 1)

Both analyses run XLA's ``HloCostAnalysis`` through the host's CPU client on
the target's compiled HLO, so the body is costed in the target's fused form.
FLOPs are a property of the instructions and match the target compiler's own
count; bytes follow the host's shape sizes (no TPU tile padding), so a
body's bytes are scaled by the target's ``bytes accessed`` over the host
analysis' for the whole module. ``tests/test_plan.py`` checks the total
against a fully unrolled compile of the same step.

Example::

    import jax, jax.numpy as jnp
    from jax import lax
    from lfr_jax import hlo_cost

    def loop(x):
      return lax.fori_loop(0, 7, lambda i, v: jnp.tanh(v @ v), x)

    compiled = jax.jit(loop).lower(jnp.ones((64, 64))).compile()
    cost = hlo_cost.loop_corrected_cost(compiled)
    cost["loops"][0]["trips"]                 # 7
    cost["flops"] / compiled.cost_analysis()["flops"]  # about 7
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any


class HloCostError(RuntimeError):
  """The compiled module's loops could not be analysed."""


@dataclasses.dataclass
class _Instruction:
  name: str
  opcode: str
  operands: list[str]
  text: str


@dataclasses.dataclass
class _Computation:
  name: str
  header: str
  lines: list[str]          # the instruction lines, in order
  instructions: dict[str, _Instruction]
  root: str


_HEADER = re.compile(r"^(ENTRY\s+)?%(\S+)\s+\(")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%(\S+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9_\-]*)\(")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _operands(rest: str, start: int) -> list[str]:
  """The %names inside the balanced parentheses opening at ``rest[start]``."""
  depth, end = 0, start
  for end in range(start, len(rest)):
    depth += {"(": 1, ")": -1}.get(rest[end], 0)
    if depth == 0:
      break
  return re.findall(r"%([\w.\-]+)", rest[start + 1:end])


def parse_module(text: str) -> tuple[dict[str, _Computation], str]:
  """Splits an HLO module's text into computations.

  Args:
    text: ``compiled.as_text()``.

  Returns:
    ({name: computation}, name of the entry computation).
  """
  computations, entry, current = {}, "", None
  for line in text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header and line.rstrip().endswith("{"):
        current = _Computation(header.group(2), line, [], {}, "")
        if header.group(1):
          entry = current.name
      continue
    if line.strip() == "}":
      computations[current.name] = current
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    rest = match.group(3)
    opcode = _OPCODE.search(" " + rest)
    op = opcode.group(1) if opcode else ""
    operands = _operands(" " + rest, opcode.end() - 1) if opcode else []
    current.instructions[match.group(2)] = _Instruction(
        match.group(2), op, operands, line)
    current.lines.append(line)
    if match.group(1):
      current.root = match.group(2)
  if not entry:
    raise HloCostError("the compiled module has no ENTRY computation.")
  return computations, entry


def _called(instruction: _Instruction) -> list[str]:
  names = _CALLED.findall(instruction.text)
  for branches in _BRANCHES.findall(instruction.text):
    names += re.findall(r"%([\w.\-]+)", branches)
  return names


def _callers(computations: dict[str, _Computation]
             ) -> dict[str, list[tuple[_Computation, _Instruction]]]:
  """computation name -> the (computation, instruction) pairs that call it."""
  out: dict[str, list] = {}
  for comp in computations.values():
    for inst in comp.instructions.values():
      if inst.opcode in ("while", "conditional"):
        continue  # their computations' parameters are loop- or branch-carried
      for name in _called(inst):
        out.setdefault(name, []).append((comp, inst))
  return out


def _resolve(computations, callers, comp: _Computation, name: str,
             index: int | None = None, depth: int = 0) -> int | None:
  """The integer constant a value (or element ``index`` of a tuple) holds.

  Follows copies, bitcasts, converts, tuples and get-tuple-elements, and
  parameters into the instructions that call their computation. None when
  the value is not such a constant.
  """
  inst = comp.instructions.get(name)
  if inst is None or depth > 64:
    return None
  op = inst.opcode
  if op == "constant" and index is None:
    value = re.search(r"constant\((-?\d+)\)", inst.text)
    return int(value.group(1)) if value else None
  if op in ("copy", "bitcast", "convert", "reshape") and len(inst.operands) == 1:
    return _resolve(computations, callers, comp, inst.operands[0], index,
                    depth + 1)
  if op == "tuple" and index is not None and index < len(inst.operands):
    return _resolve(computations, callers, comp, inst.operands[index], None,
                    depth + 1)
  if op == "get-tuple-element" and index is None and inst.operands:
    element = re.search(r"index=(\d+)", inst.text)
    return _resolve(computations, callers, comp, inst.operands[0],
                    int(element.group(1)), depth + 1)
  if op == "parameter":
    number = re.search(r"parameter\((\d+)\)", inst.text)
    values = {_resolve(computations, callers, caller_comp,
                       caller.operands[int(number.group(1))], index, depth + 1)
              for caller_comp, caller in callers.get(comp.name, [])
              if int(number.group(1)) < len(caller.operands)}
    return values.pop() if len(values) == 1 else None
  return None


def _parameter_number(comp: _Computation, name: str) -> int:
  number = re.search(r"parameter\((\d+)\)", comp.instructions[name].text)
  if number is None:
    raise HloCostError(f"{comp.name}: {name} is not a parameter.")
  return int(number.group(1))


def _tuple_index(comp: _Computation, name: str) -> int | None:
  inst = comp.instructions.get(name)
  if inst is None or inst.opcode != "get-tuple-element":
    return None
  index = re.search(r"index=(\d+)", inst.text)
  return int(index.group(1)) if index else None


def trip_count(computations: dict[str, _Computation], host: _Computation,
               loop: _Instruction, callers=None) -> int:
  """Trips of a ``while`` whose condition compares a counter with a constant.

  Raises:
    HloCostError: the condition is not ``counter < N`` (or ``N > counter``)
      with the counter starting at a constant.
  """
  cond = computations[re.search(r"condition=%([\w.\-]+)", loop.text).group(1)]
  root = cond.instructions.get(cond.root)
  compare = root
  if root is not None and root.opcode == "fusion":
    # XLA:CPU wraps the compare in a fusion of the condition's values.
    fused = computations.get((_called(root) or [""])[0])
    compare = fused.instructions.get(fused.root) if fused else None
  direction = (re.search(r"direction=(\w+)", compare.text)
               if compare is not None else None)
  if compare is None or compare.opcode != "compare" or direction is None:
    raise HloCostError(f"loop {loop.name}: its condition is not a compare.")
  a, b = compare.operands[:2]
  if compare is not root:
    a, b = (root.operands[_parameter_number(fused, n)] for n in (a, b))
  ops = {"LT": (a, b, 0), "LE": (a, b, 1), "GT": (b, a, 0), "GE": (b, a, 1)}
  if direction.group(1) not in ops:
    raise HloCostError(f"loop {loop.name}: condition {direction.group(1)}.")
  counter, bound_name, inclusive = ops[direction.group(1)]
  callers = _callers(computations) if callers is None else callers
  bound = _resolve(computations, callers, cond, bound_name)
  index = _tuple_index(cond, counter)
  start = None
  if index is not None and loop.operands:
    start = _resolve(computations, callers, host, loop.operands[0], index)
  if bound is None or start is None:
    raise HloCostError(f"loop {loop.name}: cannot read its trip count from "
                       f"the condition {cond.name}.")
  return max(0, bound + inclusive - start)


def _loops(computations, entry) -> list[dict[str, Any]]:
  """Every while loop reachable from the entry, with trips and nesting."""
  found, stack, visited = [], [(entry, None)], set()
  callers = _callers(computations)
  while stack:
    name, parent = stack.pop()
    if (name, parent) in visited or name not in computations:
      continue
    visited.add((name, parent))
    comp = computations[name]
    for inst in comp.instructions.values():
      if inst.opcode == "while":
        body = re.search(r"body=%([\w.\-]+)", inst.text).group(1)
        try:
          trips = trip_count(computations, comp, inst, callers)
        except HloCostError:
          trips = None  # counted once, and reported as unknown
        loop = {"name": inst.name, "body": body, "parent": parent,
                "trips": trips}
        found.append(loop)
        stack.append((body, len(found) - 1))
      else:
        stack.extend((c, parent) for c in _called(inst))
  return found


def _with_identity_body(text: str, body: _Computation) -> str:
  """The module text with ``body`` reduced to returning its parameter."""
  param = next(line for line in body.lines if " parameter(0)" in line)
  param = re.sub(r"^\s*(ROOT\s+)?", "  ROOT ", param)
  old = "\n".join([body.header, *body.lines, "}"])
  new = "\n".join([body.header, param, "}"])
  if old not in text:
    raise HloCostError(f"cannot isolate loop body {body.name} in the module.")
  return text.replace(old, new, 1)


def _host_analysis(text: str) -> dict[str, float]:
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  from jaxlib import _hlo  # pylint: disable=g-import-not-at-top
  module = _hlo.hlo_module_from_text(text)
  cost = _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
  return {"flops": float(cost.get("flops", 0.0)),
          "bytes": float(cost.get("bytes accessed", 0.0))}


def loop_corrected_cost(compiled, counted_once: dict[str, float] | None = None
                        ) -> dict[str, Any]:
  """Per-device FLOPs and bytes of one call, every loop trip counted.

  Args:
    compiled: a ``jax.stages.Compiled``.
    counted_once: the target compiler's ``cost_analysis()`` (computed here
      when None).

  Returns:
    {"flops", "bytes": totals with trip counts; "flops_counted_once",
    "bytes_counted_once": the compiler's own figures; "loops": [{"name",
    "trips" (runs per call, enclosing loops included; None when unknown),
    "body_flops", "body_bytes"}]}.

  A loop whose trip count cannot be read stays counted once; its entry in
  "loops" has "trips" None.
  """
  if counted_once is None:
    counted_once = compiled.cost_analysis()
  flops_once = float(counted_once.get("flops", 0.0))
  bytes_once = float(counted_once.get("bytes accessed", 0.0))
  text = compiled.as_text()
  computations, entry = parse_module(text)
  loops = _loops(computations, entry)
  result = {"flops": flops_once, "bytes": bytes_once,
            "flops_counted_once": flops_once, "bytes_counted_once": bytes_once,
            "loops": []}
  if not loops:
    return result
  whole = _host_analysis(text)
  bytes_scale = bytes_once / whole["bytes"] if whole["bytes"] else 1.0
  measured = []
  for loop in loops:
    emptied = _host_analysis(_with_identity_body(
        text, computations[loop["body"]]))
    measured.append({"flops": whole["flops"] - emptied["flops"],
                     "bytes": (whole["bytes"] - emptied["bytes"]) * bytes_scale})
  # A body's measured cost includes its nested loops' bodies once.
  own = [dict(m) for m in measured]
  for i, loop in enumerate(loops):
    if loop["parent"] is not None:
      for key in ("flops", "bytes"):
        own[loop["parent"]][key] -= measured[i][key]
  for i, loop in enumerate(loops):
    runs, parent = loop["trips"], loop["parent"]
    while parent is not None and runs is not None:
      outer = loops[parent]["trips"]
      runs = None if outer is None else runs * outer
      parent = loops[parent]["parent"]
    if runs is None:  # unknown trip count: left counted once
      result["loops"].append({"name": loop["name"], "trips": None,
                              "body_flops": own[i]["flops"],
                              "body_bytes": own[i]["bytes"]})
      continue
    result["flops"] += own[i]["flops"] * (runs - 1)
    result["bytes"] += own[i]["bytes"] * (runs - 1)
    result["loops"].append({"name": loop["name"], "trips": runs,
                            "body_flops": own[i]["flops"],
                            "body_bytes": own[i]["bytes"]})
  return result
