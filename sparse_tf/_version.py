"""The package's version: from the git tag, through setuptools-scm, which writes
`_scm_version.py` when the package is built or installed (`pip install .` or `-e .`). A
source tree used without installing it says `0+unknown`; one installed without git metadata
(a source archive) says setuptools-scm's fallback, `0.0` (pyproject.toml)."""

try:
    from sparse_tf._scm_version import __version__
except ImportError:  # never installed: no version was written
    __version__ = "0+unknown"

__all__ = ["__version__"]
