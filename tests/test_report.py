"""The findings are generated: README's sections equal the reports of their committed summaries,
and every sentence follows the numbers it is read from."""

import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from experiments import report as report_entry
from resnorm import records, report, theory

README = os.path.join(helpers.REPO, "README.md")


def test_readme_findings_are_the_reports_of_their_committed_summaries():
  with open(README) as f:
    sections = report_entry.sections(f.read())
  assert [path for path, _ in sections] == ["docs/summary.json"]
  for path, body in sections:
    assert body == report_entry.section(path, helpers.REPO), f"README's section of {path} is stale: run " \
        "python -m experiments.report --readme=README.md"


def test_regenerating_the_readme_changes_nothing_else(tmp_path):
  text = "before\n<!-- report: docs/summary.json -->\nstale\n<!-- /report -->\nafter\n"
  regenerated = report_entry.regenerated(text, helpers.REPO)
  assert regenerated.startswith("before\n<!-- report: docs/summary.json -->\n## δ against depth")
  assert regenerated.endswith("<!-- /report -->\nafter\n") and "stale" not in regenerated
  assert report_entry.regenerated(regenerated, helpers.REPO) == regenerated


def _stage(deltas_per_depth, depths):
  """A Stage whose δ_max is the mean of the given seeds, with the bound reading of them."""
  means = [float(np.mean(d)) for d in deltas_per_depth]
  stds = [float(np.std(d, ddof=1)) if len(d) > 1 else None for d in deltas_per_depth]
  reading = theory.read_bound(depths, deltas_per_depth)
  nones = [None] * len(depths)
  return records.Stage(delta_max=means, delta_mean=means, delta_p50=nones, delta_p90=nones, delta_p99=nones,
                       log_gain=nones, fit={}, std={"delta_max": stds, "delta_mean": stds},
                       bound={"delta_max": reading, "delta_mean": reading})


def _family(init, trained, depths, **fields):
  return records.FamilyResults(depths=depths, diverged=[False] * len(depths), diverged_at_step=[None] * len(depths),
                               train_loss=[0.1] * len(depths), test_loss=[0.1] * len(depths), init=init,
                               trained=trained, seeds=[0, 1, 2], num_diverged=[0] * len(depths), **fields)


def test_the_sentences_follow_the_numbers():
  """A rising trained δ is said to rise; a flat one at zero-init is learned, not built in; an
  initialisation with the trained slope is said to decide it; convergence counts are read back."""
  depths = [2, 8, 32, 128]
  spread = np.exp([-0.05, 0.0, 0.05])  # seeds about each depth's value: its geometric mean is exact
  rising = [0.01 * L**0.3 * spread for L in depths]
  falling = [0.3 / L * spread for L in depths]
  zero = [np.zeros(3) for _ in depths]
  budget = dict(steps=400, optimizer="adam", learning_rate=1e-3, schedule="cosine", batch_size=64)
  summary = records.SweepSummary("zero", {
      "zero": _family(_stage(zero, depths), _stage(rising, depths), depths, budget=budget,
                      num_converged=[3, 3, 1, 0], convergence=dict(window=0.25, tolerance=0.05),
                      overrides=dict(name="mlp_residual", zero_init_last=True, branch_scale="1")),
      "scaled": _family(_stage(falling, depths), _stage(falling, depths), depths, budget=budget,
                        overrides=dict(name="mlp_residual", branch_scale="1/L")),
  })
  text = report.render(summary)
  zero_part, scaled_part = text.split("### `scaled`")

  assert "x_(l+1) = x + F(x), the last layer of F zero at initialisation" in zero_part
  assert "every block is the identity (δ = 0 at every depth)" in zero_part
  assert "δ_max rises as L^0.30 [" in zero_part and "no law fits: δ rises with L" in zero_part
  assert "converged (train loss changed by at most 5% over the last 25% of the run) in L = 2: 3/3, L = 8: 3/3, " \
         "L = 32: 1/3, L = 128: 0/3" in zero_part
  assert "400 Adam steps, cosine learning rate from 0.001, batch 64" in zero_part
  assert "x_(l+1) = x + F(x)/L" in scaled_part and "of the laws only c/L fits" in scaled_part
  assert "the intervals overlap, so training leaves δ_max's depth dependence where the initialisation put it" in \
      scaled_part


@pytest.mark.slow
def test_the_entry_point_prints_a_report(tmp_path):
  done = subprocess.run([sys.executable, "-m", "experiments.report", "--summary=docs/summary.json"], cwd=helpers.REPO,
                        capture_output=True, text=True, env=helpers.cpu_env(), check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.startswith("# δ against depth: what this sweep measured")
