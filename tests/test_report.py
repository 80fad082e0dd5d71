"""The findings are generated: README's sections equal the reports of their committed summaries,
and every sentence follows the numbers it is read from."""

import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from experiments import report as report_entry
from resnorm import records, report, statistics, theory

README = os.path.join(helpers.REPO, "README.md")


FINDINGS = os.path.join(helpers.REPO, "docs", "findings")


def test_every_generated_section_is_the_report_of_its_committed_summary():
  """README's headline (the default sweep's slopes at a glance) and docs/findings/*.md (each sweep's
  whole report) are, between their markers, what their summaries say: nothing there is written by hand."""
  documents = {README: [("docs/summary.json", "glance")]}
  for name, summary in (
    ("depth_sweep", "../summary.json"),
    ("ladder", "../ladder/summary.json"),
    ("tasks", "../tasks/summary.json"),
    ("deep", "../deep/summary.json"),
    ("images", "../images/summary.json"),
    ("transformers", "../transformers/summary.json"),
  ):
    documents[os.path.join(FINDINGS, f"{name}.md")] = [(summary, None)]
  assert sorted(os.listdir(FINDINGS)) == sorted(os.path.basename(d) for d in documents if d != README)
  for document, expected in documents.items():
    with open(document) as f:
      found = report_entry.sections(f.read())
    assert [(path, part) for path, part, _ in found] == expected, document
    for path, part, body in found:
      assert body == report_entry.section(path, os.path.dirname(document), part), (
        f"{document}'s section of {path} is stale: run python -m experiments.report {document}"
      )


def test_regenerating_the_readme_changes_nothing_else(tmp_path):
  text = "before\n<!-- report: docs/summary.json -->\nstale\n<!-- /report -->\nafter\n"
  regenerated = report_entry.regenerated(text, helpers.REPO)
  assert regenerated.startswith("before\n<!-- report: docs/summary.json -->\n## δ against depth")
  assert regenerated.endswith("<!-- /report -->\nafter\n") and "stale" not in regenerated
  assert report_entry.regenerated(regenerated, helpers.REPO) == regenerated


def _seeds(values, depths, spread=0.05, shift=0):
  """Per depth, three seeds at value·e^(−spread, 0, spread) in an order that turns with the depth
  (and ``shift``): each depth's geometric mean is exact, and two stages drawn with different
  shifts differ seed by seed, as paired runs do."""
  return [v * np.exp(np.roll([-spread, 0.0, spread], j + shift)) for j, v in enumerate(values)]


def _stage(deltas_per_depth, depths, mean_deltas=None):
  """A Stage whose δ_max (and δ_mean: ``mean_deltas``, or the same) are the given seeds', with the
  bound readings of them; every other statistic unmeasured."""
  mean_deltas = deltas_per_depth if mean_deltas is None else mean_deltas
  nones = [None] * len(depths)
  columns = [*statistics.REGISTRY, "token_c_last"]

  def means(per_depth):
    return [float(np.mean(d)) for d in per_depth]

  def stds(per_depth):
    return [float(np.std(d, ddof=1)) if len(d) > 1 else None for d in per_depth]

  per_seed = {name: [[None] * 3] * len(depths) for name in [s.name for s in statistics.read_as_bound()]}
  per_seed.update(delta_max=[list(d) for d in deltas_per_depth], delta_mean=[list(d) for d in mean_deltas])
  return records.Stage(
    means={
      **{name: nones for name in columns},
      "delta_max": means(deltas_per_depth),
      "delta_mean": means(mean_deltas),
      "num_layers": list(depths),
    },
    std={**{name: nones for name in columns}, "delta_max": stds(deltas_per_depth), "delta_mean": stds(mean_deltas)},
    per_seed={**per_seed, "token_c_last": [[None] * 3] * len(depths)},
    bound={
      **{s.name: theory.read_bound(depths, [[None]] * len(depths)) for s in statistics.read_as_bound()},
      "delta_max": theory.read_bound(depths, deltas_per_depth),
      "delta_mean": theory.read_bound(depths, mean_deltas),
    },
    fit={},
    bound_L="layers",
  )


