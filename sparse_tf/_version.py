"""The package's version: from the git tag, through setuptools-scm, which writes
`_scm_version.py` when the package is built or installed (`pip install .` or `-e .`). A
source tree used without installing it, or built where git metadata is missing, says
`0+unknown` (setuptools-scm's fallback in pyproject.toml is the same)."""

try:
    from sparse_tf._scm_version import __version__
except ImportError:  # never installed: no version was written
    __version__ = "0+unknown"

__all__ = ["__version__"]
