"""`evaluate` metric: per-token NELBO and PPL bound of a LoMDM checkpoint on texts (L_velocity included).

import evaluate
from hf_lomdm.metrics import metric_path
metric = evaluate.load(metric_path("nelbo_perplexity"))
metric.compute(predictions=texts, model=model, tokenizer=tokenizer, time_samples=8)
# or model="path/to/checkpoint" (tokenizer loaded from the same folder)
"""

from __future__ import annotations

import evaluate

from hf_lomdm.evaluation import nelbo_perplexity
from hf_lomdm.metrics import text_metric_info

_DESCRIPTION = (
    "Importance-sampled NELBO of a masked diffusion LM over all of t in (0, 1] (an upper bound on the negative "
    "log-likelihood in expectation), reported per token with its PPL bound exp(NELBO) and Monte-Carlo standard error."
)

_INPUTS = (
    "predictions: list of texts to score; model: LoMDM model or checkpoint path; "
    "tokenizer; time_samples; batch_size; include_uniform_eps (MDLM's estimate, not a bound); seed."
)


class NelboPerplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return text_metric_info(_DESCRIPTION, _INPUTS)

    def _compute(
        self,
        predictions,
        model=None,
        tokenizer=None,
        time_samples=8,
        batch_size=32,
        include_uniform_eps=False,
        seed=0,
    ):
        import torch

        if model is None:
            raise ValueError("`model` (a LoMDM model or a checkpoint path) is required.")
        if isinstance(model, str):
            from transformers import AutoModelForMaskedLM, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModelForMaskedLM.from_pretrained(model)
        result = nelbo_perplexity(
            model,
            list(predictions),
            tokenizer=tokenizer,
            time_samples=time_samples,
            batch_size=batch_size,
            include_uniform_eps=include_uniform_eps,
            generator=torch.Generator().manual_seed(seed),
        )
        return result.to_dict()
