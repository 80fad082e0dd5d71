"""Helpers the tests share (imported as ``helpers``; fixtures stay in conftest.py).

The environment of the processes tests start, notebook execution with injected parameters, tiny versions of the
real config files, and matrices with a chosen condition number.
"""

import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_env(devices: int | None = None, **variables) -> dict[str, str]:
  """The environment of a process a test starts: this one's (the session's compilation cache and
  XLA flags, conftest.py), on CPU, with ``devices`` simulated host devices and the repository
  importable; tests that compare a subprocess's numbers with their own need the same flags."""
  flags = os.environ.get("XLA_FLAGS", "")
  if devices is not None:
    flags = f"{flags} --xla_force_host_platform_device_count={devices}"
  return dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=flags.strip(),
    PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    **variables,
  )


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


def tiny_sweep(depths=(2, 4), settings=("mlp_residual", "mlp_plain"), seeds=(0,)):
  """configs/depth_sweep.py with tiny data, widths and step counts; bare family names as
  settings (the families as configured, branch scale 1/L), one seed for every setting unless
  asked; the groups trained one after another in the calling process."""
  from configs import depth_sweep  # ml_collections: only the tests that build configs need it

  config = depth_sweep.get_config()
  config.depths, config.settings, config.seeds = depths, settings, seeds
  for override in config.overrides.values():  # every setting runs the seeds asked for
    if "seeds" in override:
      del override["seeds"]
  config.model.branch_scale = "1/L"
  config.data.train_size, config.data.test_size = 256, 64
  config.model.width, config.model.hidden = 8, 8
  config.batch_size, config.num_steps, config.log_every, config.checkpoint_every = 32, 20, 10, 10
  config.signal.num_examples, config.signal.every = 32, 10
  config.parallel_runs = 1  # in the test's process: no worker to start (test_sweep.py checks the workers)
  return config


def tiny_image_sweep(depths=(11, 20), settings=("preact_resnet", "procresnet"), seeds=(0,)):
  """configs/image_depth_sweep.py at 8×8 pixels, quarter width, a few steps: by default the
  pre-activation ResNet at n = 1 (no identity block) and 2, and ProcResNet at n = 1."""
  from configs import image_depth_sweep

  config = image_depth_sweep.get_config()
  config.depths, config.settings, config.seeds = depths, settings, seeds
  config.overrides.procresnet.depths = (13,)
  config.overrides.resnet_postact.depths = config.overrides.plain_postact.depths = (8,)
  config.data.image_size, config.data.train_size, config.data.test_size = 8, 64, 32
  config.model.width_multiplier = 0.25
  config.batch_size, config.num_steps, config.log_every, config.checkpoint_every = 16, 4, 2, 0
  config.eval_batch_size = 32
  config.signal.num_examples, config.signal.every = 16, 2
  config.parallel_runs = 1
  return config


def random_matrix(rng, shape, kappa: float, is_complex: bool) -> np.ndarray:
  """Singular values geometrically spaced from 1 to 1/kappa, random singular vectors."""
  *batch, m, n = shape

  def orthonormal(size):
    a = rng.standard_normal((*batch, size, size))
    if is_complex:
      a = a + 1j * rng.standard_normal((*batch, size, size))
    return np.linalg.qr(a)[0][..., : min(m, n)]

  u, v = orthonormal(m), orthonormal(n)
  return (u * np.geomspace(1, 1 / kappa, min(m, n))) @ np.conj(np.swapaxes(v, -1, -2))
