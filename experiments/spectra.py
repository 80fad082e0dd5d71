r"""Fibonacci against its residual counterpart, and residual against plain Jacobian spectra.

    python -m experiments.spectra --config=configs/spectra.py --workdir=/tmp/spectra

Prints the Fibonacci table, the stability of A and of one residual step, the convergence of the
residual products (I + (A − I)/L)^L to expm(A − I), and the singular values of the block and
end-to-end Jacobians of every configured registry model at every depth; writes
``recurrence.png``, ``block_singular_values.png`` and ``stack_singular_values.png`` to the workdir.
"""

import sys

from absl import app, flags, logging
from matplotlib.figure import Figure
from ml_collections import config_flags

from experiments import cli, depth_spectra
from resnorm import config_validation, plots, records, recurrence

_CONFIG = config_flags.DEFINE_config_file("config", None, "Spectra config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the figures.", required=True)


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # JAX logs its backend search at INFO; --verbosity=0 shows it
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  try:
    config_validation.check_spectra(config)
  except config_validation.ConfigError as error:
    sys.exit(f"error: {error}")  # one line, exit status 1, before anything compiles
  matrix = recurrence.companion(config.coefficients)
  convergence = recurrence.residual_convergence(matrix, config.residual_depths)
  results = depth_spectra.depth_spectra(
    config.models,
    config.depths,
    config.model.to_dict(),
    input_dim=config.input_dim,
    num_examples=config.num_examples,
    seed=config.seed,
    lanczos_iterations=config.lanczos_iterations,
  )
  print(recurrence.format_fibonacci_table(recurrence.fibonacci_table(config.fibonacci_ns)))
  print()
  print(f"A = companion{tuple(config.coefficients)}: {recurrence.stability(matrix)}")
  L = int(max(convergence.depths))
  step = recurrence.residual_step(matrix, L)
  print(f"A_L = I + (A − I)/L, L = {L}, over L steps: {recurrence.stability(step, steps=L)}")
  print()
  print(recurrence.format_residual_table(convergence))
  print(f"error constant ‖expm(M) M²‖/2 (M = A − I): {recurrence.residual_error_constant(matrix):.4f}")
  print()
  print(depth_spectra.format_depth_spectra(results))
  workdir = records.path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  figures = {
    "recurrence.png": plots.draw_recurrence(Figure(figsize=(11, 4)), matrix, convergence),
    "block_singular_values.png": plots.draw_block_spectra(Figure(figsize=(5.5 * len(results), 4)), results),
    "stack_singular_values.png": plots.draw_stack_spectra(Figure(figsize=(6, 4)).subplots(), results),
  }
  for filename, fig in figures.items():
    plots.save(fig, workdir / filename)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
