"""Subprocess half of the resume test: restore an iterator state, save the next batches.

Usage: python resume_worker.py ARGS.json  (keys: cfg, model, tokenizer_dir, seed, state, num_batches, out)
"""
import json
import sys

import numpy as np

from acformer_jax.data import make_train_iterator


def main(path):
  args = json.loads(open(path).read())
  # tokenizer=None: the transformers-free SentencePiece encoder of tokenizer_path (the parent
  # process used the transformers tokenizer, so this also checks that both give the same ids).
  cfg = dict(args["cfg"], tokenizer_path=args["tokenizer_dir"])
  it = make_train_iterator(cfg, None, args["model"], 0, 1, seed=args["seed"], with_index=True)
  it.set_state(json.dumps(args["state"]))
  arrays = {}
  for i in range(args["num_batches"]):
    for k, v in next(it).items():
      arrays[f"{i}/{k}"] = v
  np.savez(args["out"], **arrays)
  with open(args["out"] + ".state.json", "w") as f:
    json.dump(it.get_state(), f)
  it.close()


if __name__ == "__main__":
  main(sys.argv[1])