def _family(init, trained, depths, **fields):
  nones = [None] * len(depths)
  losses = {key: [[0.1] * 3] * len(depths) for key in ("train_loss", "test_loss", "init_test_loss")}
  return records.FamilyResults(
    depths=depths,
    diverged=[False] * len(depths),
    diverged_at_step=nones,
    train_loss=[0.1] * len(depths),
    test_loss=[0.1] * len(depths),
    init=init,
    trained=trained,
    model="mlp_residual",
    seeds=[0, 1, 2],
    num_diverged=[0] * len(depths),
    std={"train_loss": nones, "test_loss": nones, "test_accuracy": nones},
    by_kind={},
    init_test_loss=nones,
    per_seed=losses,
    **fields,
  )


CONVERGENCE = dict(window=0.25, tolerance=0.05, trend_tolerance=0.05)
BUDGET = dict(
  steps=400,
  optimizer="adam",
  learning_rate=1e-3,
  schedule="cosine",
  warmup_epochs=0.0,
  batch_size=64,
  block_lr_scale="1",
)


def test_the_sentences_follow_the_numbers():
  """A rising trained δ is said to rise, with a c_L that grows; a falling one as 1/L is consistent
  with the bound and described by a power law; zero-init is learned, not built in; training's
  change of the slope is an interval on the difference, paired by seed; convergence counts and
  falls are read back."""
  depths = [2, 8, 32, 128]
  rising = _seeds([0.01 * L**0.3 for L in depths], depths)
  falling = _seeds([0.3 / L for L in depths], depths)
  zero = [np.zeros(3) for _ in depths]
  summary = records.SweepSummary(
    "zero",
    {
      "zero": _family(
        _stage(zero, depths),
        _stage(rising, depths),
        depths,
        budget=BUDGET,
        num_converged=[3, 3, 1, 0],
        train_loss_fall=[0.01, 0.02, 0.1, 0.25],
        convergence=CONVERGENCE,
        overrides=dict(name="mlp_residual", zero_init_last=True, branch_scale="1"),
      ),
      "scaled": _family(
        _stage(falling, depths),
        _stage(_seeds([0.3 / L for L in depths], depths, shift=1), depths),
        depths,
        budget=BUDGET,
        overrides=dict(name="mlp_residual", branch_scale="1/L"),
      ),
    },
  )
  text = report.render(summary)
  zero_part, scaled_part = text.split("### `scaled`")

  assert "x_(l+1) = x + F(x), the last layer of F zero at initialisation" in zero_part
  assert "every block is the identity (δ = 0 at every depth)" in zero_part
  assert (
    "δ_max rises as L^0.30 [" in zero_part
    and "c_L grows with L: over these depths δ falls more slowly than" in zero_part
  )
  assert "in L = 2: 3/3 (fall 1%), L = 8: 3/3 (fall 2%), L = 32: 1/3 (fall 10%), L = 128: 0/3 (fall 25%)" in zero_part
  assert "by at most 5% of its final value over the last 25% of the run" in zero_part
  assert "400 Adam steps, cosine learning rate from 0.001, batch 64" in zero_part
  assert "x_(l+1) = x + F(x)/L" in scaled_part and "δ_max falls as L^−1.00 [" in scaled_part
  assert "c_L does not grow with L: consistent with δ ≤ c·log(2L)/L" in scaled_part
  assert "A power law describes δ(L) within the seeds' scatter (χ² 0.00 on 2 dof, p 1;" in scaled_part
  assert "δ_max's slope from initialisation to the end of training: L^−1.00 [" in scaled_part
  assert "(paired by seed): not detectable with these seeds." in scaled_part


