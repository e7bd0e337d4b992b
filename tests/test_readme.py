"""Every ```python block of README.md runs, in order, in one namespace."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _blocks(kind):
  return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_blocks_run_and_print_what_the_readme_shows():
  namespace = {}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    for block in _blocks("python"):
      exec(compile(block, str(README), "exec"), namespace)
  printed_table = _blocks("text")[0]
  assert out.getvalue() == printed_table
  assert float(namespace["loss"]) > 0
  assert namespace["state"].step == 0


def test_readme_names_the_commands_that_ci_runs():
  ci = (README.parent / ".ci" / "run").read_text()
  commands = _blocks("bash")[0]
  assert 'pip install ".[test]" && python -m pytest' in commands
  assert "python -m pytest" in ci and 'pip install ".[test]"' in ci
