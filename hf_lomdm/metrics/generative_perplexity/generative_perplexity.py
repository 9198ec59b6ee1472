"""`evaluate` metric: generative perplexity of samples under a causal LM judge, with unigram entropy.

import evaluate
from hf_lomdm.metrics import metric_path
metric = evaluate.load(metric_path("generative_perplexity"))
metric.compute(predictions=texts, judge=judge_model, judge_tokenizer=judge_tokenizer)
# or judge="path/to/judge" (loaded with AutoModelForCausalLM; `gguf_file=` for GGUF judges)
"""

from __future__ import annotations

import evaluate

from hf_lomdm.evaluation import generative_perplexity
from hf_lomdm.metrics import text_metric_info

_DESCRIPTION = (
    "Generative perplexity exp(mean judge NLL per token) of generated texts under a causal LM judge, reported "
    "together with the mean per-sample unigram entropy (low gen-PPL with low entropy means repetition)."
)

_INPUTS = (
    "predictions: list of generated texts; judge: causal LM or its path; "
    "judge_tokenizer: its tokenizer (loaded from the path when omitted); gguf_file, batch_size, max_length."
)


class GenerativePerplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return text_metric_info(_DESCRIPTION, _INPUTS)

    def _compute(
        self, predictions, judge=None, judge_tokenizer=None, gguf_file=None, batch_size=8, max_length=None
    ):
        if judge is None:
            raise ValueError("`judge` (a causal LM or a path to one) is required.")
        if isinstance(judge, str):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            judge_tokenizer = judge_tokenizer or AutoTokenizer.from_pretrained(judge, gguf_file=gguf_file)
            judge = AutoModelForCausalLM.from_pretrained(judge, gguf_file=gguf_file).eval()
        result = generative_perplexity(
            list(predictions),
            judge=judge,
            judge_tokenizer=judge_tokenizer,
            batch_size=batch_size,
            max_length=max_length,
        )
        return result.to_dict()
