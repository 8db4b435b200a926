"""Every stored evaluation fixture has a provenance row, and its decompressed bytes still
hash to the git blob id (or, for excerpts, the sha256) that row records."""
import hashlib
import re

from tests import paths

PAGE = paths.ROOT / "tests" / "fixtures" / "eval" / "PROVENANCE.md"
_ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| .*? \| (?P<size>[\d,]+) \| (?P<check>.*) \|$")


def _rows():
  rows = {}
  for line in PAGE.read_text(encoding="utf-8").splitlines():
    m = _ROW.match(line)
    if m:
      assert m["file"] not in rows, f"{PAGE}: two rows for {m['file']}"
      rows[m["file"]] = (int(m["size"].replace(",", "")), m["check"])
  return rows


def test_every_fixture_file_has_a_row_and_every_row_a_file():
  stored = {str(p.relative_to(PAGE.parent)) for p in PAGE.parent.rglob("*")
            if p.is_file() and p != PAGE}
  rows = _rows()
  assert stored == set(rows), (f"without a row: {sorted(stored - set(rows))}; "
                               f"row without a file: {sorted(set(rows) - stored)}")
  assert len(rows) == 48


def test_decompressed_bytes_match_recorded_blob_or_sha256():
  for name, (size, check) in _rows().items():
    data = paths.fixture_bytes(name[:-3] if name.endswith(".xz") else name)
    assert len(data) == size, f"{name}: {len(data)} bytes, provenance says {size}"
    sha = re.match(r"sha256 `([0-9a-f]{64})`", check)
    if sha:
      assert hashlib.sha256(data).hexdigest() == sha[1], f"{name}: sha256 differs"
    else:
      blob = re.fullmatch(r"`([0-9a-f]{40})`", check)
      assert blob, f"{PAGE}: row of {name}: expected a 40-hex git blob id, got {check!r}"
      got = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
      assert got == blob[1], f"{name}: git blob id {got}, provenance says {blob[1]}"
