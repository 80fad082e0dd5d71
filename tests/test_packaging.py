"""What `pip install .` relies on: every import of the installed packages is a declared dependency, the
console scripts name functions that exist, and `--config=configs/<name>.py` finds the installed configs
from any directory."""

import ast
import functools
import importlib
import importlib.resources
import os
import re
import subprocess
import sys
import warnings

import pytest

import helpers
from experiments import cli

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
  import tomli as tomllib

INSTALLED = ("resnorm", "experiments", "configs")  # [tool.setuptools.packages.find] in pyproject.toml
# Import names whose distribution is named otherwise; any other import is its own distribution's name.
DISTRIBUTION = {
  "absl": "absl-py",
  "IPython": "ipython",
  "importlinter": "import-linter",
  "ml_collections": "ml-collections",
  "orbax": "orbax-checkpoint",
  "sklearn": "scikit-learn",
  "tensorflow_datasets": "tensorflow-datasets",
  "xdist": "pytest-xdist",
}


def _pyproject() -> dict:
  with open(os.path.join(helpers.REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _normalized(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
  """The distributions that PEP 508 requirements name (extras, versions and markers dropped)."""
  return {_normalized(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group()) for requirement in requirements}


@functools.cache
def _imports(folder: str) -> dict[str, set[str]]:
  """Top-level module name -> the files under ``folder`` that import it (absolute imports, at any depth of
  the code: the deferred imports inside functions too)."""
  found = {}
  for root, _, files in os.walk(os.path.join(helpers.REPO, folder)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        with open(path, encoding="utf-8") as f, warnings.catch_warnings():
          warnings.simplefilter("ignore")  # an invalid escape in a docstring is the linter's to report
          tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
          elif isinstance(node, ast.ImportFrom) and not node.level:
            modules = [node.module]
          else:
            continue
          for module in modules:
            found.setdefault(module.split(".")[0], set()).add(os.path.relpath(path, helpers.REPO))
  return found


def _local_modules(folder: str) -> set[str]:
  """The modules a script in ``folder`` imports by its bare name (tests' ``helpers``, ``test_train``)."""
  return {name[:-3] for name in os.listdir(os.path.join(helpers.REPO, folder)) if name.endswith(".py")}


def _undeclared(folders: tuple[str, ...], declared: set[str], local: set[str] = frozenset()) -> dict[str, set[str]]:
  undeclared = {}
  for folder in folders:
    for module, files in _imports(folder).items():
      if module in sys.stdlib_module_names or module in INSTALLED or module in local:
        continue
      if _normalized(DISTRIBUTION.get(module, module)) not in declared:
        undeclared.setdefault(module, set()).update(files)
  return undeclared


def test_every_import_of_the_installed_packages_is_a_dependency():
  declared = _names(_pyproject()["project"]["dependencies"])
  assert _undeclared(INSTALLED, declared) == {}, (
    "declare these in pyproject.toml's dependencies (or map the import name to its distribution in DISTRIBUTION)"
  )


def test_every_import_of_the_tests_and_benchmarks_is_a_dependency_or_in_the_test_extra():
  project = _pyproject()["project"]
  declared = _names(project["dependencies"]) | _names(project["optional-dependencies"]["test"])
  local = _local_modules("tests") | _local_modules("benchmarks") | {"benchmarks", "tests"}
  assert _undeclared(("tests", "benchmarks"), declared, local) == {}, "declare these in the test extra"


def test_the_installed_packages_import_nothing_that_is_not_installed():
  """``benchmarks`` and ``tests`` stay in the repository: the installed code may not import them."""
  for module in ("benchmarks", "tests", "helpers"):
    assert module not in _imports("resnorm") | _imports("experiments") | _imports("configs")


def test_every_package_folder_is_installed():
  """Every folder with an ``__init__.py`` under the installed packages matches the include list (a new
  subpackage of resnorm, say, is not left out of the wheel)."""
  include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
  assert set(INSTALLED) <= set(include)
  for top in INSTALLED:
    for root, _, files in os.walk(os.path.join(helpers.REPO, top)):
      if "__init__.py" in files:
        package = os.path.relpath(root, helpers.REPO).replace(os.sep, ".")
        assert package in include or any(
          pattern.endswith(".*") and package.startswith(pattern[:-1]) for pattern in include
        ), package


@pytest.mark.slow  # setuptools reads the project in a subprocess
def test_setup_py_defers_to_pyproject_toml(tmp_path):
  """The top-level setup.py declares nothing of its own: setuptools reads the name, version and
  dependencies from pyproject.toml."""
  result = subprocess.run(
    [sys.executable, "setup.py", "--name", "--version"], cwd=helpers.REPO, capture_output=True, text=True, check=True
  )
  project = _pyproject()["project"]
  assert result.stdout.split() == [project["name"], project["version"]]


def test_the_console_scripts_run_the_entry_points_as_python_dash_m_does():
  scripts = _pyproject()["project"]["scripts"]
  assert set(scripts) == {"resnorm-sweep", "resnorm-train", "resnorm-report", "resnorm-spectra"}
  for script, target in scripts.items():
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function)), script
    entry_point = os.path.join(helpers.REPO, "experiments", script.removeprefix("resnorm-") + ".py")
    with open(entry_point, encoding="utf-8") as f:
      source = f.read()
    assert 'if __name__ == "__main__":' in source and "app.run(main" in source, entry_point


def test_a_config_path_that_is_not_here_is_the_installed_configs_file(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  installed = importlib.resources.files("configs") / "depth_sweep.py"
  assert installed.is_file()
  assert cli.resolve_config_path("configs/depth_sweep.py:ladder") == f"{installed}:ladder"
  assert cli.resolve_config_path("configs/depth_sweep.py") == str(installed)
  assert cli.resolve_config_path("./configs/depth_sweep.py") == str(installed)
  for value in ("configs/no_such_config.py", "elsewhere/depth_sweep.py", "depth_sweep.py", "configs/__init__"):
    assert cli.resolve_config_path(value) == value  # absl reports the file that does not load


def test_a_config_file_that_is_here_wins(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "depth_sweep.py").write_text("def get_config():\n  return None\n")
  assert cli.resolve_config_path("configs/depth_sweep.py:ladder") == "configs/depth_sweep.py:ladder"


def test_only_the_config_flag_s_value_is_resolved(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  installed = str(importlib.resources.files("configs") / "spectra.py")
  argv = ["prog", "--config=configs/spectra.py", "--config.seed=3", "--workdir=configs/spectra.py"]
  assert cli._with_installed_configs(argv) == [
    "prog",
    f"--config={installed}",
    "--config.seed=3",
    "--workdir=configs/spectra.py",
  ]
  assert cli._with_installed_configs(["prog", "--config", "configs/spectra.py"]) == ["prog", "--config", installed]
  assert cli._with_installed_configs(["prog", "-config=configs/spectra.py"]) == ["prog", f"-config={installed}"]
  assert cli._with_installed_configs(["prog", "--", "--config=configs/spectra.py"]) == [
    "prog",
    "--",
    "--config=configs/spectra.py",
  ]


@pytest.mark.slow  # a subprocess that imports JAX
def test_the_sweep_loads_a_repository_config_from_another_directory(tmp_path):
  """The entry point's own flag parsing, from a directory without configs/: the variant is passed on and the
  config's ``from configs import default`` resolves."""
  code = (
    "import sys; from experiments import cli, sweep; "  # ml_collections reads the overrides from sys.argv
    "sys.argv = ['sweep', '--config=configs/depth_sweep.py:ladder', '--workdir=w', '--config.num_steps=3']; "
    "cli.parse_flags(sys.argv); "
    "print(sweep._CONFIG.value.num_steps, ' '.join(sweep._CONFIG.value.settings))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=helpers.cpu_env(), capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split()[:2] == ["3", "zero_init_cosine_400"], result.stdout  # the ladder, overridden
