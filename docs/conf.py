"""Sphinx configuration: MyST markdown pages, notebooks and autodoc from the package's docstrings.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (the tests do the same).
Nothing here reaches the network, to build or to read the pages: no intersphinx, the theme's assets are
installed with it, MathJax is copied into ``_static`` from the ``sphinx-mathjax-offline`` package, and
the notebooks (``docs/notebooks``, a link to ``../notebooks``) are shown with the outputs they were
saved with, not run.
"""

import importlib.metadata
import importlib.util

project = "optax-adamwdl"
author = "optax-adamwdl contributors"
copyright = "2026, optax-adamwdl contributors"
release = importlib.metadata.version("optax-adamwdl")
version = release

extensions = [
  "myst_nb",  # MyST markdown (myst_parser) and notebooks
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx-mathjax-offline",  # MathJax 3 from the package, into _static/mathjax: no CDN
  "sphinx.ext.viewcode",
]

root_doc = "index"
nb_execution_mode = "off"  # the notebooks' stored outputs; tests/test_notebooks.py runs them
# _generated/ holds pages that other pages {include}; they are not documents of their own.
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
# The signatures show defaults; optax's type aliases (ScalarOrSchedule, ...) would expand to long unions.
autodoc_typehints = "none"
autodoc_default_options = {"exclude-members": "__new__"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The docs extra installs sphinx-book-theme; Sphinx's own theme stands in where it is missing.
html_theme = "sphinx_book_theme" if importlib.util.find_spec("sphinx_book_theme") else "alabaster"
html_title = "optax-adamwdl"
html_theme_options = {"show_toc_level": 2} if html_theme == "sphinx_book_theme" else {}
