"""Output locations are checked before any work is done (issue #15: a read-only parent must
not fail only after a full conversion, export or training run)."""
from __future__ import annotations

import os
import pathlib
import tempfile


class OutputNotWritable(PermissionError, ValueError):
  """The output path (or the folder it would be created in) cannot be written (a
  ``ValueError`` too, so every CLI's bad-input handler prints it as ``error:``)."""


def check_writable(path, what: str = "output", *, is_dir: bool = True) -> pathlib.Path:
  """Raises :class:`OutputNotWritable` unless ``path`` can be created or written.

  Creates and removes a probe file in ``path`` (when it is an existing folder) or in its
  nearest existing ancestor, so read-only mounts, immutable folders and permission bits are
  all caught (``os.access`` alone is wrong for root). ``is_dir=False``: ``path`` is a file.
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not path.is_dir() and is_dir:
    raise OutputNotWritable(f"{what} {path} is a file, expected a folder")
  if path.is_dir() and not is_dir:
    raise OutputNotWritable(f"{what} {path} is a folder, expected a file")
  probe_in = path if (is_dir and path.is_dir()) else path.parent
  while not probe_in.exists():
    probe_in = probe_in.parent
  if not probe_in.is_dir():
    raise OutputNotWritable(f"{what} {path}: {probe_in} is a file, not a folder")
  try:
    fd, name = tempfile.mkstemp(prefix=".acformer_write_probe_", dir=probe_in)
    os.close(fd)
    os.unlink(name)
  except OSError as e:
    raise OutputNotWritable(f"{what} {path} cannot be written: {probe_in} is not writable "
                            f"({e.strerror or e})") from None
  if not is_dir and path.exists() and not os.access(path, os.W_OK):
    raise OutputNotWritable(f"{what} {path} is not writable")
  return path
