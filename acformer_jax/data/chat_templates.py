"""Chat templates of the LLM families beyond Vicuna: ``llama3``, ``chatml`` (Qwen2),
``mistral_instruct`` and ``gemma`` (the family defaults in ``models/families/``).

Each renders validated ``[(role, text), ...]`` turns (``templates.normalize_turns``) to a
prompt string with the special tokens written out (the tokenizer parses them; no BOS
is added by the encoder) plus the supervised character spans, as
``templates.build_prompt`` does for ``vicuna_v1``.

Supervision follows LLaVA-NeXT's conversation code (read for facts):

* ``llama3`` and ``chatml``: the system turn and every user turn are masked, every
  assistant turn is supervised whole (its role header and its end token included), and
  the template's structural tokens are supervised wherever they occur
  (:attr:`ChatTemplate.unmask`: ``<|begin_of_text|>``, ``<|start_header_id|>``,
  ``<|end_header_id|>``, ``<|eot_id|>`` for llama3; ``<|im_start|>``, ``<|im_end|>``,
  ``"\\n"`` (id 198) for chatml), matched by token id. LLaVA-NeXT also lists ``"\\n\\n"``
  for llama3 but looks it up as a vocabulary token string, which no byte-level token
  spells, so it is never unmasked there; neither is it here.
* ``mistral_instruct`` and ``gemma``: each answer plus its end token (``</s>``,
  ``<end_of_turn>``), as LLaVA-1.5 does for ``vicuna_v1``.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

LLAMA3_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand "
                 "the visual content that the user provides, and assist the user with a "
                 "variety of tasks using natural language.")
CHATML_SYSTEM = "You are a helpful assistant."


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """One template. ``start``: text before the first turn; ``turn(role, text)``: one turn
  (roles ``system``/``user``/``assistant``); ``answer_prompt``: what follows the last
  user turn in a generation prompt; ``whole_turn``: supervise the assistant turn from its
  header on (else from the answer text to the end token ``end``); ``unmask``: token
  strings supervised everywhere; ``stop``: the end-of-answer token string."""
  name: str
  start: str
  turn_fmt: Dict[str, Tuple[str, str]]   # role -> (head, tail) around the text
  answer_prompt: str
  whole_turn: bool
  end: str
  unmask: Tuple[str, ...] = ()
  strip: bool = False

  def turn(self, role: str, text: str) -> Tuple[str, int, int]:
    """``(rendered turn, start, end)`` of the supervised span inside it (assistant)."""
    head, tail = self.turn_fmt[role]
    text = text.strip() if self.strip else text
    out = head + text + tail
    if self.whole_turn:
      return out, 0, len(out)
    a = len(head.rstrip(" "))  # a space before the answer belongs to its first word
    return out, a, len(head) + len(text) + len(self.end)


def _llama3_head(role):
  return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


CHAT_TEMPLATES: Dict[str, ChatTemplate] = {
    "llama3": ChatTemplate(
        "llama3", "<|begin_of_text|>" + _llama3_head("system") + LLAMA3_SYSTEM + "<|eot_id|>",
        {r: (_llama3_head(r), "<|eot_id|>") for r in ("user", "assistant")},
        _llama3_head("assistant"), True, "<|eot_id|>",
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        strip=True),
    "chatml": ChatTemplate(
        "chatml", f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n",
        {r: (f"<|im_start|>{r}\n", "<|im_end|>\n") for r in ("user", "assistant")},
        "<|im_start|>assistant\n", True, "<|im_end|>", ("\n", "<|im_start|>", "<|im_end|>")),
    "mistral_instruct": ChatTemplate(
        "mistral_instruct", "<s>", {"user": ("[INST] ", " [/INST]"), "assistant": (" ", "</s>")},
        "", False, "</s>", strip=True),
    "gemma": ChatTemplate(
        "gemma", "<bos>", {"user": ("<start_of_turn>user\n", "<end_of_turn>\n"),
                           "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")},
        "<start_of_turn>model\n", False, "<end_of_turn>"),
}


def render(turns: Sequence[Tuple[str, str]], name: str) -> Tuple[str, List[Tuple[int, int]]]:
  """``(prompt, supervised character spans)`` of alternating human/gpt turns."""
  t = CHAT_TEMPLATES[name]
  parts, spans, pos = [t.start], [], len(t.start)
  for i, (_, value) in enumerate(turns):
    role = "user" if i % 2 == 0 else "assistant"
    piece, a, b = t.turn(role, value)
    if role == "assistant":
      spans.append((pos + a, pos + b))
    parts.append(piece)
    pos += len(piece)
  return "".join(parts), spans


def generation_prompt(user: str, name: str) -> str:
  """The prompt of one user message, ending where the assistant's answer starts."""
  t = CHAT_TEMPLATES[name]
  return t.start + t.turn("user", user)[0] + t.answer_prompt


def unmask_ids(encoder, name: str) -> Tuple[int, ...]:
  """Ids of the template's always-supervised tokens (each must be one token)."""
  out = []
  for s in CHAT_TEMPLATES[name].unmask:
    ids = encoder.encode(s, False)
    if len(ids) != 1:
      raise ValueError(f"template {name!r}: {s!r} is {len(ids)} tokens with this tokenizer; "
                       "expected one (is this the family's tokenizer?)")
    out.append(ids[0])
  return tuple(out)
