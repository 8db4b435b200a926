"""Tiny models, batches and experiment configs shared by the trainer tests."""
import numpy as np

from acformer_jax import config as C
from acformer_jax.demo import recipe
from acformer_jax.trainer import experiment

# 28 px / patch 7 = 16 patches, 1 computed ViT block; acformer budget 4 -> 5 visual tokens.
VISION = C.VisionConfig(image_size=28, patch_size=7, hidden_size=16, intermediate_size=32,
                        num_layers=2, num_heads=2)
LLM = C.LLMConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                  num_heads=2, num_kv_heads=2)
CONN = C.ConnectorConfig(type="acformer", num_queries=4, depth=1, heads=2, dim_head=8, ff_mult=2)
MODEL = C.ModelConfig(vision=VISION, llm=LLM, connector=CONN, image_token_id=64)
NV = C.num_visual_tokens(MODEL)


def batch(seed: int, b: int = 8, text: int = 8, config: C.ModelConfig = MODEL) -> dict:
  """A random unpacked ``acformer_jax.batch`` batch (one sample per row): BOS, NV image slots,
  text; the last 4 text tokens supervised, right padding in odd rows, one text-only row."""
  rs = np.random.RandomState(seed)
  v = config.llm.vocab_size
  t = 1 + NV + text
  ids = rs.randint(3, v, size=(b, t)).astype(np.int32)
  ids[:, 0] = 1
  ids[:, 1:1 + NV] = config.image_token_id
  ids[b - 1, 1:1 + NV] = rs.randint(3, v, size=NV)  # a text-only row
  labels = np.full((b, t), -100, np.int32)
  labels[:, -5:-1] = ids[:, -5:-1]
  mask = np.ones((b, t), np.int32)
  mask[1::2, -1] = 0
  s = config.vision.image_size
  return {"images": rs.randn(b, 1, s, s, 3).astype(np.float32), "input_ids": ids, "labels": labels,
          "segment_ids": mask, "positions": ((np.cumsum(mask, axis=1) - 1) * mask).astype(np.int32),
          "image_mask": (np.arange(b) != b - 1)[:, None]}


def experiment_config(data_dir, tokenizer_dir, *, steps: int, stage: int = 2, every: int = 3):
  """A full experiment config on ``acformer_demo/qa_tiny`` (56 px) with a tiny model."""
  c = experiment.base_config()
  (experiment.stage1 if stage == 1 else experiment.stage2)(c)
  recipe.tiny(c, "acformer")
  vision = C.VisionConfig(image_size=56, patch_size=14, hidden_size=16, intermediate_size=32,
                          num_layers=2, num_heads=2)
  llm = C.LLMConfig(vocab_size=512, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=2, max_position_embeddings=256)
  c.model.vision = experiment.dict_of(vision)
  c.model.llm = experiment.dict_of(llm)
  c.model.image_token_id = 512
  c.model.connector.update(num_queries=4, depth=1, heads=2, dim_head=8, ff_mult=2)
  c.mesh.shape = (4, 2, 1)
  c.data.builder = "acformer_demo/qa_tiny"
  c.data.data_dir = str(data_dir)
  c.data.tokenizer_path = str(tokenizer_dir)
  c.data.max_length = 112
  c.data.group_by_length = False
  c.data.num_workers = 1
  c.train.global_batch_size = 8
  c.train.steps = steps
  c.train.optimizer.lr = 1e-2
  c.train.optimizer.warmup_ratio = 0.0
  c.train.log_every = 1
  c.train.progress_bar = False
  c.train.sharding_tolerance = -1.0
  c.checkpoint.every = every
  c.checkpoint.keep = 10
  c.checkpoint.export = False
  c.init.allow_random = True
  return c


def sharded_train_losses(model, config: C.ModelConfig, host_params, data: dict,
                         steps: int = 3) -> list:
  """Stage-2 train steps of ``model`` from ``host_params`` on ``data`` over a (2, 2, 2) mesh;
  the losses (each step checked finite)."""
  import jax  # pylint: disable=import-outside-toplevel
  from acformer_jax import batch as B, sharding  # pylint: disable=import-outside-toplevel
  from acformer_jax.trainer import optim, state as S, step as ST  # pylint: disable=import-outside-toplevel
  trainable = experiment.STAGE2_TRAINABLE
  tx, schedule = optim.make_optimizer({"lr": 1e-2, "warmup_ratio": 0.0, "weight_decay": 0.0},
                                      steps + 1)
  mesh = sharding.make_mesh((2, 2, 2))
  _, shardings = S.abstract_state(S.make_state_fn(model, config, tx, trainable), mesh)
  state = jax.device_put(jax.device_get(S.state_from_params_fn(tx, trainable)(host_params)),
                         shardings)
  call = ST.jit_train_step(ST.make_train_step(model, tx, schedule, trainable=trainable, seed=0),
                           mesh, shardings)
  batch, losses = B.to_device(data, mesh), []
  for _ in range(steps):
    state, m = call(state, batch)
    m = jax.device_get(m)
    assert m["finite"]
    losses.append(float(m["loss"]))
  return losses
