"""Shared plumbing of the ``python -m acformer_jax.<verb>`` command lines (absl flags).

* :func:`run`: ``app.run`` with quiet logs and ``--config.<field>=None`` meaning None.
* :func:`parse`: the same flag parsing for in-process calls (``verb.main([...])`` in tests).
* :func:`setup_logging`: quiet by default. absl/Orbax/tfds INFO lines are hidden unless
  ``--verbosity`` is given (``--verbosity=0`` shows INFO), JAX's "Unable to initialize
  backend" notes on CPU hosts are dropped, and log lines are written through ``tqdm.write``
  so they never cut through a progress bar; tfds' own progress bars are off.
* :func:`key_flags`: flags defined by helper modules (``distributed.define_flags``) and
  absl's ``--verbosity`` appear in the verb's ``--help``, not only ``--helpfull``.

Flags defined here (:func:`define`) are attributed to the verb that asks for them.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable, Dict, List, Optional, Sequence

from absl import app, flags
from absl import logging as absl_logging

flags.disclaim_key_flags()  # key flags declared from here belong to the calling verb
FLAGS = flags.FLAGS
NONE = "None"


def define(kind: str, name: str, default, help_text: str, **kwargs) -> flags.FlagHolder:
  """``flags.DEFINE_<kind>`` that tolerates a flag of the same name from another verb
  imported into the same process (tests): the later definition replaces the earlier."""
  return getattr(flags, f"DEFINE_{kind}")(name, default, help_text, allow_override=True, **kwargs)


def shared_value(name: str, default):
  """The value of ``--name``, a flag another verb may also define (with another default)
  when both are imported into one process: unset there, ``default`` applies."""
  value = FLAGS[name].value
  return default if value is None else value


def key_flags(*names: str) -> None:
  """Shows ``names`` (already defined elsewhere) in the calling verb's ``--help``."""
  for n in names:
    flags.declare_key_flag(n)


def adopt(module) -> None:
  """Shows every flag ``module`` defines in the calling verb's ``--help``."""
  flags.adopt_module_key_flags(module)


# -- --config.<field>=None -----------------------------------------------------------------
def split_none_overrides(argv: Sequence[str], config_flag: str) -> tuple:
  """``(argv without them, [field, ...])`` for every ``--<config_flag>.<field>=None``."""
  prefix, rest, fields, skip = f"--{config_flag}.", [], [], False
  argv = list(argv)
  for i, a in enumerate(argv):
    if skip:
      skip = False
      continue
    if a.startswith(prefix) and a.endswith("=" + NONE):
      fields.append(a[len(prefix):-len(NONE) - 1])
    elif a.startswith(prefix) and "=" not in a and i + 1 < len(argv) and argv[i + 1] == NONE:
      fields.append(a[len(prefix):])
      skip = True
    else:
      rest.append(a)
  return rest, fields


def set_none(config, fields: Sequence[str], config_flag: str = "config") -> None:
  """Sets each dotted ``field`` of ``config`` to None (it must exist)."""
  for dotted in fields:
    *parents, last = dotted.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise app.UsageError(f"--{config_flag}.{dotted}=None: {config_flag} has no field {p!r}")
      node = node[p]
    if last not in node:
      raise app.UsageError(f"--{config_flag}.{dotted}=None: {config_flag} has no field {dotted!r}")
    with node.ignore_type():
      node[last] = None


def parse(argv: Sequence[str], config_flag: Optional[str] = None) -> List[str]:
  """Parses flags from a full argv (program name first); returns the remaining args."""
  argv, none_fields = (split_none_overrides(argv, config_flag) if config_flag
                       else (list(argv), []))
  saved = sys.argv
  sys.argv = list(argv)  # config_flags reads its overrides from sys.argv
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    raise app.UsageError(str(e)) from None
  finally:
    sys.argv = saved
  if none_fields:
    set_none(FLAGS[config_flag].value, none_fields, config_flag)
  return rest


def parse_in_process(prog: str, argv: Sequence[str], config_flag: Optional[str] = None
                     ) -> List[str]:
  """For ``verb.main([...])`` calls: resets every flag to its default, then parses."""
  FLAGS.unparse_flags()
  return parse([prog] + list(argv), config_flag)


def run(main: Callable[[List[str]], None], config_flag: Optional[str] = None,
        **logging_options) -> None:
  """``app.run(main)`` with :func:`parse` as the flag parser and quiet logs
  (:func:`setup_logging` with ``logging_options``)."""
  def parser(argv):
    try:
      return parse(argv, config_flag)
    except app.UsageError as e:
      print(f"error: {e}\nPass --help to see the flags.", file=sys.stderr)
      sys.exit(2)
  app.run(lambda argv: (setup_logging(**logging_options), main(argv))[1], flags_parser=parser)


# -- logging -------------------------------------------------------------------------------
class _TqdmStream:
  """A stderr that prints above any active tqdm bar."""

  def write(self, text: str) -> None:
    if text.strip():
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      tqdm.write(text.rstrip("\n"), file=sys.stderr)

  def flush(self) -> None:
    sys.stderr.flush()

  def close(self) -> None:  # absl closes its stream at exit; stderr stays open
    pass


class _DropBackendNotes(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "Unable to initialize backend" not in record.getMessage()


_QUIET_LOGGERS: Dict[str, int] = {"absl": logging.WARNING, "orbax": logging.WARNING,
                                  "tensorflow_datasets": logging.WARNING,
                                  "jax._src.xla_bridge": logging.ERROR}


def verbosity_given() -> bool:
  return "verbosity" in FLAGS and FLAGS["verbosity"].present


def setup_logging(package_level: int = logging.INFO, quiet_tfds: bool = False) -> None:
  """Quiet third-party logs unless ``--verbosity`` asks; our own at ``package_level``.
  tfds' progress bars are turned off when tfds is loaded, or with ``quiet_tfds`` (verbs that
  may build a dataset)."""
  logging.getLogger("acformer_jax").setLevel(package_level)
  handler = absl_logging.get_absl_handler()
  handler.python_handler.stream = _TqdmStream()
  backend = logging.getLogger("jax._src.xla_bridge")
  if not any(isinstance(f, _DropBackendNotes) for f in backend.filters):
    backend.addFilter(_DropBackendNotes())
  if verbosity_given():
    return
  absl_logging.set_verbosity(absl_logging.WARNING)
  for name, level in _QUIET_LOGGERS.items():
    logging.getLogger(name).setLevel(level)
  if quiet_tfds or "tensorflow_datasets" in sys.modules:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    tfds.disable_progress_bar()


def show_common_flags() -> None:
  """The calling verb's ``--help`` lists ``--verbosity`` and the multi-process start-up
  flags of ``distributed.define_flags`` (``--local_device_count``, ...) when defined."""
  from acformer_jax import distributed  # pylint: disable=import-outside-toplevel
  key_flags("verbosity")
  adopt(distributed)
