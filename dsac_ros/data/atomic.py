"""Folders that appear complete or not at all."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import json
import os
from pathlib import Path
import shutil
import tempfile


@contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; rename it to ``out`` when the block completes.

    On any error (or Ctrl-C) the temporary folder is removed and ``out`` is left as it was, so
    readers never see a half-written scene. ``out`` may exist only as an empty folder.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: Path, payload: object) -> None:
    """Write ``payload`` as JSON through a temporary file and a rename: readers (a test, the
    demo) never see a half-written file, even if the writer is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)
