"""notebooks/delta_vs_depth.ipynb runs end to end with a tiny sweep."""

import pytest

from helpers import execute_notebook

pytestmark = pytest.mark.slow  # a Jupyter kernel and a sweep or runs: full suite only


def test_delta_vs_depth_notebook_executes(tmp_path):
  """notebooks/delta_vs_depth.ipynb executes end to end; only here."""
  notebook = execute_notebook(
    "delta_vs_depth.ipynb",
    depths=(2, 4),
    settings=("residual_zero_init",),
    seeds=(0, 1),
    num_steps=10,
    parallel_runs=1,  # the notebook's cells, not the workers (test_faults.py's SIGTERM test starts those)
    workdir=str(tmp_path / "sweep"),
  )
  outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
  text = "".join(output.get("text", "") for output in outputs)
  assert "c_min" in text and "slope" in text  # the table and the bound reading were printed
  assert sum("image/png" in output.get("data", {}) for output in outputs) == 3  # δ(L), the task, the profile
  assert (tmp_path / "sweep" / "summary.json").exists()
