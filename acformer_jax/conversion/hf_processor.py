"""The processor half of an ``hf-llava`` export: what ``AutoProcessor.from_pretrained`` reads.

Written with transformers' own classes (``LlavaProcessor`` = ``LlavaImageProcessor`` +
the tokenizer + a chat template), so the files match the installed version:
``processor_config.json`` (+ ``preprocessor_config.json``), ``chat_template.jinja`` and the
tokenizer files, with ``<image>`` at the model's ``image_token_index``.

Image preprocessing: LLaVA-1.5 pads every image to a square filled with the CLIP mean
colour before the CLIP resize + centre crop (``data/preprocess.py``, ``docs/method.md`` 2.7).
llava-hf's published processors do not (a plain ``CLIPImageProcessor``: the centre crop
cuts the long side). ``LlavaImageProcessor`` expresses LLaVA's padding as ``do_pad=True``
(background ``int(255 * mean)`` per channel, the same (122, 116, 104)), so exports of
models trained with ``pad_to_square`` write ``do_pad: true``.
"""
from __future__ import annotations

import pathlib

from acformer_jax import config as config_lib
from acformer_jax.data import templates
from acformer_jax.models import towers

IMAGE_TOKEN = templates.IMAGE_TOKEN

# ``vicuna_v1`` (data/templates.py) as a transformers chat template. Messages are
# {"role": "system" | "user" | "assistant", "content": str or [{"type": "image"} |
# {"type": "text", "text": ...}]}; images go first in their turn, followed by "\n".
VICUNA_V1_JINJA = (
    "{%- set ns = namespace(system='" + templates.VICUNA_SYSTEM.replace("'", "\\'") + "') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = messages[0]['content'] if messages[0]['content'] is string else "
    "(messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join(' ')) -%}{%- endif -%}"
    "{{- ns.system + ' ' -}}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{%- if m['content'] is string -%}{%- set text = m['content'] -%}{%- set images = 0 -%}"
    "{%- else -%}"
    "{%- set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') "
    "| join(' ') -%}"
    "{%- set images = m['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}{{- 'USER: ' + '<image>\\n' * images + text + ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + text + '</s>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}")
CHAT_TEMPLATES = {"vicuna_v1": VICUNA_V1_JINJA}


def load_with_image_token(tokenizer_dir: pathlib.Path, image_token_id: int):
  """The tokenizer of ``tokenizer_dir`` with ``<image>`` at ``image_token_id`` (added as a
  special token when it is the next free id, as LLaVA's converter does)."""
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True,
                                      trust_remote_code=False)
  have = tok.get_vocab().get(IMAGE_TOKEN)
  if have is None and len(tok) == image_token_id:
    tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
    have = image_token_id
  if have != image_token_id:
    raise ValueError(
        f"hf-llava export: the tokenizer in {tokenizer_dir} has {IMAGE_TOKEN} at "
        f"{have if have is not None else 'no id'} ({len(tok)} tokens), the model's "
        f"image_token_index is {image_token_id}; export with the tokenizer the model was "
        "converted or trained with")
  return tok


def write_processor(out: pathlib.Path, mc: config_lib.ModelConfig, tokenizer_dir: pathlib.Path,
                    *, pad_to_square: bool = True, template: str = "vicuna_v1") -> None:
  """Writes the LlavaProcessor files for ``mc`` into ``out``."""
  from transformers import LlavaProcessor  # pylint: disable=import-outside-toplevel
  from transformers.models.llava.image_processing_pil_llava import (  # pylint: disable=import-outside-toplevel
      LlavaImageProcessorPil)
  template = templates.canonical_template(template)
  if template not in CHAT_TEMPLATES:
    raise ValueError(f"hf-llava export: no chat template for {template!r}; expected one of "
                     f"{sorted(CHAT_TEMPLATES)}")
  s = mc.vision.image_size
  tower = towers.tower(mc.vision.tower)  # its own normalisation
  images = LlavaImageProcessorPil(
      do_resize=True, size={"shortest_edge": s}, resample=3, do_center_crop=True,
      crop_size={"height": s, "width": s}, do_rescale=True, rescale_factor=1 / 255,
      do_normalize=True, image_mean=list(tower.image_mean), image_std=list(tower.image_std),
      do_convert_rgb=True, do_pad=bool(pad_to_square))
  proc = LlavaProcessor(image_processor=images,
                        tokenizer=load_with_image_token(tokenizer_dir, mc.image_token_id),
                        patch_size=mc.vision.patch_size, vision_feature_select_strategy="default",
                        chat_template=CHAT_TEMPLATES[template], image_token=IMAGE_TOKEN,
                        num_additional_image_tokens=1)
  proc.save_pretrained(str(out))
  # transformers 5 nests the image processor in processor_config.json; older versions (and
  # other tools) read preprocessor_config.json.
  if not (pathlib.Path(out) / "preprocessor_config.json").is_file():
    images.save_pretrained(str(out))
