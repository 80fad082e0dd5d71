"""The entry points' flag parsing and error reports: a mistake in a flag, or a disk that refuses a
checkpoint, is one line, not a traceback; ``--config=configs/<name>.py`` from any directory; the console
scripts (``resnorm-sweep``, ``resnorm-train``, ``resnorm-report``, ``resnorm-spectra``)."""

import importlib.resources
import logging
import os
import runpy
import sys
import traceback

from absl import flags
from absl import logging as absl_logging

from resnorm import checkpoints


def resolve_config_path(value: str) -> str:
  """``--config``'s value with ``configs/<name>.py[:variant]`` that does not exist relative to the
  current directory replaced by the installed ``configs`` package's file of that name (the variant
  kept): after ``pip install .`` the README's commands work from any directory. A file that exists
  here wins; any other value is returned as it is (and absl reports it if it does not load)."""
  path, colon, variant = value.partition(":")
  if not path or os.path.exists(path):
    return value
  folder, name = os.path.split(os.path.normpath(path))
  if folder != "configs" or not name.endswith(".py"):
    return value
  try:
    installed = importlib.resources.files("configs") / name
  except ModuleNotFoundError:  # no configs package to fall back on
    return value
  return str(installed) + colon + variant if installed.is_file() else value


def _with_installed_configs(argv: list[str]) -> list[str]:
  """``argv`` with the value of ``--config`` (``--config=V``, ``-config=V``, ``--config V``) passed
  through :func:`resolve_config_path`; overrides (``--config.depths=…``) and the arguments after
  ``--`` are left alone."""
  argv = list(argv)
  for i in range(1, len(argv)):
    arg = argv[i]
    if arg == "--":
      break
    name, equals, value = arg.partition("=")
    if name in ("--config", "-config"):
      if equals:
        argv[i] = name + "=" + resolve_config_path(value)
      elif i + 1 < len(argv):
        argv[i + 1] = resolve_config_path(argv[i + 1])
  return argv


def _config_folder_importable(argv: list[str]) -> None:
  """Puts the folder of ``--config``'s file first on the import path, so that a config file may
  import a module beside it (as a script's own folder is on its path)."""
  for i, arg in enumerate(argv[1:], 1):
    name, equals, value = arg.partition("=")
    if name in ("--config", "-config"):
      value = value if equals else (argv[i + 1] if i + 1 < len(argv) else "")
      folder = os.path.dirname(os.path.abspath(value.partition(":")[0]))
      if value and os.path.isdir(folder) and folder not in sys.path:
        sys.path.insert(0, folder)
      return


def _refuse_repeated_overrides(argv: list[str]) -> None:
  """Exits with one line where a config field is overridden twice (``--config.depths='(2,8)'
  --config.depths='(4,)'``): ml_collections would join two tuples rather than keep the last."""
  seen = {}
  for arg in argv[1:]:
    if arg == "--":
      break
    name, _, value = arg.partition("=")
    if name.lstrip("-").startswith("config."):
      seen.setdefault(name.lstrip("-"), []).append(value)
  repeated = {name: values for name, values in seen.items() if len(values) > 1}
  if repeated:
    shown = "; ".join(f"--{name} given {len(values)} times ({', '.join(values)})" for name, values in repeated.items())
    sys.exit(f"error: {shown}: give each config field once")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (``app.run(main, flags_parser=parse_flags)``) with a mistake in a flag —
  a config field that does not exist, a config file that does not load, a value of the wrong
  type — as one line on stderr and exit status 1, rather than a traceback. ``--config`` may name
  ``configs/<name>.py`` from any directory (:func:`resolve_config_path`)."""
  _refuse_repeated_overrides(argv)
  try:
    if "config" in flags.FLAGS:
      argv = _with_installed_configs(argv)
      _config_folder_importable(argv)
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      _ = flags.FLAGS["config"].value.keys  # a config file that failed to load raises its error on first use
    return remaining
  except (AttributeError, KeyError) as error:  # ml_collections: an override of a field it does not have
    field = str(error).strip("\"'")
    named = [arg for arg in argv[1:] if arg.split("=")[0].split(".")[-1] == field] or argv[1:]
    sys.exit(f"error: {' '.join(named)}: no config field {field!r} (the config file lists the fields)")
  except SyntaxError as error:  # a config file that does not parse
    sys.exit(f"error: --config: {error.filename}, line {error.lineno}: {error.msg} (the config file does not load)")
  except ImportError as error:  # a config file that imports what is not there
    sys.exit(f"error: --config: the config file does not load: {type(error).__name__}: {error}")
  except (flags.Error, OSError, TypeError, ValueError) as error:  # a file that does not load, a value refused
    sys.exit("error: " + _one_line(str(error)))


def _one_line(message: str) -> str:
  """``message`` on one line; where it holds a traceback (ml_collections puts the config file's
  own error's traceback in its message), the words before it and the error itself."""
  before, traceback_mark, after = message.partition("Traceback (most recent call last):")
  if traceback_mark:
    error = [line.strip() for line in after.splitlines() if line.strip()][-1]
    message = f"{before.strip()} {error}"
  return " ".join(line.strip() for line in message.splitlines() if line.strip())


class _DiskErrorEchoes(logging.Filter):
  """Drops the log records that repeat a disk's refusal (Orbax's background threads, asyncio's
  unretrieved tasks): the entry point reports it once, as :class:`resnorm.records.WriteFailed`."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if record.exc_info:
      text += "".join(traceback.format_exception(*record.exc_info))
    return not any(message in text for message in checkpoints.DISK_MESSAGES)


def _is_closed_loop_echo(kind, error, trace) -> bool:
  """'Event loop is closed' from ``call_soon_threadsafe``: a TensorStore callback of a write still
  pending when Orbax gave up a failed save and closed its loop."""
  return (
    kind is RuntimeError
    and str(error) == "Event loop is closed"
    and any(frame.name == "call_soon_threadsafe" for frame in traceback.extract_tb(trace))
  )


def _without_closed_loop_echoes(unraisablehook):
  """``unraisablehook`` (how TensorStore's callbacks report) except for :func:`_is_closed_loop_echo`."""

  def hook(unraisable):
    if not _is_closed_loop_echo(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
      unraisablehook(unraisable)

  return hook


def report_disk_errors_once() -> None:
  """A checkpoint that a full or read-only disk refuses is reported in one line (the entry point's
  ``error: could not save …``), without Orbax's and TensorStore's echoes of it."""
  echoes = _DiskErrorEchoes()
  absl_logging.get_absl_handler().addFilter(echoes)
  logging.getLogger("asyncio").addFilter(echoes)
  sys.unraisablehook = _without_closed_loop_echoes(sys.unraisablehook)


def _run_as_main(module: str) -> None:
  """Runs ``module`` as ``python -m module`` does (``__name__ == "__main__"``, ``sys.argv[0]`` its
  file): its own ``app.run`` line, so a console script parses, helps and exits as the module does."""
  runpy.run_module(module, run_name="__main__", alter_sys=True)


def sweep() -> None:
  """``resnorm-sweep``: ``python -m experiments.sweep``."""
  _run_as_main("experiments.sweep")


def train() -> None:
  """``resnorm-train``: ``python -m experiments.train``."""
  _run_as_main("experiments.train")


def report() -> None:
  """``resnorm-report``: ``python -m experiments.report``."""
  _run_as_main("experiments.report")


def spectra() -> None:
  """``resnorm-spectra``: ``python -m experiments.spectra``."""
  _run_as_main("experiments.spectra")
