"""The repository stays `ruff check` and `ruff format` clean."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ruff_check_and_format_are_clean():
  for args in (["check", "."], ["format", "--check", "."]):
    result = subprocess.run(
      [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
