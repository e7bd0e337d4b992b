"""The docs build without a warning, and every code example in README.md and docs/ runs on its own.

Each ```python block runs alone, in a fresh namespace, so a reader can copy any one of them. When the
next fenced block is a ```text block, it is the output the page shows: the block must print exactly that.
"""

import contextlib
import importlib.util
import io
import pathlib
import re
import subprocess
import sys

import pytest

import optax_adamwdl

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Fenced blocks at the start of a line: ```lang (or a MyST directive, ```{name}) ... ```.
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.M | re.S)


def _pages():
  pages = [README]
  for page in sorted(DOCS.rglob("*.md")):
    if not {"_build", "_generated"} & set(page.relative_to(DOCS).parts):
      pages.append(page)
  return pages


def _fences(page):
  """Yields (language, code, line number) for each fenced block of a page, in order."""
  text = page.read_text()
  for match in _FENCE.finditer(text):
    yield match.group(1).strip(), match.group(2), text.count("\n", 0, match.start()) + 1


def _examples():
  """Each python block, with the text block that follows it (its printed output) or None."""
  examples = []
  for page in _pages():
    fences = list(_fences(page))
    for i, (language, code, line) in enumerate(fences):
      if language != "python":
        continue
      after = fences[i + 1] if i + 1 < len(fences) else None
      output = after[1] if after is not None and after[0] == "text" else None
      examples.append(pytest.param(page, code, output, id=f"{page.relative_to(ROOT)}:{line}"))
  return examples


def test_there_are_examples_in_the_readme_and_in_every_guide():
  pages_with_code = {param.values[0] for param in _examples()}
  assert README in pages_with_code
  for guide in (DOCS / "guides").glob("*.md"):
    assert guide in pages_with_code, f"{guide.name} shows no runnable example"


@pytest.mark.parametrize(("page", "code", "output"), _examples())
def test_example_runs_on_its_own_and_prints_what_the_page_shows(page, code, output):
  namespace = {"__name__": "docs_example"}
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(compile(code, str(page), "exec"), namespace)
  if output is not None:
    assert printed.getvalue() == output


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path):
  if importlib.util.find_spec("sphinx") is None:
    pytest.skip('sphinx is not installed (pip install ".[docs]")')
  result = subprocess.run(
    [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, tmp_path],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
  )
  assert result.returncode == 0, result.stderr + result.stdout


def test_the_api_page_documents_every_public_name():
  api = (DOCS / "api.md").read_text()
  missing = [
    name
    for name in optax_adamwdl.__all__
    if not re.search(
      rf"^\.\. auto(function|class|module):: (optax_adamwdl\.)?{name}$", api, flags=re.M
    )
  ]
  assert not missing


def test_readme_links_point_to_files_that_exist():
  links = re.findall(r"\]\(((?!https?://|#)[^)#\s]+)", README.read_text())
  assert links
  for link in links:
    assert (ROOT / link).exists(), link


def test_readme_names_the_commands_that_ci_runs():
  ci = (ROOT / ".ci" / "run").read_text()
  commands = next(code for language, code, _ in _fences(README) if language == "bash")
  assert 'pip install ".[demo]" && python -m optax_adamwdl' in commands
  assert 'pip install ".[test]" && python -m pytest' in commands
  assert "python -m pytest" in ci and 'pip install ".[test]"' in ci
