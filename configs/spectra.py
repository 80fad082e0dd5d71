"""Recurrences and spectra: Fibonacci against its residual counterpart, residual against plain Jacobians.

    python -m experiments.spectra --config=configs/spectra.py --workdir=/tmp/spectra
    python -m experiments.spectra --config=configs/spectra.py --workdir=/tmp/tribonacci \
        --config.coefficients='(1, 1, 1)'
    python -m experiments.spectra --config=configs/spectra.py --workdir=/tmp/s \
        --config.depths='(8, 128)' --config.model.branch_scale=1/sqrt\\(L\\)
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  # The table of F_n, φⁿ/√5, F_{n+1}/F_n and the step growth rate, at these n.
  config.fibonacci_ns = (1, 2, 3, 5, 10, 20, 30, 50, 70, 71, 100, 1000)
  # The recurrence x_n = a_1 x_{n-1} + ... + a_k x_{n-k} whose companion matrix A is compared with
  # its residual counterpart I + (A - I)/L at these L: (1, 1) is Fibonacci, (1, 1, 1) tribonacci.
  config.coefficients = (1, 1)
  config.residual_depths = (4, 16, 64, 256, 1024, 4096)
  # Registry models whose block and end-to-end Jacobians are measured at initialisation.
  config.models = ("mlp_residual", "mlp_plain")
  config.depths = (4, 16, 64, 256)
  config.model = ml_collections.ConfigDict(
    dict(width=32, hidden=64, branch_scale="1/L", zero_init_last=False, layer_norm=False)
  )
  config.input_dim = 16
  config.num_examples = 8
  # Matrix-free Lanczos steps for the end-to-end extremes (the dense SVD is printed beside them).
  config.lanczos_iterations = 24
  return config
