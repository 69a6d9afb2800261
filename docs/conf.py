"""Sphinx configuration: MyST pages, API pages from docstrings, config and CLI references from the code.

Build: `make docs` (sphinx-build -W --keep-going -b html docs docs/_build/html). Nothing is fetched
from the network (no intersphinx); the package is imported, so run it inside the project's .venv.
"""
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))  # this checkout's alignx_jax, whatever the venv has installed
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import alignx_jax  # noqa: E402

project = "alignx_jax"
author = "The alignx_jax maintainers"
copyright = "2026, The alignx_jax maintainers"  # noqa: A001 - Sphinx's name
release = version = alignx_jax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "alignx_docs",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
default_role = "literal"  # `x` in a docstring is code, as in the rest of the project

autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"alignx_jax {release}"
html_static_path = []
