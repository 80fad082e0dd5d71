"""notebooks/training_dynamics.ipynb runs end to end on two tiny runs, residual against plain."""

import pytest

from helpers import execute_notebook
from resnorm import loop
from test_train import tiny_run

pytestmark = pytest.mark.slow  # a Jupyter kernel and a sweep or runs: full suite only


def test_training_dynamics_notebook_executes(tmp_path):
  """notebooks/training_dynamics.ipynb executes end to end; only here."""
  workdirs = {}
  for name in ("mlp_residual", "mlp_plain"):
    workdirs[name] = str(tmp_path / name)
    loop.train_and_evaluate(tiny_run(eval_every=5, **{"model.name": name, "signal.every": 5}), workdirs[name])
  notebook = execute_notebook("training_dynamics.ipynb", workdirs=workdirs)
  outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
  assert any("best" in output.get("text", "") and "mlp_plain L=3" in output.get("text", "") for output in outputs)
  assert sum("image/png" in output.get("data", {}) for output in outputs) == 3  # curves, heatmap, δ
