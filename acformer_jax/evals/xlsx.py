"""Minimal .xlsx reading and writing with zipfile + XML (MMBench upload sheets, `docs/benchmarks.md` 3).

An .xlsx file is a zip of SpreadsheetML parts. Only the first worksheet is read; cells may
be shared strings, inline strings, numbers or booleans. The writer emits one sheet with
inline strings and numbers, which OpenCompass' server and pandas/openpyxl both read.
"""
from __future__ import annotations

import math
import os
import pathlib
import re
import zipfile
from typing import Any, Sequence
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from acformer_jax.evals.io import EvalDataError, atomic_open

_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_CELL_REF = re.compile(r"([A-Z]+)(\d+)")


def _col_index(letters: str) -> int:
  n = 0
  for ch in letters:
    n = n * 26 + ord(ch) - ord("A") + 1
  return n - 1


def _col_letters(index: int) -> str:
  out = ""
  index += 1
  while index:
    index, r = divmod(index - 1, 26)
    out = chr(ord("A") + r) + out
  return out


def _text(elem: ET.Element | None) -> str:
  """Concatenated text of all <t> descendants (rich text runs included)."""
  if elem is None:
    return ""
  return "".join(t.text or "" for t in elem.iter(f"{_NS}t"))


def _first_sheet_name(zf: zipfile.ZipFile) -> str:
  names = set(zf.namelist())
  if "xl/workbook.xml" in names and "xl/_rels/workbook.xml.rels" in names:
    wb = ET.fromstring(zf.read("xl/workbook.xml"))
    sheet = wb.find(f"{_NS}sheets/{_NS}sheet")
    rels = ET.fromstring(zf.read("xl/_rels/workbook.xml.rels"))
    if sheet is not None:
      rid = sheet.get(f"{_REL_NS}id")
      for rel in rels:
        if rel.get("Id") == rid:
          target = rel.get("Target", "").lstrip("/")
          return target if target.startswith("xl/") else "xl/" + target
  sheets = sorted(n for n in names if n.startswith("xl/worksheets/sheet"))
  if not sheets:
    raise EvalDataError("no worksheet in the workbook")
  return sheets[0]


def read_rows(path: str | os.PathLike) -> list[list[Any]]:
  """All rows of the first worksheet as lists (None for empty cells)."""
  path = pathlib.Path(path)
  try:
    zf = zipfile.ZipFile(path)
  except (FileNotFoundError, zipfile.BadZipFile) as e:
    raise EvalDataError(f"{path}: not a readable .xlsx file ({e})") from None
  with zf:
    shared = []
    if "xl/sharedStrings.xml" in zf.namelist():
      root = ET.fromstring(zf.read("xl/sharedStrings.xml"))
      shared = [_text(si) for si in root.iter(f"{_NS}si")]
    try:
      sheet = ET.fromstring(zf.read(_first_sheet_name(zf)))
    except (KeyError, EvalDataError) as e:
      raise EvalDataError(f"{path}: {e}") from None
  rows = []
  for row in sheet.iter(f"{_NS}row"):
    values: dict[int, Any] = {}
    for pos, cell in enumerate(row.iter(f"{_NS}c")):
      ref = _CELL_REF.match(cell.get("r", ""))
      col = _col_index(ref.group(1)) if ref else pos
      values[col] = _cell_value(cell, shared)
    rows.append([values.get(i) for i in range(max(values) + 1)] if values else [])
  return rows


def _cell_value(cell: ET.Element, shared: list[str]) -> Any:
  kind = cell.get("t", "n")
  if kind == "inlineStr":
    is_ = cell.find(f"{_NS}is")
    return None if is_ is None else _text(is_)
  v = cell.find(f"{_NS}v")
  if v is None or v.text is None:
    return None
  if kind == "s":
    return shared[int(v.text)]
  if kind == "b":
    return v.text == "1"
  if kind in ("str", "e"):
    return v.text
  number = float(v.text)
  return int(number) if number.is_integer() and "." not in v.text else number


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The first worksheet as dicts keyed by the header row."""
  rows = read_rows(path)
  if not rows:
    raise EvalDataError(f"{path}: empty worksheet, expected a header row")
  header = [str(h) if h is not None else "" for h in rows[0]]
  return [{h: (r[i] if i < len(r) else None) for i, h in enumerate(header)}
          for r in rows[1:] if any(v is not None for v in r)]


_XML_HEAD = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_PKG_RELS = "http://schemas.openxmlformats.org/package/2006/relationships"
_DOC_RELS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_SHEET_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_CONTENT_TYPES = (
    _XML_HEAD + '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" '
    'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    f'<Override PartName="/xl/workbook.xml" ContentType="{_SHEET_CT}.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    f'ContentType="{_SHEET_CT}.worksheet+xml"/></Types>')
_ROOT_RELS = (
    _XML_HEAD + f'<Relationships xmlns="{_PKG_RELS}"><Relationship Id="rId1" '
    f'Type="{_DOC_RELS}/officeDocument" Target="xl/workbook.xml"/></Relationships>')
_WORKBOOK = (
    _XML_HEAD + f'<workbook xmlns="{_NS[1:-1]}" xmlns:r="{_DOC_RELS}">'
    '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>')
_WORKBOOK_RELS = (
    _XML_HEAD + f'<Relationships xmlns="{_PKG_RELS}"><Relationship Id="rId1" '
    f'Type="{_DOC_RELS}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>')
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _cell_xml(ref: str, value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, bool):
    return f'<c r="{ref}" t="b"><v>{int(value)}</v></c>'
  if isinstance(value, float) and not math.isfinite(value):
    return ""
  if isinstance(value, (int, float)):
    return f'<c r="{ref}" t="n"><v>{value}</v></c>'
  text = escape(_ILLEGAL_XML.sub("", str(value)))
  return f'<c r="{ref}" t="inlineStr"><is><t xml:space="preserve">{text}</t></is></c>'


def write_table(path: str | os.PathLike, header: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> None:
  """Writes one worksheet (header row + rows) atomically."""
  parts = [_XML_HEAD + f'<worksheet xmlns="{_NS[1:-1]}"><sheetData>']
  for r, values in enumerate([list(header)] + [list(v) for v in rows], 1):
    cells = "".join(_cell_xml(f"{_col_letters(c)}{r}", v) for c, v in enumerate(values))
    parts.append(f'<row r="{r}">{cells}</row>')
  parts.append("</sheetData></worksheet>")
  with atomic_open(path, "wb") as f:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
      zf.writestr("[Content_Types].xml", _CONTENT_TYPES)
      zf.writestr("_rels/.rels", _ROOT_RELS)
      zf.writestr("xl/workbook.xml", _WORKBOOK)
      zf.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
      zf.writestr("xl/worksheets/sheet1.xml", "".join(parts))
