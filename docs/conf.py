"""Sphinx configuration.

Build strictly (what CI runs): ``sphinx-build -W --keep-going -b html docs docs/_build``.
Tutorials are executed notebooks rendered as committed (``scripts/run_tutorials.sh``
re-executes them).
"""

import os
import socket
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
templates_path = ["_templates"]
autosummary_generate = True
autodoc_member_order = "groupwise"
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = True
typehints_document_rtype = False
always_document_param_types = False
nb_execution_mode = "off"  # notebooks are rendered with their committed outputs
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
# autosummary writes its pages with the first suffix: reStructuredText, not MyST
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "tutorials/*.py"]

INVENTORIES = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "scvi": ("https://docs.scvi-tools.org/en/stable/", None),
    "torch": ("https://pytorch.org/docs/stable/", None),
}


def _online(host: str = "docs.python.org", timeout: float = 3.0) -> bool:
    """Whether the inventories can be fetched (``MOSAICVI_DOCS_OFFLINE=1`` forces no)."""
    if os.environ.get("MOSAICVI_DOCS_OFFLINE"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# Nitpicky: every reference to our own API must resolve. Names of other libraries resolve
# through intersphinx when the inventories are reachable; without network (our CI machines)
# they are left as plain text instead of failing the build.
nitpicky = True
EXTERNAL = r"(torch|np|numpy|pd|pandas|scipy|sparse|rich|h5py|lightning|anndata|mudata|scvi|jax)"
nitpick_ignore_regex = [
    ("py:.*", EXTERNAL + r"(\..*)?"),
    ("py:class", r"(optional|default.*|array-like|callable)"),
    # prose that napoleon reads as a type in scvi-tools' inherited "Returns" sections
    ("py:class", r".*\s.*"),
    # scvi-tools' type aliases in its inherited signatures
    ("py:class", r"(summary_stats_dict|state_registry_summary|AnnOrMuData|Number|ELBO)"),
    # torch's Distribution in dataclass field annotations (resolved online through torch)
    ("py:class", r"Distribution"),
]
if _online():
    intersphinx_mapping = INVENTORIES
else:
    intersphinx_mapping = {}
    nitpick_ignore_regex += [
        ("py:.*", r"(collections|typing|pathlib|os|enum|dataclasses)(\..*)?"),
        ("py:class", r"(int|float|str|bool|dict|list|tuple|None|object|type|Path)"),
        ("py:.*", r"(Sequence|Literal|Callable|Iterator|Mapping)"),
    ]



def _own_api() -> dict[str, list[str]]:
    """Per documented class, its public methods that are ours or scvi-tools' model API.

    The class template lists these (not torch's or Lightning's inherited ``nn.Module`` /
    ``LightningModule`` methods, which are documented by those projects).
    """
    import inspect

    import mosaicvi

    out = {}
    for sub in ("model", "data", "module", "nn", "metrics"):
        module = getattr(mosaicvi, sub)
        for name in dir(module):
            cls = getattr(module, name)
            if not inspect.isclass(cls) or not cls.__module__.startswith("mosaicvi"):
                continue
            methods, attributes = [], []
            for attr in dir(cls):
                if attr.startswith("_"):
                    continue
                owner = next((k for k in cls.__mro__ if attr in vars(k)), None)
                if owner is None or not owner.__module__.startswith(
                    ("mosaicvi", "scvi.model.base")
                ):
                    continue
                value = vars(owner)[attr]
                if isinstance(value, property):
                    attributes.append(attr)
                elif callable(getattr(cls, attr, None)):
                    methods.append(attr)
            for key in (f"{cls.__module__.split('._')[0]}.{name}", f"mosaicvi.{name}"):
                out[key] = {"methods": methods, "attributes": attributes}
    return out


autosummary_context = {"own_api": _own_api()}

html_theme = "sphinx_book_theme"
html_title = "mosaicvi"
html_theme_options = {
    "repository_url": "https://github.com/scverse/mosaicvi",
    "use_repository_button": False,
}
