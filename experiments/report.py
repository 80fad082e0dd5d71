r"""Write a sweep's report from its summary, or bring README's findings up to date.

    python -m experiments.report --summary=/tmp/sweep/summary.json          # prints report.md
    python -m experiments.report --summary=docs/summary.json --readme=README.md --figures=docs/

With ``--readme``, the text between README's markers ``<!-- report -->`` and ``<!-- /report -->``
is replaced by the report (figures linked under ``--figures``); nothing else in the file changes.
"""

from absl import app, flags

from resnorm import records, report

_SUMMARY = flags.DEFINE_string("summary", None, "A sweep's summary.json.", required=True)
_README = flags.DEFINE_string("readme", None, "A Markdown file whose report section to replace.")
_FIGURES = flags.DEFINE_string("figures", "", "Prefix of the figures' paths in the report.")

BEGIN, END = "<!-- report -->", "<!-- /report -->"


def readme_with(text: str, section: str) -> str:
  """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``section``."""
  start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
  return text[:start] + "\n" + section + text[end:]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  summary = records.SweepSummary.from_json(records.read_json(_SUMMARY.value))
  section = report.render(summary, figures=_FIGURES.value, heading="##")
  if _README.value is None:
    print(section)
    return
  readme = records.path(_README.value)
  records.write_text(readme, readme_with(readme.read_text(), section))


if __name__ == "__main__":
  app.run(main)
