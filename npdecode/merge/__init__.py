"""The merge engine: MergeKit-style YAML recipes over any Hugging Face checkpoint, streamed.

Modules, in pipeline order:

- ``config``: the frozen recipe schema (``load_recipe``); ``parameters``: filters, gradients.
- ``tensor_io``: lazy readers (safetensors through a memory map, ``.bin`` with
  ``mmap=True, weights_only=True``), local directories or hub ids; ``lora``: ``model+lora``.
- ``architecture``: layer stacks, modules, tied weights and layer counts, by tensor name.
- ``tokenizer``: union / base / per-model vocabularies and vocabulary-axis alignment.
- ``registry`` + ``methods/``: the merge methods, one module each.
- ``plan``: every output tensor, validated before anything is written; ``executor``: one
  tensor at a time, bounded memory; ``writer``: streamed shards, index, config, tokenizer, card.
- ``api``: ``merge_models(recipe, out)``, ``merge_state_dicts(recipe, state_dicts)``;
  ``cli``: ``npdecode merge RECIPE OUT``.

Nothing heavy is imported here.
"""
