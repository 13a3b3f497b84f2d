"""Small text helpers shared by the programs and reports: one-line errors, percents, tables.

Example::

    from lfr_jax import text
    text.one_line(ValueError("ValueError: eps must be >= 0, got -1."))
    # 'eps must be >= 0, got -1.'
    text.percent(0.1234)                     # '12.34'
    print(text.markdown_table(["row", "acc"], [["lfr", "12.34"]]))
    text.markdown_row(["lfr", "12.34"])      # '| lfr | 12.34 |'
"""

from __future__ import annotations

import ast
import re
from typing import Sequence


def unquote(text: str) -> str:
  """``text`` without the repr quotes ml_collections nests around KeyError messages."""
  # config_flags nests reprs of KeyError messages ("'\\'lrr\\'\\nDid you ...'").
  for _ in range(3):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
      try:
        text = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        break
  return text


def lines(error: BaseException) -> list[str]:
  """The non-empty, stripped lines of an error's message."""
  return [l.strip() for l in unquote(str(error).strip()).splitlines()
          if l.strip()]


def one_line(error: BaseException, *, pick: str = "last",
             limit: int | None = None) -> str:
  """The informative line of an error message, without exception prefixes.

  Args:
    error: any exception.
    pick: "last" (absl and ml_collections put the useful line last, after a
      traceback-like preamble) or "first" (orbax and TensorStore put the gist
      first and append pages of context).
    limit: cut the line to this many characters (with "..."); None keeps it.

  Returns:
    One line; the exception's type name when the message is empty.
  """
  found = lines(error)
  if not found:
    return type(error).__name__
  line = found[-1] if pick == "last" else found[0]
  line = re.sub(r"^(\w+(Error|Exception): )+", "", line)
  line = line.split(" See full ")[0]  # TensorStore appends its whole spec
  if limit is not None and len(line) > limit:
    line = line[:limit - 3].rstrip() + "..."
  return line


def percent(value, *, digits: int = 2, missing: str = "n/a") -> str:
  """``0.1234 -> "12.34"``: a fraction as a percentage, no sign.

  Args:
    value: a fraction in [0, 1], or None.
    digits: decimals.
    missing: the text for None or NaN.
  """
  if value is None or value != value:
    return missing
  return f"{100 * float(value):.{digits}f}"


def markdown_row(cells: Sequence) -> str:
  """One line of a Markdown table: ``["a", 1] -> "| a | 1 |"``.

  For tables printed a row at a time, as each row is measured, under the
  head that ``markdown_table(header, [])`` gives.

  Args:
    cells: the row's cells; each is written with ``str``.

  Returns:
    The line, no trailing newline.
  """
  return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
                   left_columns: int | None = None) -> str:
  """A GitHub-flavoured Markdown table.

  Args:
    header: column titles.
    rows: one sequence of cell texts per row, as long as ``header``.
    left_columns: how many leading (label) columns are left-aligned; the
      rest (numbers) are right-aligned. None left-aligns every column.

  Returns:
    The table, lines joined by newlines, no trailing newline.
  """
  left = len(header) if left_columns is None else left_columns
  rule = ["---"] * left + ["---:"] * (len(header) - left)
  out = [markdown_row(header), "|" + "|".join(rule) + "|"]
  out += [markdown_row(row) for row in rows]
  return "\n".join(out)
