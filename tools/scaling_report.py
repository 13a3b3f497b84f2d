"""Builds docs/SCALING.md from the committed plans in docs/scaling/*/plan.json.

Each folder ``docs/scaling/<preset>__<target>[__<variant>]`` holds the
``plan.json`` that ``lfr-plan`` wrote (see :mod:`lfr_jax.plan`). Folders
without a variant are the main table's rows; a variant (``bf16``,
``remat_blocks``, ``conv_custom_vjp``, ...) is set beside the row it varies.
Every row carries the command that made it.

Run (from the repository root)::

    python tools/scaling_report.py                 # rewrites docs/SCALING.md
    python tools/scaling_report.py --out=-         # prints it instead

Example::

    from tools import scaling_report
    scaling_report.command({"config": "mnist_lfr", "topology": "v5litepod-1",
                            "overrides": [], "eval_step": None},
                           "mnist_lfr__v5litepod-1")
    # 'python -m lfr_jax.plan --config=configs/mnist_lfr.py ...'
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from lfr_jax import text  # noqa: E402  pylint: disable=g-import-not-at-top

PROG = "tools/scaling_report.py"
PLANS = os.path.join("docs", "scaling")
MIXED = "docs/results/mixed_precision.json"
GiB = 2 ** 30
NOT_COMPILED = "not yet compiled"
# LLR paper, Sec. 5.2.1: wall time on 128 TPU v3 cores for 110 epochs.
LLR_HOURS = {"llr": 7.0, "adversarial training": 36.0}
LLR_EPOCHS = 110
# The rows this page is meant to hold: (preset, target, variant, overrides,
# compile the evaluation step too). A row whose plan is not committed yet is
# listed as not compiled, with the command that makes it.
_IMAGENET_TARGETS = ("v3-128", "v4-128", "v5litepod-256", "v6e-64")
_VARIANTS = {"bf16": ("--config.model.dtype=bfloat16",),
             "remat_blocks": ("--config.train.remat=blocks",)}
EXPECTED = (
    [(preset, target, "", (), target == "v3-128")
     for target in _IMAGENET_TARGETS
     for preset in ("imagenet_llr", "imagenet_lfr")]
    + [("cifar10_lfr", "v5litepod-8", "", (), True),
       ("mnist_lfr", "v5litepod-1", "", (), True)]
    + [(preset, "v3-128", variant, overrides, False)
       for preset in ("imagenet_llr", "imagenet_lfr")
       for variant, overrides in _VARIANTS.items()])


def load_plans(folder: str) -> dict[str, dict[str, Any]]:
  """{folder name: plan} for every ``<folder>/*/plan.json``, sorted by name.

  Raises:
    ValueError: a plan.json that does not read, naming the file.
  """
  plans = {}
  for path in sorted(glob.glob(os.path.join(folder, "*", "plan.json"))):
    try:
      with open(path) as f:
        plans[os.path.basename(os.path.dirname(path))] = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path} does not read as JSON ({text.one_line(e)}).")
  return plans


def split_name(name: str) -> tuple[str, str]:
  """``"imagenet_lfr__v3-128__bf16"`` -> ("imagenet_lfr__v3-128", "bf16")."""
  parts = name.split("__")
  return "__".join(parts[:2]), "__".join(parts[2:])


def command(plan: dict[str, Any], name: str) -> str:
  """The command that rewrites the plan in ``docs/scaling/<name>``."""
  config = plan["config"].split(":")
  path = f"configs/{config[0]}.py" + (f":{config[1]}" if len(config) > 1
                                       else "")
  args = [f"--config={path}", f"--topology={plan['topology']}",
          f"--out={PLANS}/{name}", "--overwrite", *plan["overrides"]]
  if plan.get("eval_step") is None:
    args.append("--eval=false")
  return "python -m lfr_jax.plan " + " ".join(args)


def folder_name(preset: str, target: str, variant: str) -> str:
  """``docs/scaling`` folder of a row, e.g. "imagenet_lfr__v3-128__bf16"."""
  return "__".join(part for part in (preset, target, variant) if part)


def missing(plans: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
  """(folder name, command) of every :data:`EXPECTED` row without a plan."""
  out = []
  for preset, target, variant, overrides, with_eval in EXPECTED:
    name = folder_name(preset, target, variant)
    if name not in plans:
      wanted = {"config": preset, "topology": target,
                "overrides": list(overrides),
                "eval_step": {} if with_eval else None}
      out.append((name, command(wanted, name)))
  return out


def _gib(n: float | None) -> str:
  return "n/a" if n is None else f"{n / GiB:.2f}"


def _fits(plan: dict[str, Any]) -> str:
  used = plan["memory_per_device_bytes"]
  if plan["hbm_per_device_bytes"] is None:
    return f"{_gib(used)} GiB"
  word = "yes" if plan["fits"] else "**no**"
  return (f"{word}: {_gib(used)} of {plan['hbm_per_device_bytes'] / GiB:.0f}"
          f" GiB per {plan['memory_unit']}")


def _hours(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3g}"


def _step(plan: dict[str, Any]) -> str:
  step = plan["train_step"]
  if step["seconds_lower_bound"] is None:
    return "n/a"
  return f"{step['seconds_lower_bound']:.3g} ({step['bound']})"


def _hours_for(plan: dict[str, Any], epochs: float) -> float | None:
  if plan["step_seconds_lower_bound"] is None:
    return None
  return epochs * plan["steps_per_epoch"] * plan["step_seconds_lower_bound"] \
      / 3600


def _compile(plan: dict[str, Any]) -> str:
  """"train T + eval E (load a-b, R GiB)": compile seconds with lowering."""
  loads = plan["host"]["load_average_1m"]
  parts = []
  for label, step in (("train", plan["train_step"]),
                      ("eval", plan["eval_step"])):
    if step is not None:
      parts.append(f"{label} {step['lower_seconds'] + step['compile_seconds']:.0f}")
  return (f"{' + '.join(parts)} (load {loads[0]:.0f}-{loads[1]:.0f}, "
          f"{plan['host']['peak_rss_bytes'] / GiB:.1f} GiB)")


def main_table(plans: dict[str, dict[str, Any]]) -> str:
  """The rows without a variant: fit, FLOPs, roofline step and run times."""
  rows = []
  for name, plan in plans.items():
    if split_name(name)[1]:
      continue
    llr = (f"{LLR_HOURS['llr']:g} h (LLR), {LLR_HOURS['adversarial training']:g}"
           f" h (adv. training)" if plan["dataset"] == "imagenet2012" else "")
    rows.append([
        plan["config"], plan["topology"],
        f"{plan['num_devices']} x {plan['device_kind']} "
        f"({plan['num_hosts']} host{'s' if plan['num_hosts'] != 1 else ''})", str(plan["batch_per_device"]),
        _fits(plan), f"{plan['train_step']['flops']:.3g}", _step(plan),
        f"{_hours(plan['train_hours_lower_bound'])} ({plan['num_epochs']:g} "
        f"epochs)",
        _hours(_hours_for(plan, LLR_EPOCHS)) if llr else "", llr,
        _compile(plan)])
  for name, _ in missing(plans):
    preset, target, variant = (split_name(name)[0].split("__")
                               + [split_name(name)[1]])
    if not variant:
      rows.append([preset, target, "", "", NOT_COMPILED, "", "", "", "", "",
                   ""])
  return text.markdown_table(
      ["preset", "target", "devices", "batch per device", "fits (memory per "
       "device)", "FLOPs/step/device", "roofline s/step (bound)",
       ">= training h", f">= h for {LLR_EPOCHS} epochs",
       f"LLR paper, {LLR_EPOCHS} epochs on 128 v3 cores",
       "compile s (host load, peak host RSS)"], rows, left_columns=3)


def variant_table(plans: dict[str, dict[str, Any]], variants: tuple[str, ...]
                  ) -> str:
  """Rows that differ from their base row only by one of ``variants``."""
  rows = []
  for name, plan in plans.items():
    base, variant = split_name(name)
    if variant not in variants or base not in plans:
      continue
    reference = plans[base]["train_step"]
    for label, row in (("as in the main table", plans[base]),
                       (variant, plan)):
      step, memory = row["train_step"], row["train_step"]["memory"]
      rows.append([
          row["config"], row["topology"], label,
          f"{row['resolved']['dtype']}, conv {row['resolved']['conv']}, "
          f"remat {row['resolved']['remat']}",
          f"{_gib(memory['temporaries'])}", f"{_gib(memory['total'])}",
          _change(memory["total"], reference["memory"]["total"]),
          f"{step['flops']:.4g}", _change(step["flops"], reference["flops"]),
          f"{step['bytes']:.4g}", _change(step["bytes"], reference["bytes"]),
          _step(row), f"{step['lower_seconds'] + step['compile_seconds']:.0f}"])
  for name, _ in missing(plans):
    base, variant = split_name(name)
    if variant in variants:
      rows.append([*base.split("__"), variant, NOT_COMPILED, "", "", "", "",
                   "", "", "", "", ""])
  return text.markdown_table(
      ["preset", "target", "row", "settings", "temporaries GiB",
       "total GiB per device", "vs main row", "FLOPs/step", "vs main row",
       "bytes/step", "vs main row", "roofline s/step (bound)",
       "train-step compile s"], rows, left_columns=4)


def _change(value: float, reference: float) -> str:
  """"" for the reference itself, else the relative change, e.g. "-31%"."""
  if value == reference:
    return ""
  return f"{(value - reference) / reference:+.1%}" if reference else "n/a"


def commands(plans: dict[str, dict[str, Any]]) -> str:
  """Every plan's command, one per line, in a code block; then the missing."""
  lines = [command(plan, name) for name, plan in plans.items()]
  out = "```bash\n" + "\n".join(lines) + "\n```"
  todo = missing(plans)
  if todo:
    out += ("\n\nRows marked \"" + NOT_COMPILED + "\" have no plan yet; each"
            " is made by its command here (one at a time: an ImageNet compile"
            " holds 11-18 GiB of host memory):\n\n```bash\n"
            + "\n".join(line for _, line in todo) + "\n```")
  return out


def chip_table(plans: dict[str, dict[str, Any]]) -> str:
  """The chip figures the plans used, with their sources."""
  chips = {}
  for plan in plans.values():
    if plan.get("chip"):
      chips[plan["chip"]["name"]] = plan["chip"]
  rows = [[c["name"], f"{c['peak_flops'] / 1e12:g}",
           f"{c['hbm_bytes'] / GiB:.1f}", f"{c['hbm_bandwidth'] / 1e9:g}",
           c["source"]] for _, c in sorted(chips.items())]
  return text.markdown_table(
      ["chip", "peak bf16 TFLOP/s", "HBM GiB", "HBM GB/s", "source"], rows,
      left_columns=1)


TEMPLATE = """# Will it fit on a pod? Compiled plans for TPU slices

Every number on this page is a **compiler estimate or a lower bound, not a
measured time**. No TPU was used: `lfr-plan` (`lfr_jax/plan.py`) compiled
each preset's real training step, the one `train.py` runs, with libtpu's
compiler on a {machine} host, for compile-only devices of the named TPU slice,
and read memory and costs off the compiled programs. A real step is slower
than its roofline bound: the bound leaves out communication between chips
(the gradient all-reduce), the input pipeline and everything that keeps a
chip below its peak.

Plans made {dates} with {versions}.

## How a plan is made

- **What is compiled.** `steps.make_train_step` with the preset's objective,
  optimizer, schedules and a data-parallel mesh over every device of the
  slice; parameters and optimizer state are abstract (`jax.eval_shape`), so
  nothing is allocated. The robust evaluation step is compiled too where the
  row says so (ImageNet: on v3-128; evaluation adds 4 batches per epoch to
  2,482 training steps). Backend-dependent choices are made for the *target*:
  on TPU the inner loop stays rolled (`inner.unroll` "auto"), the convolution
  is `lax.conv_general_dilated` (`model.conv` "auto"), and float32 matmuls
  and convolutions run at XLA's default precision (one bfloat16 pass with
  float32 accumulation; `jax_default_matmul_precision` is recorded in each
  plan, "default" throughout).
- **Memory per device** = arguments + outputs + temporaries + generated code
  - aliased buffers (the donated state and the new state share memory), from
  `compiled.memory_analysis()`. "Fits" compares it with the device's share of
  the chip's HBM (a v3 core is half a chip; v4 and v5p run as megacore, one
  device per chip).
- **FLOPs and bytes per step per device** come from XLA's cost analysis with
  every loop counted as often as it runs: XLA counts a `while` body once, so
  `lfr_jax/hlo_cost.py` reads each loop's trip count from the compiled HLO,
  costs the body by analysing the module again with that body emptied, and
  adds it `trips - 1` more times. Checked against fully unrolled compiles:
  exact for hand-counted nested matmul loops (`tests/test_plan.py`){unrolled}.
  Bytes of a loop body are scaled by the ratio of the TPU's byte count to
  the host analysis' (tile padding), an approximation.
- **Roofline lower bound** of a step = max(FLOPs / peak FLOP/s, bytes / HBM
  bandwidth) of one device; epochs and runs multiply it by the steps. Chip
  figures (peak dense bf16 rate, HBM, HBM bandwidth per chip):

{chips}

## The presets on TPU slices

LLR's ImageNet setup is ResNet-152 (softplus) at batch 512 on 128 TPU v3
cores, which the paper reports trained in 7 hours for 110 epochs with LLR and
36 hours with adversarial training (LLR paper, Sec. 5.2.1; its Appendix F.2
schedule has 100 epochs, as `configs/imagenet_llr.py`). The roofline columns
say how fast the same step could at best run; the gap to the paper's 7 hours
is what communication, input and sub-peak efficiency cost a real run.

{main}

## bfloat16 against float32, rematerialization on against off

`config.model.dtype=bfloat16` computes convolutions, matmuls and activations
in bfloat16 (parameters, BatchNorm statistics, logits and losses stay
float32). `config.train.remat=blocks` recomputes each residual block in the
backward pass; `remat=inner` checkpoints the network inside the inner
maximization. Same gradients either way (`tests/test_remat_and_conv.py`).

{variants}

## bfloat16 numerics

{numerics}

## The convolution on TPU

The grad-of-grad-safe custom-VJP convolution (`lfr_jax/models/conv.py`) is
what makes the CPU step fast; on TPU the plans compare it with the plain
`lax.conv_general_dilated`:

{conv}

## Compile time

The compile column is wall-clock seconds on a busy shared host (its 1-minute
load average at the start and end of the plan in brackets; 2 cores), so it
expect shorter compiles on an idle machine.
libtpu's compiler spends most of it, and it depends on the target
generation and the batch per device more than on the program's size: the
WideResNet-28-8 `cifar10_lfr` step on v5litepod-8 (32 images per chip)
took about two hours of wall time, the far larger ResNet-152 `imagenet_llr`
step on v3-128 (4 images per core) 24 minutes. The `cifar10_lfr` inner loop was rolled (the
plan's `resolved.unroll` is false and its `loops` show the 10 trips), so
unrolling is not the cause; its compile shared the host with the
`imagenet_llr` one for 40 minutes and used 56 CPU-minutes in all (GNU `time`
around the command below). The same `mnist_lfr` training step with 128
images per device compiled in 129 CPU-seconds for one v5e chip and 46 for
eight v3 cores (`--topology=v3-8 --config.data.batch_size=1024
--config.eval.batch_size=512`), and in 55 for one v5e chip with 16 images
(`--config.data.batch_size=16`), each with `--eval=false`. `--eval=false`
skips the evaluation step's compile (a quarter of the `cifar10_lfr` time).

## Commands

Each row above, rewritten by:

{commands}

then `python tools/scaling_report.py` rebuilds this page.

## plan.json keys

- `global_batch`, `eval_batch`, `batch_per_device`: examples per step (all
  devices), per evaluation batch, per device.
- `num_devices`, `num_hosts`, `cores_per_device`, `device_kind`,
  `memory_unit` ("core" or "chip"): the target as compiled; `topology`,
  `libtpu_topology`, `chip_config`, `platform`.
- `train_examples`, `steps_per_epoch`, `num_epochs`, `total_steps`,
  `eval_steps` (`validation` batches per pass, `validations` passes, `test`
  batches).
- `train_step`, `eval_step` (null when not compiled): `memory` (`arguments`,
  `outputs`, `temporaries`, `generated_code`, `aliased`, `total`, bytes per
  device), `fits`, `margin_bytes`, `flops`, `bytes` (per step per device,
  loops counted), `flops_counted_once`, `bytes_counted_once` (XLA's own),
  `loops` (`trips`, `body_flops`, `body_bytes`), `compute_seconds`,
  `memory_seconds`, `seconds_lower_bound`, `bound`, `lower_seconds`,
  `compile_seconds`.
- `step_seconds_lower_bound`: the training step's roofline bound (null for a
  CPU target: no chip figures); `epoch_seconds_lower_bound`,
  `train_hours_lower_bound`, `eval_hours_lower_bound`,
  `run_hours_lower_bound` (training plus the evaluations compiled).
- `memory_per_device_bytes` (the larger step), `hbm_per_device_bytes`,
  `fits`; `chip` (figures and source), `device` (the device's share).
- `resolved`: `unroll`, `eval_unroll`, `conv`, `dtype`, `remat`,
  `matmul_precision`, `xla_flags`, `libtpu_init_args`.
- `config`, `overrides`, `config_values` (the whole config), `method`,
  `model`, `dataset`, `date`, `versions`, `host` (`machine`,
  `load_average_1m` at start and end, `peak_rss_bytes` of the compile),
  `compile_seconds` (both steps, with lowering), `verdict`, `schema`.
"""


def unrolled_check(plans: dict[str, dict[str, Any]]) -> str:
  """The rolled-against-unrolled sentence, from a plan and its __unrolled twin."""
  for name, plan in plans.items():
    base, variant = split_name(name)
    if variant != "unrolled" or base not in plans:
      continue
    rolled, unrolled = plans[base]["train_step"], plan["train_step"]
    trips = ", ".join(str(l["trips"]) for l in rolled["loops"])
    return (f"; for the TPU, `{plan['config']}` on {plan['topology']} with its"
            f" inner loop rolled ({trips} trips) counts {rolled['flops']:.4g} "
            f"FLOPs and {rolled['bytes']:.4g} bytes per step, the same step "
            f"fully unrolled {unrolled['flops']:.4g} and {unrolled['bytes']:.4g}"
            f" ({(rolled['flops'] - unrolled['flops']) / unrolled['flops']:+.1%}"
            f" and {(rolled['bytes'] - unrolled['bytes']) / unrolled['bytes']:+.1%}"
            f"; XLA alone counts the rolled step's loop body once: "
            f"{rolled['flops_counted_once']:.4g} FLOPs)")
  return ""


def numerics_table(path: str) -> str:
  """The bf16-against-float32 table of ``bench/mixed_precision.py --json``."""
  if not os.path.exists(path):
    return "(no `bench/mixed_precision.py --json` results committed yet)"
  with open(path) as f:
    result = json.load(f)
  settings = result["settings"]
  rows = [[r["regularizer"], r["inner"], f"{r['value_f32']:.5g}",
           f"{r['value_bf16']:.5g}", f"{r['value_rel_diff']:.2%}",
           f"{r['grad_rel_l2_error']:.2%}", f"{r['grad_cosine']:.4f}"]
          for r in result["results"]]
  table = text.markdown_table(
      ["regularizer", "inner maximization", "value f32", "value bf16",
       "value rel. diff", "grad rel. l2 error", "grad cosine"], rows,
      left_columns=2)
  return (f"How far bfloat16 compute moves each regularizer, measured on the "
          f"CPU (XLA:CPU's bfloat16, not a TPU's): a SmallCNN trained "
          f"{settings['train_steps']} SGD steps on MNIST, the regularizers' "
          f"values and parameter gradients on {settings['batch']} images at "
          f"eps {settings['eps']}, K = {settings['num_steps']}, by the float32 "
          f"model and its bfloat16-compute twin with the same parameters. "
          f"\"same inner points\": both use the float32 model's inner "
          f"maximization, so only the arithmetic differs; \"bf16 end to "
          f"end\": the bf16 model also searches for its own inner points, as "
          f"a bf16 run would. `tests/test_mixed_precision.py` bounds the "
          f"first kind in the default suite. Machine: {result['machine']}.\n\n"
          f"```bash\npython bench/mixed_precision.py --json={MIXED}\n```\n\n"
          f"{table}")


def build(folder: str = PLANS) -> str:
  """The whole SCALING.md text from the plans under ``folder``."""
  plans = load_plans(os.path.join(REPO, folder))
  if not plans:
    raise ValueError(f"no plans under {folder}/*/plan.json.")
  dates = sorted({p["date"] for p in plans.values()})
  versions = plans[next(iter(plans))]["versions"]
  machine = plans[next(iter(plans))]["host"]["machine"]
  return TEMPLATE.format(
      machine=machine, dates=" to ".join(dict.fromkeys((dates[0], dates[-1]))),
      versions=", ".join(f"{k} {v}" for k, v in versions.items() if v),
      chips=chip_table(plans), main=main_table(plans),
      variants=variant_table(plans, ("bf16", "remat_blocks", "remat_inner")),
      conv=variant_table(plans, ("conv_custom_vjp",)),
      unrolled=unrolled_check(plans),
      numerics=numerics_table(os.path.join(REPO, MIXED)),
      commands=commands(plans))


def run(out: str) -> None:
  """Writes (or prints, for "-") the page."""
  page = build()
  if out == "-":
    print(page)
    return
  with open(os.path.join(REPO, out), "w") as f:
    f.write(page)
  print(f"wrote {out}")


if __name__ == "__main__":
  from absl import flags  # pylint: disable=g-import-not-at-top
  from lfr_jax import cli  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out", "docs/SCALING.md", "Output file, or - to print.")
  cli.main(PROG, lambda: run(flags.FLAGS.out), user_errors=(ValueError,),
           settings_hint="--out=FILE", quiet_logs=False)
