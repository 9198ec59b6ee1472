"""lm-evaluation-harness adapter: `--model lomdm` (optional extra `lm-eval`).

    python -m hf_lomdm.lm_eval_adapter --model lomdm --model_args pretrained=PATH,mc_samples=32 --tasks TASK

- `loglikelihood`: a Monte-Carlo ELBO of the continuation given the context: the context is never
  noised (labels -100), the continuation is scored by the importance-sampled NELBO with `mc_samples`
  stratified times (a lower bound on log p(continuation | context) in expectation). `is_greedy` is True
  iff every continuation token is the argmax of one denoiser pass with its window masked.
- Long requests never abort a run. A continuation longer than `max_length - 1` tokens is split into the
  fewest near-equal windows of at most `max_length - 1` tokens; each window is scored given the clean
  tokens just before it (BOS, context, earlier windows) that fit in `max_length`, and its ELBO is a bound
  on that window's conditional log-likelihood. By the chain rule, log p(c | x) = sum_w log p(c_w | x, c_<w),
  the sum over windows bounds the whole continuation (for the model read with this sliding context, as any
  fixed-window LM is). A request that fits is one window, scored exactly as before. A context longer
  than what fits keeps its last tokens (the BOS prefix is then dropped, as mid-document in training).
- `loglikelihood_rolling`: the same windowing with an empty context: the document is scored window by
  window after BOS, each window with as much of the preceding document as fits; the sum is a bound over
  the whole document.
- `generate_until`: batched `model.generate` with the checkpoint's generation config (kwargs override),
  cut at the first stop string. `max_gen_toks` is capped at `max_length - 1` (with a warning) and the
  context keeps its last tokens, so a long request is shortened, never fatal.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from transformers import AutoModelForMaskedLM, AutoTokenizer
from transformers.utils import logging

from .evaluation import sequence_nelbo_samples

__all__ = ["LoMDMEvalHarness"]

logger = logging.get_logger(__name__)


@register_model("lomdm")
class LoMDMEvalHarness(LM):
    """lm-eval `LM` for LoMDM checkpoints.

    Args:
        pretrained: checkpoint path or Hub id (with its tokenizer).
        mc_samples: time samples per request for the ELBO (stratified, importance-sampled).
        batch_size: rows per forward pass (requests x samples for likelihoods, requests for generation).
        max_length: longest sequence scored (defaults to the model's max positions); contexts are cut from the
            left, longer continuations are scored window by window (see the module docstring).
        device, dtype: where and how to run (`float32` or `bfloat16` autocast).
        seed: seed of the Monte-Carlo estimates and of sampling.
        trust_remote_code: load the checkpoint's own code.
        generation kwargs (e.g. `steps`, `order`, `temperature`): override the generation config.
    """

    def __init__(
        self,
        pretrained: str,
        mc_samples: int = 32,
        batch_size: int | str = 32,
        max_length: int | None = None,
        device: str | None = None,
        dtype: str = "float32",
        seed: int = 1234,
        trust_remote_code: bool = False,
        **generation_kwargs,
    ):
        super().__init__()
        if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
            if device is not None:  # lm-eval's CLI passes device="cuda" by default
                logger.warning(f"device {device!r} is not available; running on CPU.")
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        self.model = AutoModelForMaskedLM.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        self.model.to(device).eval()
        self.mc_samples = int(mc_samples)
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 32
        self.max_length = int(max_length or self.model.config.max_position_embeddings)
        if self.max_length < 2:  # a window needs one token of context and one to score
            raise ValueError(f"`max_length` must be >= 2, got {self.max_length}.")
        self.autocast_dtype = {"float32": None, "bfloat16": torch.bfloat16}[dtype]
        self.generator = torch.Generator().manual_seed(int(seed))
        self.generation_kwargs = generation_kwargs
        self._device = torch.device(device)
        bos = self.tokenizer.bos_token_id
        self.prefix = [bos] if bos is not None else [self.tokenizer.eos_token_id]

    # -- helpers -------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _autocast(self):
        return torch.autocast(
            self._device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def _windows(self, context: list[int], continuation: list[int]) -> list[tuple[list[int], list[int]]]:
        """(context, window) pairs that cover `continuation` in order, each token exactly once.

        The fewest windows of at most `max_length - 1` tokens, sizes differing by at most one (so that every
        window keeps a fair share of context); each window's context is the last tokens of BOS + context +
        the earlier windows, as many as fit with it in `max_length`. A request that fits is one window.
        """
        if not continuation:
            return []
        tokens = self.prefix + context + continuation
        start = len(tokens) - len(continuation)
        num_windows = -(-len(continuation) // (self.max_length - 1))  # ceil
        bounds = [start + k * len(continuation) // num_windows for k in range(num_windows + 1)]
        return [
            (tokens[max(0, end - self.max_length) : begin], tokens[begin:end])
            for begin, end in pairwise(bounds)
        ]

    def _elbo(self, windows: list[tuple[list[int], list[int]]]) -> list[float]:
        """MC ELBO of each window given its (fitting) context; -mean over `mc_samples` NELBO samples."""
        rows = []
        for context, window in windows:
            ids = torch.tensor(context + window)
            labels = ids.clone()
            labels[: len(context)] = -100
            rows.append({"input_ids": ids, "labels": labels})
        with torch.no_grad(), self._autocast():
            samples, _ = sequence_nelbo_samples(
                self.model,
                rows,
                time_samples=self.mc_samples,
                batch_size=self.batch_size,
                time_sampling="importance",
                generator=self.generator,
            )
        return (-samples.mean(1)).tolist()

    def _windowed_elbo(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """MC ELBO of each whole continuation: the sum of its windows' ELBOs (0 for an empty continuation)."""
        owners, windows = [], []
        for index, (context, continuation) in enumerate(pairs):
            for window in self._windows(context, continuation):
                owners.append(index)
                windows.append(window)
        totals = [0.0] * len(pairs)
        for owner, elbo in zip(owners, self._elbo(windows) if windows else []):
            totals[owner] += elbo
        return totals

    @torch.no_grad()
    def _is_greedy(self, context: list[int], continuation: list[int]) -> bool:
        """True iff every window's tokens are the argmax of one denoiser pass with that window masked."""
        for window_context, window in self._windows(context, continuation):
            ids = torch.tensor([window_context + [self.model.config.mask_token_id] * len(window)])
            with self._autocast():
                log_probs = self.model(ids.to(self._device), output_exponents=False).logits  # (1, L, V)
            if not bool((log_probs[0, len(window_context) :].argmax(-1).cpu() == torch.tensor(window)).all()):
                return False
        return True

    # -- lm-eval API ---------------------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            spaces = len(context) - len(context.rstrip())
            if spaces:  # word-boundary spaces belong to the continuation
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            pairs.append((self._encode(context) if context else [], self._encode(continuation)))
        return [(elbo, self._is_greedy(*pair)) for elbo, pair in zip(self._windowed_elbo(pairs), pairs)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        return self._windowed_elbo([([], self._encode(request.args[0])) for request in requests])

    def generate_until(self, requests) -> list[str]:
        """Requests with identical generation kwargs are generated together, left-padded, `batch_size` at a time."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        outputs: list[str] = [""] * len(requests)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1])
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", 64))
            if max_new >= self.max_length:  # the sequence must fit, with at least one context token
                logger.warning(
                    f"max_gen_toks={max_new} >= max_length={self.max_length}; "
                    f"generating {self.max_length - 1} tokens."
                )
                max_new = self.max_length - 1
            gen_kwargs.pop("do_sample", None)  # sampling settings come from the generation config
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                contexts = [
                    (self.prefix + self._encode(requests[i].args[0]))[-(self.max_length - max_new) :]
                    for i in chunk
                ]
                for i, text in zip(chunk, self._generate(contexts, max_new, gen_kwargs)):
                    for stop in until:
                        text = text.split(stop)[0]
                    outputs[i] = text
        return outputs

    @torch.no_grad()
    def _generate(self, contexts: list[list[int]], max_new: int, gen_kwargs: dict) -> list[str]:
        width = max(len(ids) for ids in contexts)
        pad_id = self.tokenizer.pad_token_id
        input_ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(contexts):  # left padding
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        with self._autocast():
            out = self.model.generate(
                input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                max_new_tokens=max_new,
                generator=self.generator,
                return_dict_in_generate=True,
                **{**self.generation_kwargs, **gen_kwargs},
            )
        return [
            self.tokenizer.decode(row[width:].tolist(), skip_special_tokens=True)
            for row in out.sequences.cpu()
        ]


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
