"""Citations stay inside the repository: every Markdown file the code, tests, docs and
scripts name exists here, every cited section number exists in the cited page, and
nothing points at the development machines' shared folder or at bare "spec N.M"."""
import functools
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("acformer_jax", "tests", "docs", "configs", "launch", "benchmarks", "scripts",
                ".ci")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".yaml", ".yml", ""}
# The design notes that live outside the repository on the development machines; their
# content is in docs/ now, and a citation must name the docs/ page (built from stems so
# that this file does not cite them itself).
OUTSIDE_STEMS = ("acformer", "jax_practices", "eval", "environment", "aot_tpu",
                 "offline_assets", "seams")

_CITE = re.compile(r"(?<![\w./-])((?:\.\.?/|[\w-]+/)*[\w-]+\.md)\b")
_NUM = r"\d+(?:\.\d+)*[a-z]?"
_WORD = r"(?:sections?|items?|parts?)\s*"
_TAIL = re.compile(
    rf"""^[`'*]*(?P<quote>[ \t]*,?[ \t]*"[^"\n]+")?[ \t]*,?[ \t]*(?:{_WORD})?"""
    rf"""(?P<nums>{_NUM}(?:\s*(?:,|-|/|and|,\s*and)\s*(?:{_WORD})?{_NUM})*(?![\w]))?""")
_HEADING = re.compile(r"^#{1,6}\s+(?:(?:Item|Section|Part)\s+)?(\d+(?:\.\d+)*[a-z]?)[.:)]?\s",
                      re.M)
_BARE_SPEC = re.compile(r"\bspec\s+\d", re.I)
_SHARED = re.compile(r"(?<![\w/])(?:\.\./)?shared\/(?:spec|eval_fixtures)|ACFORMER_SHARED_DIR")


def _scanned_files():
  files = [ROOT / "README.md"]
  for d in SCANNED_DIRS:
    for p in sorted((ROOT / d).rglob("*")):
      if (p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
          and p != pathlib.Path(__file__).resolve()):
        files.append(p)
  return [p for p in files if p.is_file()]


@functools.lru_cache(maxsize=None)
def _labels(page: pathlib.Path) -> frozenset:
  """Section / item numbers a page defines in its headings ("## 2.", "### 1.3", "### Item 7.")."""
  return frozenset(_HEADING.findall(page.read_text(encoding="utf-8")))


def _resolve(token: str, citing: pathlib.Path):
  if "/" in token:
    for base in (ROOT, citing.parent):
      if (base / token).is_file():
        return (base / token).resolve()
    return None
  if (citing.parent / token).is_file():
    return (citing.parent / token).resolve()
  matches = sorted(ROOT.glob(f"docs/**/{token}")) + sorted(
      p for p in ROOT.rglob(token) if ".venv" not in p.parts and ".git" not in p.parts)
  return matches[0].resolve() if matches else None


def _problems(path: pathlib.Path, text: str):
  """Yields one message per bad citation in `text` (the content of `path`)."""
  outside = {f"{s}.md" for s in OUTSIDE_STEMS}
  rel = path.relative_to(ROOT)
  for m in _CITE.finditer(text):
    token, line = m.group(1), text.count("\n", 0, m.start()) + 1
    where = f"{rel}:{line}: {token!r}"
    if token in outside:
      yield f"{where}: not in the repository; cite the docs/ page that holds it"
      continue
    target = _resolve(token, path)
    if target is None:
      yield f"{where}: no such file in the repository"
      continue
    tail = _TAIL.match(text[m.end():m.end() + 200])
    if target.suffix != ".md":
      continue
    page = target.read_text(encoding="utf-8")
    if tail.group("quote"):
      quoted = tail.group("quote").strip(' ,"')
      if quoted.lower() not in page.lower():
        yield f"{where}: {quoted!r} does not occur in {target.relative_to(ROOT)}"
    labels = _labels(target)
    if not labels or not tail.group("nums"):
      continue
    for num in re.findall(_NUM, tail.group("nums")):
      if num not in labels:
        yield (f"{where}: section {num} does not exist in {target.relative_to(ROOT)} "
               f"(it defines {', '.join(sorted(labels))})")
  for pattern, what in ((_BARE_SPEC, "a bare 'spec N' citation; name the docs/ page"),
                        (_SHARED, "a pointer outside the repository")):
    for m in pattern.finditer(text):
      yield f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}: {what}"


def test_every_citation_resolves_inside_the_repository():
  problems = []
  for path in _scanned_files():
    problems.extend(_problems(path, path.read_text(encoding="utf-8", errors="replace")))
  assert not problems, f"{len(problems)} bad citation(s):\n" + "\n".join(problems[:60])


def test_the_checker_catches_bad_citations(tmp_path):
  """The rules above on hand-made text: each bad form is reported, each good one is not."""
  citing = ROOT / "acformer_jax" / "x.py"
  good = ("``docs/method.md`` 1.3, 2.1-2.2; ``docs/jax_practices.md`` items 3, 6 and 12 "
          "and 9.1; `docs/benchmarks.md` 3, POPE; docs/offline_assets.md 1a; "
          "``docs/jax_practices.md`` \"What acformer_jax should adopt\" items 2, 14; "
          "docs/design.md \"Batches\"; see https://example.org/a/README.md; design.md")
  assert list(_problems(citing, good)) == []
  bad = {"``" + OUTSIDE_STEMS[0] + ".md`` 1.3": "not in the repository",
         "docs/nowhere.md": "no such file",
         "``docs/method.md`` 1.9": "section 1.9 does not exist",
         "docs/jax_practices.md items 3-16": "section 16 does not exist",
         "docs/offline_assets.md 1z": "section 1z does not exist",
         "docs/design.md \"No such heading\"": "does not occur",
         "(" + "spec" + " 2.1)": "bare 'spec N'",
         "rules in ../" + "shared" + "/spec/x": "outside the repository"}
  for text, message in bad.items():
    found = list(_problems(citing, text))
    assert len(found) == 1 and message in found[0], (text, found)
