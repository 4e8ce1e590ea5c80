"""Sphinx configuration (build: ``sphinx-build -W -b html docs docs/_build``)."""

from importlib.metadata import version as _version

project = "mosaicvi"
author = "the mosaicvi developers"
copyright = "2026, the mosaicvi developers"
release = _version("mosaicvi")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
autodoc_member_order = "groupwise"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(torch|np|pd|rich)\..*")]
nb_execution_mode = "off"  # tutorials are executed by their authors, not by the docs build
myst_enable_extensions = ["dollarmath", "colon_fence"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "generated/*.md"]
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
    "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
}
html_theme = "sphinx_book_theme"
html_title = "mosaicvi"
