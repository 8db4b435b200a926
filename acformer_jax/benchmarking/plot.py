"""``bench plot``: the paper's Figure 1 (accuracy against step time, one point per connector).

Inputs: a ``bench speed --json`` result (step times) and accuracies, from an accuracy file
(``{"<connector>": accuracy, ...}`` or a list of ``{"connector": ..., "accuracy": ...}``)
and/or ``--score CONNECTOR=FILE`` pairs, where FILE is the output of ``python -m
acformer_jax.evaluate score`` (its last line is the metrics JSON; ``--metric`` picks the
number; default ``accuracy``, the demo benchmark's headline). Connectors are matched by
the names used on the ``bench speed`` command line. Spec ``docs/method.md`` 1.7.
"""
from __future__ import annotations

import json
import pathlib
from typing import Dict


def _read_json(path, what: str):
  p = pathlib.Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"{what} file {p} does not exist")
  try:
    return json.loads(p.read_text().strip().splitlines()[-1])
  except (ValueError, IndexError) as e:
    raise ValueError(f"{what} file {p}: the last line is not a JSON object ({e})") from None


def accuracies(raw) -> Dict[str, float]:
  if isinstance(raw, dict):
    items = raw.items()
  elif isinstance(raw, list):
    try:
      items = [(r["connector"], r["accuracy"]) for r in raw]
    except (TypeError, KeyError):
      raise ValueError("accuracy list entries need 'connector' and 'accuracy' keys") from None
  else:
    raise ValueError("accuracy file must hold {connector: accuracy} or a list of entries")
  return {str(k): float(v) for k, v in items}


def run(args) -> Dict:
  """``args``: ``speed``, ``accuracy``, ``score``, ``metric``, ``out``, ``title``, ``ylabel``
  (the ``bench`` flags)."""
  if not args.speed or not args.out:
    raise ValueError("plot needs --speed and --out")
  speed = _read_json(args.speed, "--speed")
  if speed.get("command") != "speed" or "connectors" not in speed:
    raise ValueError(f"--speed {args.speed}: not a `bench speed --json` result")
  acc = accuracies(_read_json(args.accuracy, "--accuracy")) if args.accuracy else {}
  for item in args.score:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"--score {item!r}: expected CONNECTOR=FILE")
    metrics = _read_json(path, "--score")
    if args.metric not in metrics:
      raise ValueError(f"--score {path}: no metric {args.metric!r} (has {sorted(metrics)})")
    acc[name] = float(metrics[args.metric])
  if not acc:
    raise ValueError("give accuracies with --accuracy FILE and/or --score CONNECTOR=FILE")
  points = [{"connector": r["connector"], "visual_tokens": r["visual_tokens"],
             "step_s": r["step_s"], "accuracy": acc[r["connector"]]}
            for r in speed["connectors"] if r["connector"] in acc]
  missing = sorted(set(acc) - {p["connector"] for p in points})
  if not points:
    raise ValueError(f"no connector of {args.speed} has an accuracy (accuracy keys: "
                     f"{sorted(acc)})")
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for p in points:
    ax.scatter(p["step_s"], p["accuracy"], s=20 + p["visual_tokens"] / 3)
    ax.annotate(f"{p['connector']} ({p['visual_tokens']})", (p["step_s"], p["accuracy"]),
                textcoords="offset points", xytext=(6, 4), fontsize=8)
  ax.set_xlabel("train step time (s)")
  ax.set_ylabel(args.ylabel)
  ax.set_title(args.title)
  ax.grid(alpha=0.3)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120, bbox_inches="tight")
  plt.close(fig)
  print(f"wrote {out} ({len(points)} connectors)")
  return {"command": "plot", "out": str(out), "points": points, "missing_in_speed": missing}
