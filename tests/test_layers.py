"""The import layers of README.md ("Layout") hold: `lint-imports` checks the contract in .importlinter."""

import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_imports_run_only_down_the_layers():
  lint_imports = shutil.which("lint-imports")
  assert lint_imports, "lint-imports not found: pip install '.[test]' installs import-linter"
  result = subprocess.run(
    [lint_imports, "--no-cache"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": ROOT},
  )
  assert result.returncode == 0, result.stdout + result.stderr
