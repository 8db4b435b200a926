"""Parameters on disk: the one owner of the params-directory layout, its atomic save, its
restore (whole tree or a subtree, onto any mesh) and the tokenizer lookup.

Layout of a params directory (written by :func:`save`; read by ``generate``, ``evaluate``,
``analyze``, ``export``, ``init.params_from=orbax:`` and ``init.from_pretrained``)::

  DIR/model_config.json         config.model_config_to_dict(ModelConfig)
  DIR/params/                   Orbax PyTree item: the unboxed params {vision, connector, llm}
  DIR/params_checksums.json     per-array checksums (acformer_jax.integrity), verified on restore
  DIR/tokenizer/                optional tokenizer files (tokenizer.model / tokenizer.json + configs)
  DIR/<metadata>.json           written by the caller inside the same atomic commit
                                (conversion.json, experiment_config.json)

Files: ``layout`` (names, config, tokenizer lookup), ``saving`` (atomic write),
``restoring`` (abstract targets and Orbax restore). Spec: ``docs/jax_practices.md`` items 3, 6, 9.1.
"""
from acformer_jax.params_store.layout import (CONFIG_FILE, PARAMS_DIR, TOKENIZER_DIR,  # noqa: F401
                                              TOKENIZER_FILES, copy_tokenizer, find_tokenizer,
                                              is_checkpoint, is_hf_llava, read_model_config,
                                              write_model_config)
from acformer_jax.params_store.restoring import (abstract_params, abstract_tree,  # noqa: F401
                                                 read_checksums, resolve_params_source, restore,
                                                 restore_all, sharded_abstract, stored_shapes,
                                                 target_tree)
from acformer_jax.params_store.saving import (NonFiniteError, atomic_directory, barrier,  # noqa: F401
                                              check_finite, commit_directory, save, save_params,
                                              temp_dir_for, write)
