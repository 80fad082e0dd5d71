r"""Write a sweep's report from its summary, or bring the generated sections of Markdown files up to date.

    python -m experiments.report --summary=/tmp/sweep/summary.json          # prints report.md
    python -m experiments.report README.md docs/findings/*.md               # regenerates their sections

A generated section of a Markdown file lies between ``<!-- report: PATH -->`` and
``<!-- /report -->``, PATH a summary.json relative to the Markdown file; its figures are linked in
PATH's directory. ``<!-- report: PATH glance -->`` holds only the report's slopes at a glance
(:func:`resnorm.report.glance`), ``<!-- report: PATH budgets -->`` only its budget ladder
(:func:`resnorm.report.budget_ladder`). Regenerating replaces every such section by the report of
its summary; nothing else in the file changes.
"""

import os
import re

from absl import app, flags

from experiments import cli
from resnorm import records, report

_SUMMARY = flags.DEFINE_string("summary", None, "A sweep's summary.json: print its report.")

SECTION = re.compile(
  r"(<!-- report: (?P<path>\S+)(?: (?P<part>budgets|glance))? -->\n)(?P<body>.*?)(<!-- /report -->)", re.DOTALL
)


def section(summary_path: str, root: str = "", part: str | None = None) -> str:
  """The report of the summary at ``summary_path`` (relative to ``root``, the Markdown file's
  folder) as a section; ``part="budgets"``: its budget ladder only; ``part="glance"``: its slopes
  at a glance and what each setting's initialisation decides."""
  summary = records.read_summary(os.path.join(root, summary_path))
  if part == "budgets":
    return "\n".join(report.budget_ladder(summary, heading="###")).rstrip() + "\n"
  if part == "glance":
    return "\n".join(report.glance(summary, heading="###")).rstrip() + "\n"
  figures = os.path.dirname(summary_path)
  return report.render(summary, figures=f"{figures}/" if figures else "", heading="##")


def sections(text: str) -> list[tuple[str, str | None, str]]:
  """(summary path, part, current body) of every generated section of ``text``."""
  return [(match["path"], match["part"], match["body"]) for match in SECTION.finditer(text)]


def regenerated(text: str, root: str = "") -> str:
  """``text`` with every generated section replaced by its summary's report."""
  return SECTION.sub(lambda m: m.group(1) + section(m["path"], root, m["part"]) + m.group(5), text)


def main(argv):
  markdown = argv[1:]
  if _SUMMARY.value is not None:
    if markdown:
      raise app.UsageError("give --summary (print a report) or Markdown files (regenerate their sections), not both")
    print(report.render(records.read_summary(_SUMMARY.value)), end="")
    return
  if not markdown:
    raise app.UsageError("give --summary (print a report) or Markdown files whose generated sections to regenerate")
  for name in markdown:
    location = records.path(name)
    records.write_text(location, regenerated(location.read_text(), os.path.dirname(name)))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
