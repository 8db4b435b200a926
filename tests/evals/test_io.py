"""Reading plain and xz/gzip-compressed benchmark files (acformer_jax/evals/io.py)."""
import gzip
import lzma

import pytest

from acformer_jax.evals import base
from acformer_jax.evals import io as eio

LINES = b'{"question_id": 1, "text": "yes"}\n\n{"question_id": 2, "text": "no"}\n'


@pytest.mark.parametrize("suffix,compress", [(".xz", lzma.compress), (".gz", gzip.compress)])
def test_compressed_files_read_by_name_and_by_plain_name(tmp_path, suffix, compress):
  (tmp_path / f"a.jsonl{suffix}").write_bytes(compress(LINES))
  want = [{"question_id": 1, "text": "yes"}, {"question_id": 2, "text": "no"}]
  assert eio.read_jsonl(tmp_path / f"a.jsonl{suffix}") == want
  assert eio.read_answers(tmp_path / "a.jsonl") == want  # found next to the plain name
  assert base.find_file(tmp_path, ["a.jsonl"], "x") == tmp_path / f"a.jsonl{suffix}"
  assert base.out_path(None, tmp_path / f"a.jsonl{suffix}", "_u.json").name == "a_u.json"
  (tmp_path / f"t.tsv{suffix}").write_bytes(compress(b"index\tanswer\n0\tA\n"))
  assert eio.read_tsv(tmp_path / "t.tsv") == [{"index": "0", "answer": "A"}]
  (tmp_path / f"d.json{suffix}").write_bytes(compress(b'{"k": [1, 2]}'))
  assert eio.read_json(tmp_path / "d.json") == {"k": [1, 2]}


def test_plain_file_wins_and_find_files_lists_logical_names(tmp_path):
  (tmp_path / "b.txt").write_text("plain\n")
  (tmp_path / "b.txt.xz").write_bytes(lzma.compress(b"packed\n"))
  (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"gz\n"))
  (tmp_path / "c.json.xz").write_bytes(lzma.compress(b"{}"))
  assert eio.read_text(tmp_path / "b.txt") == "plain\n"
  assert eio.find_files(tmp_path, "*.txt") == [tmp_path / "a.txt.gz", tmp_path / "b.txt"]
  assert eio.logical(tmp_path / "a.txt.gz") == tmp_path / "a.txt"


def test_bad_compressed_file_and_missing_file_are_named(tmp_path):
  (tmp_path / "bad.jsonl.xz").write_bytes(b"not xz at all")
  with pytest.raises(eio.EvalDataError, match=r"bad\.jsonl\.xz: corrupt xz file"):
    eio.read_jsonl(tmp_path / "bad.jsonl")
  (tmp_path / "cut.json.gz").write_bytes(gzip.compress(b'{"a": 1}' * 100)[:-12])
  with pytest.raises(eio.EvalDataError, match=r"cut\.json\.gz: corrupt gz file"):
    eio.read_json(tmp_path / "cut.json.gz")
  (tmp_path / "e.jsonl.xz").write_bytes(lzma.compress(b'{"a": 1}\n[2]\n'))
  with pytest.raises(eio.EvalDataError, match=r"e\.jsonl\.xz:2: expected a JSON object"):
    eio.read_jsonl(tmp_path / "e.jsonl")
  with pytest.raises(eio.EvalDataError, match=r"none\.jsonl: file not found"):
    eio.read_jsonl(tmp_path / "none.jsonl")
  with pytest.raises(eio.EvalDataError, match=r"looked for: .*none\.jsonl"):
    base.find_file(tmp_path, ["none.jsonl"], "question file")
