"""Bad data (issue item 6): every kind is skipped and counted; good samples come through unchanged."""
import numpy as np
import pytest

from acformer_jax import config as model_config
from acformer_jax.data import make_train_iterator
from acformer_jax.data.preprocess import preprocess_image
from acformer_jax.data.templates import tokenize_conversation
from acformer_jax.data.tokenizer import load_tokenizer, make_encoder

MODEL = {"vision": {"image_size": 28, "patch_size": 14, "num_heads": 4},
         "connector": {"type": "pr", "num_queries": 5}, "image_token_id": 32000}
MAX_LEN = 160
NV = model_config.num_visual_tokens(model_config.model_config_from_dict(MODEL))


def _config(root, data_dir, **kw):
  cfg = {"builder": "llava_instruct", "data_dir": str(data_dir), "json_path": str(root / "llava_v1_5_mix665k.json"),
         "image_root": str(root), "template": "vicuna_v1", "max_length": MAX_LEN, "global_batch_size": 2,
         "num_epochs": 1, "drop_remainder": False, "pad_to_square": True, "num_workers": 2}
  cfg.update(kw)
  return cfg


def _run(cfg, tok):
  it = make_train_iterator(cfg, tok, MODEL, 0, 1, seed=3, with_index=True)
  rows = {}
  for batch in it:
    for b, idx in enumerate(batch["sample_index"][:, 0]):  # unpacked: one sample per row
      if idx >= 0:
        sid = it._source[int(idx)]["id"].decode()  # pylint: disable=protected-access
        assert sid not in rows
        rows[sid] = {k: v[b] for k, v in batch.items()}
  return it, rows


@pytest.mark.parametrize("overlong", ["truncate", "skip"])
def test_bad_samples_skipped_and_counted(llava_instruct_folder, tokenizer_dir, tmp_path_factory, overlong):
  root, entries, skips = llava_instruct_folder
  tok = load_tokenizer(tokenizer_dir)
  data_dir = tmp_path_factory.getbasetemp() / "tfds_bad"
  it, rows = _run(_config(root, data_dir, overlong=overlong), tok)
  good = [e for e in entries if e.get("good") and not (overlong == "skip" and e.get("truncated"))]
  assert sorted(rows) == sorted(e["id"] for e in good)
  want = dict(skips)
  if overlong == "skip":  # the over-long samples are now dropped before truncation
    del want["no_supervised_tokens"]
    want["too_long"] = 2
  stats = it.stats()
  assert stats["skipped"] == want
  assert stats["build_skipped"] == {"bad_record": 1}
  assert stats["truncated"] == (1 if overlong == "truncate" else 0)
  enc = make_encoder(tok)
  for e in good:
    row, has_image = rows[e["id"]], "image" in e
    ref = tokenize_conversation(e["conversations"], has_image=has_image, template="vicuna_v1", encoder=enc,
                                num_visual_tokens=NV, image_token_id=32000, max_length=MAX_LEN)
    n = len(ref.input_ids)
    np.testing.assert_array_equal(row["input_ids"][:n], ref.input_ids)
    np.testing.assert_array_equal(row["labels"][:n], ref.labels)
    assert (row["segment_ids"] > 0).sum() == n and (row["labels"][n:] == -100).all()
    np.testing.assert_array_equal(row["positions"][:n], np.arange(n))
    assert row["image_mask"].tolist() == [has_image]
    if has_image:
      img = preprocess_image(str(root / e["image"]), 28, pad_to_square=True)
      np.testing.assert_array_equal(row["images"][0], img)
    else:
      assert not row["images"].any()
