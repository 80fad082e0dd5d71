"""notebooks/delta_vs_depth.ipynb runs end to end with a tiny sweep."""

from helpers import execute_notebook


def test_delta_vs_depth_notebook_executes(tmp_path):
  notebook = execute_notebook(
      "delta_vs_depth.ipynb", depths=(2, 4), num_steps=10, workdir=str(tmp_path / "sweep")
  )
  outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
  assert any("log(2L)/L" in output.get("text", "") for output in outputs)  # the table and fit were printed
  assert sum("image/png" in output.get("data", {}) for output in outputs) == 2  # both figures were drawn
  assert (tmp_path / "sweep" / "summary.json").exists()
