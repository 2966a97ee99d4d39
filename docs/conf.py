"""Sphinx configuration of pyxlio's documentation (``sphinx-build -W docs build/docs``).

Sphinx, not MkDocs+mkdocstrings: the API reference comes from the compiled extension modules
themselves (autodoc imports pyxlio and reads the runtime docstrings and the signatures that
Cython's ``embedsignature.format = "clinic"`` gives), where mkdocstrings' static analysis would see only the
stubs, which carry no docstrings.  The guide is Markdown (MyST), moved from the README.
The package must be importable: built in place (PYTHONPATH=src) or installed.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

import pyxlio  # noqa: E402

project = "pyxlio"
author = "pyxlio developers"
copyright = "pyxlio developers"
release = pyxlio.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_heading_anchors = 3
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
nitpicky = False
# The Python modules' docstrings are Google style (Args:, Attributes:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
