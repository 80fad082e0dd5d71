"""The worked example of a family of one's own (examples/own_model.py) runs through the sweep's
one command, and a model that breaks the probe protocol is refused at the door with a message."""

import importlib.util
import os
import subprocess
import sys

import flax.linen as nn
import pytest

import helpers
from experiments import sweep_runner
from resnorm import config_validation, models, probes, records, sweep_plan


def _example():
  spec = importlib.util.spec_from_file_location("own_model", os.path.join(helpers.REPO, "examples", "own_model.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_the_own_model_example_sweeps_from_a_fresh_process(tmp_path):
  """examples/own_model.py (a family and a dataset registered in a config file) sweeps through the entry point, its
  groups in worker processes that run the file; only here."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.sweep",
      "--config=examples/own_model.py",
      f"--workdir={tmp_path}",
      "--config.depths=(2,4)",
      "--config.seeds=(0,)",
      "--config.num_steps=40",
      "--config.log_every=20",
      "--config.signal.every=20",
    ],
    cwd=helpers.REPO,
    env=helpers.cpu_env(),
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = records.read_json(tmp_path / "summary.json")
  runs = [records.read_run(tmp_path / sweep_plan.RUNS / sweep_plan.run_name("gated", depth, 0)) for depth in (2, 4)]
  assert [run.model for run in runs] == ["gated_mlp"] * 2 and list(summary["models"]) == ["gated"]
  assert all(run.init.block["delta_max"] == 0 and run.trained.block["delta_max"] > 0 for run in runs)  # W₂ starts at 0
  assert "gated (gated_mlp, 1 seed" in result.stdout


class _Unprobed(nn.Module):
  depth: int
  num_outputs: int

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.num_outputs)(x)


class _Misordered(nn.Module):
  depth: int
  num_outputs: int

  @nn.compact
  def __call__(self, x, train=False):
    x = probes.probe(self, probes.site_name(1, "stem"), nn.Dense(4)(x))
    x = probes.probe(self, probes.site_name(0, "input"), x)
    return nn.Dense(self.num_outputs)(x)


@pytest.mark.parametrize(
  "module, message",
  [
    (_Unprobed, "model _Unprobed has no stream sites"),
    (_Misordered, "site 0 of 2 is '01_stem' where the names put '00_input'"),
  ],
)
def test_a_registered_model_that_breaks_the_probe_protocol_is_refused_at_the_door(tmp_path, module, message):
  example = _example()
  name = f"broken_{module.__name__.lower()}"
  if name not in models.FAMILIES:
    models.register(
      name, models.Family(build=lambda depth, num_classes, module=module: module(depth, num_classes), defaults={})
    )
  config = example.get_config()
  config.overrides.gated.name = name
  config.depths, config.seeds = (2,), (0,)
  with pytest.raises(config_validation.ConfigError, match=f"config.overrides.gated.name = '{name}'.*{message}"):
    sweep_runner.run_sweep(config, str(tmp_path / "sweep"), progress=False)
  assert not (tmp_path / "sweep").exists()
