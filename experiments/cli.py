"""The entry points' flag parsing: a mistake in a flag is one line, not a traceback."""

import sys

from absl import flags


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (``app.run(main, flags_parser=parse_flags)``) with a mistake in a flag —
  a config field that does not exist, a config file that does not load, a value of the wrong
  type — as one line on stderr and exit status 1, rather than a traceback."""
  try:
    remaining = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
      _ = flags.FLAGS["config"].value.keys  # a config file that failed to load raises its error on first use
    return remaining
  except (AttributeError, KeyError) as error:  # ml_collections: an override of a field it does not have
    field = str(error).strip("\"'")
    named = [arg for arg in argv[1:] if arg.split("=")[0].split(".")[-1] == field] or argv[1:]
    sys.exit(f"error: {' '.join(named)}: no config field {field!r} (the config file lists the fields)")
  except (flags.Error, OSError, TypeError, ValueError) as error:  # a file that does not load, a value refused
    sys.exit("error: " + " ".join(line.strip() for line in str(error).splitlines() if line.strip()))
