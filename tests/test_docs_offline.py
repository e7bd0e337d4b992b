"""The built docs site reads with no network: local MathJax, local assets, notebooks from their outputs.

One build (``sphinx-build -W``, as ``tests/test_docs.py`` does) serves every test here. The last test
opens the maths page in headless Chromium with the network closed and checks that MathJax typeset its
formulas; it runs where ``/usr/bin/chromium`` exists (Debian's ``chromium`` package) and is skipped
elsewhere.
"""

import html.parser
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM = pathlib.Path("/usr/bin/chromium")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
  if importlib.util.find_spec("sphinx") is None:
    pytest.skip('sphinx is not installed (pip install ".[docs]")')
  out = tmp_path_factory.mktemp("html")
  result = subprocess.run(
    [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, out],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
  )
  assert result.returncode == 0, result.stderr + result.stdout
  return out


class _Assets(html.parser.HTMLParser):
  """The URLs a page loads by itself: script src, link href (stylesheets, preloads, icons), img src."""

  def __init__(self):
    super().__init__()
    self.urls = []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "script" and attrs.get("src"):
      self.urls.append(attrs["src"])
    elif tag == "link" and attrs.get("href") and attrs.get("rel") not in ("prev", "next"):
      self.urls.append(attrs["href"])
    elif tag in ("img", "iframe", "source") and attrs.get("src"):
      self.urls.append(attrs["src"])


def _loaded(page: pathlib.Path) -> list[str]:
  parser = _Assets()
  parser.feed(page.read_text())
  return parser.urls


def test_no_page_loads_anything_from_the_network(site):
  pages = sorted(p for p in site.rglob("*.html") if p.relative_to(site).parts[0] != "_static")
  assert len(pages) > 10  # _static holds the theme's templates, not pages
  remote = {
    str(p.relative_to(site)): u
    for p in pages
    for u in _loaded(p)
    if re.match(r"(?i)^(https?:)?//", u)
  }
  assert not remote
  for page in pages:  # and what they load is there
    for url in _loaded(page):
      if not url.startswith(("data:", "#")):
        target = (page.parent / url.split("?")[0].split("#")[0]).resolve()
        assert target.exists(), (page.relative_to(site), url)


def test_mathjax_is_bundled_and_the_maths_page_uses_it(site):
  assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
  assert (site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
  maths = site / "maths.html"
  assert "_static/mathjax/tex-chtml.js" in _loaded(maths)
  assert 'class="math' in maths.read_text()


def test_the_notebooks_are_pages_with_their_stored_outputs(site):
  stems = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
  assert "lr_curves" in stems
  for stem in stems:
    page = site / "notebooks" / f"{stem}.html"
    assert page.is_file(), stem
  lr_curves = (site / "notebooks" / "lr_curves.html").read_text()
  assert "<img" in lr_curves and "lr ratio" in lr_curves  # a plot and a printed table
  index = (site / "notebooks.html").read_text()
  assert all(f"notebooks/{stem}.html" in index for stem in stems)


def _closed_network() -> list[str]:
  """``unshare -n``, a network namespace with no interface, where this user may make one."""
  unshare = shutil.which("unshare")
  if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
    return [unshare, "-n"]
  return []  # Chromium's flags below still keep it from reaching out on its own


def _chromium(url: str, *args: str) -> subprocess.CompletedProcess:
  profile = tempfile.mkdtemp()
  try:
    return subprocess.run(
      [*_closed_network(), str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
       "--disable-quic", "--no-first-run", "--disable-background-networking",
       "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
       "--virtual-time-budget=15000", "--window-size=1200,900", *args, url],
      capture_output=True, text=True, timeout=180,
    )  # fmt: skip
  finally:
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(
  not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"
)
def test_chromium_typesets_the_maths_with_the_network_closed(site, tmp_path):
  """MathJax, loaded from _static, replaces every formula of the maths page by typeset maths.

  Runs where /usr/bin/chromium exists, skipped elsewhere. The page's DOM after its scripts ran
  (``--dump-dom``) holds one ``mjx-container`` per formula and no TeX delimiters left in its text;
  a screenshot is taken too, for a person to look at when this fails.
  """
  url = (site / "maths.html").as_uri()
  source = (site / "maths.html").read_text()
  formulas = len(re.findall(r'class="math[" ]', source))
  assert formulas > 5
  dom = _chromium(url, "--dump-dom")
  assert dom.returncode == 0, dom.stderr[-2000:]
  assert dom.stdout.count("<mjx-container") >= formulas, dom.stderr[-2000:]
  text = re.sub(r"<script.*?</script>", "", dom.stdout, flags=re.S)
  assert "\\(" not in text and "\\[" not in text and "$$" not in text
  shot = tmp_path / "maths.png"
  result = _chromium(url, f"--screenshot={shot}")
  assert result.returncode == 0 and shot.stat().st_size > 10_000, result.stderr[-2000:]
