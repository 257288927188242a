"""Run a benchmark as another revision of sparse_tf would: its own `sparse_tf` and `benchmarks`,
so that two revisions can be timed side by side in one run on one machine.

    python benchmarks/revision.py 5973892 benchmarks/step_profile.py --device cuda ...
    python benchmarks/revision.py runs/revisions/<commit> benchmarks/step_profile.py ...
    python benchmarks/revision.py 5973892      # extract only; prints runs/revisions/<commit>

The first argument is a git revision, extracted once (`git archive` of `sparse_tf` and
`benchmarks`) into runs/revisions/<commit>/, or such a folder already extracted: for a machine
without the repository's history (a GPU machine handed a copy of the working tree), extract
here with the revision alone and hand it the printed folder. The script path is taken inside
that tree, so the revision's own benchmark runs against its own package; the rest of the
arguments go to it. The installed (editable) sparse_tf is hidden from the run: an import of
sparse_tf that is not the revision's fails loudly rather than mixing code.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "runs" / "revisions"
PARTS = ("sparse_tf", "benchmarks")

_RUN = """
import os, runpy, sys
tree, script = sys.argv[1], sys.argv[2]
# Hide the installed sparse_tf (an editable install's import hook, or a site-packages copy).
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "sparse_tf"))]
sys.path[:0] = [tree, os.path.dirname(script)]  # the package; the script's sibling modules
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


class RevisionError(Exception):
    """A revision that cannot be found or extracted: the message says which and why."""


def tree_of(revision: str, store: Path = STORE) -> Path:
    """The folder holding `revision`'s sparse_tf and benchmarks: the argument itself when it is
    such a folder, else `store`/<full commit>, extracted from git on first use (to a temporary
    name, then renamed: an interrupted extraction leaves nothing half-written)."""
    given = Path(revision)
    if given.is_dir():
        missing = [p for p in PARTS if not (given / p).is_dir()]
        if missing:
            raise RevisionError(f"{given}: not a revision's tree (no {', '.join(missing)}/)")
        return given.resolve()
    found = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    if found.returncode:
        raise RevisionError(f"{revision}: not a folder and not a revision of this repository")
    commit = found.stdout.decode().strip()
    tree = store / commit
    if not tree.is_dir():
        archive = _git("archive", "--format=tar", commit, *PARTS)
        if archive.returncode:
            raise RevisionError(
                f"{revision}: git archive failed: {archive.stderr.decode().strip()}"
            )
        partial = tree.with_name(f".{commit}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # an interrupted extraction of ours
        store.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(partial, filter="data")
        os.replace(partial, tree)
    return tree


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise RevisionError("git is not installed: give an extracted folder instead") from None


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    try:
        tree = tree_of(argv[0])
    except RevisionError as e:
        print(f"revision.py: {e}", file=sys.stderr)
        return 2
    if len(argv) == 1:  # extract only: the folder to hand a machine without the history
        print(tree.relative_to(ROOT) if tree.is_relative_to(ROOT) else tree)
        return 0
    script = tree / argv[1]
    if not script.is_file():
        print(f"revision.py: {argv[1]}: no such script in {tree}", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-c", _RUN, str(tree), str(script), *argv[2:]]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
