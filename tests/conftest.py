"""Shared test fixtures: float64 oracles and notebook execution with small parameters."""

import os

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def x64():
  """float64 inside one test only (never globally): ``def test_x(x64): ...``."""
  with jax.enable_x64(True):
    yield


def execute_notebook(name: str, timeout: int = 600, **parameters):
  """Runs ``notebooks/<name>`` with ``parameters`` injected after its cell tagged 'parameters'.

  Returns the executed notebook; a cell that raises fails the calling test.
  """
  import nbclient  # only the notebook tests need Jupyter
  import nbformat

  notebook = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
  if len(tagged) != 1:
    raise ValueError(f"{name}: expected one cell tagged 'parameters', found {len(tagged)}")
  injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
  notebook.cells.insert(tagged[0] + 1, injected)
  client = nbclient.NotebookClient(
      notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": REPO}}
  )
  client.execute()
  return notebook
