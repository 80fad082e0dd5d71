r"""Write a sweep's report from its summary, or bring a Markdown file's generated sections up to date.

    python -m experiments.report --summary=/tmp/sweep/summary.json     # prints report.md
    python -m experiments.report --readme=README.md                    # regenerates README's findings

A generated section of a Markdown file lies between ``<!-- report: PATH -->`` and
``<!-- /report -->``, PATH a summary.json relative to the repository root; its figures are
linked in PATH's directory. ``<!-- report: PATH budgets -->`` holds only the report's budget
ladder (:func:`resnorm.report.budget_ladder`), ``<!-- report: PATH glance -->`` its slopes at a
glance (:func:`resnorm.report.glance`). ``--readme`` replaces every such section by
the report of its summary; nothing else in the file changes.
"""

import os
import re

from absl import app, flags

from resnorm import records, report

_SUMMARY = flags.DEFINE_string("summary", None, "A sweep's summary.json: print its report.")
_README = flags.DEFINE_string("readme", None, "A Markdown file whose generated sections to regenerate.")

SECTION = re.compile(
  r"(<!-- report: (?P<path>\S+)(?: (?P<part>budgets|glance))? -->\n)(?P<body>.*?)(<!-- /report -->)", re.DOTALL
)


def section(summary_path: str, root: str = "", part: str | None = None) -> str:
  """The report of the summary at ``summary_path`` (relative to ``root``) as a README section;
  ``part="budgets"``: its budget ladder only; ``part="glance"``: its slopes at a glance and what
  each setting's initialisation decides."""
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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _README.value is None:
    if _SUMMARY.value is None:
      raise app.UsageError("give --summary (print a report) or --readme (regenerate its sections)")
    print(report.render(records.read_summary(_SUMMARY.value)), end="")
    return
  readme = records.path(_README.value)
  records.write_text(readme, regenerated(readme.read_text(), os.path.dirname(_README.value)))


if __name__ == "__main__":
  app.run(main)