def test_a_u_shaped_delta_is_said_to_have_a_minimum():
  """The reference's δ_max shape (down to L = 32, up after): no power law, a minimum named."""
  depths = [2, 8, 32, 128]
  stage = _stage(_seeds([0.3, 0.15, 0.09, 0.12], depths, spread=0.02), depths)
  sentence = report._reading_sentence("δ_max", stage, "delta_max")
  assert "No power law describes δ(L) (χ² " in sentence and "a minimum between L = 32 and L = 32" not in sentence
  assert "a minimum between L = " in sentence


def test_delta_max_is_compared_with_its_fixed_sample_counterpart_paired_by_seed():
  """δ_max rising as L^0.1 where the per-block max median is flat: the difference of the slopes,
  paired by seed in the same runs, is detected and about 0.1."""
  depths = [2, 8, 32, 128]
  stage = _stage(_seeds([0.1 * L**0.1 for L in depths], depths), depths)
  flat = _seeds([0.05] * len(depths), depths, shift=1)
  stage.per_seed["layer_max_median"] = [list(seeds) for seeds in flat]
  stage.bound["layer_max_median"] = theory.read_bound(depths, flat)
  (line,) = report._sample_size(_family(stage, stage, depths, budget=BUDGET, overrides={}), 0.9)
  assert "slopes L^0.10 [0.08, 0.12] and L^0.00 [−0.02, 0.02]" in line
  assert "a difference of 0.1 [0.0673, 0.133] (paired by seed): detected" in line


def test_a_slope_whose_interval_holds_zero_is_said_not_to_move():
  """Seeds spread by a factor e^±0.5 about a flat δ with a small tilt: the 90% interval of the slope
  holds 0, so the sentence claims no trend (neither the point estimate's rise nor a fall); the
  same tilt with the seeds close together is said to rise."""
  depths = [2, 8, 32, 128]
  tilt = [0.2 * L**0.05 for L in depths]
  noisy = [t * np.exp([-0.5, 0.0, 0.5, 0.3, -0.4]) for t in tilt]
  tight = [t * np.exp([-0.01, 0.0, 0.01]) for t in tilt]
  for deltas, expected in ((noisy, "δ_max does not move detectably with L: L^"), (tight, "δ_max rises as L^0.05 [")):
    stage = _stage(deltas, depths)
    low, high = stage.bound["delta_max"].slope_interval
    assert (low <= 0 <= high) == (deltas is noisy)
    assert report._reading_sentence("δ_max", stage, "delta_max").startswith(expected)


