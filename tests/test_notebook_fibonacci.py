"""notebooks/fibonacci_vs_resnet.ipynb runs end to end with small parameters and draws its figures."""

import pytest

import helpers

NOTEBOOK = "fibonacci_vs_resnet.ipynb"

pytestmark = pytest.mark.slow  # a Jupyter kernel and a sweep or runs: full suite only


def _outputs(notebook, kind):
  return [
    output
    for cell in notebook.cells
    if cell.cell_type == "code"
    for output in cell.get("outputs", [])
    if output.output_type == kind or kind in output.get("data", {})
  ]


def test_notebook_executes_with_small_parameters():
  """notebooks/fibonacci_vs_resnet.ipynb executes end to end; only here."""
  notebook = helpers.execute_notebook(
    NOTEBOOK,
    fibonacci_ns=(1, 10, 100),
    residual_depths=(4, 16),
    depths=(2,),
    width=8,
    hidden=16,
    num_examples=2,
    lanczos_iterations=4,
  )
  assert len(_outputs(notebook, "image/png")) == 3
  text = "".join(output.text for output in _outputs(notebook, "stream") if output.name == "stdout")
  assert "354224848179261915075" in text  # F_100, from the injected fibonacci_ns
  assert "F_10000 has 2090 digits" in text
  for name in ("mlp_residual", "mlp_plain"):
    assert [line.split()[:2] for line in text.splitlines() if line.startswith(name)] == [[name, "2"]]