def test_a_budget_ladder_says_whether_each_slope_moved():
  """Three budgets of one setting: δ_max's slope −0.3 at 400 and 2,000 steps and −1 at 10,000 is a
  change detected on the paired difference of the slopes; δ_mean, the same per depth at every
  budget up to the seeds' order, is not. A setting of another schedule is a ladder of its own, and
  settings of one budget make none."""
  depths = [2, 8, 32, 128]
  shallow, steep = ([0.3 * L**power for L in depths] for power in (-0.3, -1.0))
  overrides = dict(name="mlp_residual", zero_init_last=True, branch_scale="1")

  def rung(steps, schedule, deltas, shift):
    budget = dict(BUDGET, steps=steps, schedule=schedule)
    trained = _stage(_seeds(deltas, depths, shift=shift), depths, _seeds(shallow, depths, shift=shift))
    return _family(
      _stage(_seeds(shallow, depths), depths),
      trained,
      depths,
      budget=budget,
      overrides=overrides,
      num_converged=[3, 3, 3, steps // 5000],
      convergence=CONVERGENCE,
      train_loss_fall=[0.01, 0.02, 0.03, 0.5],
      train_loss_relative=[0.01] * 4,
      test_loss_relative=[0.02] * 4,
    )

  summary = records.SweepSummary(
    "a",
    {
      "a": rung(400, "cosine", shallow, 0),
      "c": rung(10_000, "cosine", steep, 1),
      "b": rung(2_000, "cosine", shallow, 2),
      "d": rung(400, "constant", shallow, 0),
    },
  )
  text = "\n".join(report.budget_ladder(summary))
  assert text.count("## Budget ladder") == 1 and "cosine learning rate" in text
  rows = [line for line in text.splitlines() if line.startswith("| ") and "steps" in line and "budget" not in line]
  assert [row.split(" | ")[0] for row in rows] == ["| 400 steps", "| 2000 steps", "| 10000 steps"]
  assert "| train-loss fall over the last 25%, relative to the final loss, at L = 128 | converged |" in text
  assert rows[0].endswith("| 0.01, 0.02 | 50% | 9/12 |")
  assert rows[2].endswith("| 11/12 |")  # converged: 0 and 2 of 3 at L = 128
  moved = next(line for line in text.splitlines() if line.startswith("* δ_max's slope from 400 to 10000 steps"))
  assert ": L^−0.30 [" in moved and "→ L^−1.00 [" in moved and "(paired by seed): detected." in moved
  still = next(line for line in text.splitlines() if line.startswith("* δ_mean's slope from 400 to 10000 steps"))
  assert "(paired by seed): not detectable with these seeds." in still
  assert "* At no budget of this ladder did every run of every depth converge." in text
  longer = records.SweepSummary("a", {"a": rung(400, "cosine", shallow, 0), "e": rung(15_000, "cosine", steep, 1)})
  first = next(line for line in report.budget_ladder(longer) if "converged at every depth" in line)
  assert first.startswith("* Every run converged at every depth first at 15000 steps (`e`), where c_L by L = 2, 8")
  assert "is 0.216, 0.108, 0.0721, 0.0541 for δ_max" in first  # 0.3/L · L/log(2L)
  assert ". There δ_max falls as L^−1.00" in first
  one_budget = records.SweepSummary("a", {"a": rung(400, "cosine", shallow, 0), "d": rung(400, "constant", shallow, 0)})
  assert report.budget_ladder(one_budget) == []


def test_across_tasks_only_what_every_task_shows_is_stated_as_general():
  """Three tasks of one setting and budget: δ falls on every task (said so), c_L grows on two and
  not on the third (no general finding: each task's verdict named); a setting of another budget
  is a table of its own, and one task alone makes none."""
  depths = [2, 8, 32, 128]
  reference = dict(name="mlp_residual", zero_init_last=True, branch_scale="1")

  def on(task, power, steps=400):
    trained = _stage(_seeds([0.3 * L**power for L in depths], depths), depths)
    return _family(
      trained, trained, depths, budget=dict(BUDGET, steps=steps), overrides=dict(reference, data=dict(name=task))
    )

  summary = records.SweepSummary(
    "a",
    {
      "a": on("teacher", -0.3),
      "b": on("random_mlp", -0.5),
      "c": on("digits", -1.5),
      "d": on("digits", -1.5, steps=10_000),
    },
  )
  text = "\n".join(report.across_tasks(summary))
  assert text.count("## Across tasks:") == 1 and "| `teacher` | `a` |" in text and "| `digits` | `c` |" in text
  line = next(line for line in text.splitlines() if line.startswith("* δ_max:"))
  assert line.startswith(
    "* δ_max: on every task, falls with L; a power law describes δ(L). Whether c_L grows: not alike"
  )
  assert "(teacher: c_L grows with L, random_mlp: c_L grows with L, digits: c_L does not grow with L)" in line
  assert report.across_tasks(records.SweepSummary("a", {"a": on("teacher", -0.3)})) == []


@pytest.mark.slow
def test_the_entry_point_prints_a_report(tmp_path):
  """python -m experiments.report --summary prints a committed summary's report; only here."""
  done = subprocess.run(
    [sys.executable, "-m", "experiments.report", "--summary=docs/summary.json"],
    cwd=helpers.REPO,
    capture_output=True,
    text=True,
    env=helpers.cpu_env(),
    check=False,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.startswith("# δ against depth: what this sweep measured")
