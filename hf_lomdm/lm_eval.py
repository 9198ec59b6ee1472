"""lm-evaluation-harness adapter: `--model lomdm` (optional extra `lm-eval`).

    python -m hf_lomdm.lm_eval --model lomdm --model_args pretrained=PATH,mc_samples=32 --tasks TASK

- `loglikelihood`: a Monte-Carlo ELBO of the continuation given the context: the context is never
  noised (labels -100), the continuation is scored by the importance-sampled NELBO with `mc_samples`
  stratified times (a lower bound on log p(continuation | context) in expectation). `is_greedy` is True
  iff every continuation token is the argmax of one denoiser pass with the whole continuation masked.
- `loglikelihood_rolling`: the document is cut into lm-eval's disjoint rolling windows; each window's new
  tokens are scored by their NELBO given the window's context; the sum is a bound over the whole document.
- `generate_until`: batched `model.generate` with the checkpoint's generation config (kwargs override),
  cut at the first stop string.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
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
        max_length: longest sequence scored (defaults to the model's max positions); contexts are cut from the left.
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
        return torch.autocast(self._device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def _elbo(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """MC ELBO of each continuation given its context; -mean over `mc_samples` NELBO samples."""
        rows = []
        for context, continuation in pairs:
            context = (self.prefix + context)[-(self.max_length - len(continuation)):]
            ids = torch.tensor(context + continuation)
            labels = ids.clone()
            labels[: len(context)] = -100
            rows.append({"input_ids": ids, "labels": labels})
        with torch.no_grad(), self._autocast():
            samples, _ = sequence_nelbo_samples(
                self.model, rows, time_samples=self.mc_samples, batch_size=self.batch_size,
                time_sampling="importance", uniform_weight=0.5, generator=self.generator,
            )
        return (-samples.mean(1)).tolist()

    @torch.no_grad()
    def _is_greedy(self, context: list[int], continuation: list[int]) -> bool:
        context = (self.prefix + context)[-(self.max_length - len(continuation)):]
        ids = torch.tensor([context + [self.model.config.mask_token_id] * len(continuation)], device=self._device)
        with self._autocast():
            log_probs = self.model(ids, output_exponents=False).logits[0, len(context):]
        return bool((log_probs.argmax(-1).cpu() == torch.tensor(continuation)).all())

    # -- lm-eval API ---------------------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            spaces = len(context) - len(context.rstrip())
            if spaces:  # word-boundary spaces belong to the continuation
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            continuation_ids = self._encode(continuation)
            if not continuation_ids or len(continuation_ids) >= self.max_length:
                raise ValueError(f"continuation of {len(continuation_ids)} tokens cannot be scored within "
                                 f"max_length={self.max_length}.")
            pairs.append((self._encode(context) if context else [], continuation_ids))
        results = []
        for start in range(0, len(pairs), max(1, self.batch_size // self.mc_samples)):
            chunk = pairs[start : start + max(1, self.batch_size // self.mc_samples)]
            for (context, continuation), ll in zip(chunk, self._elbo(chunk)):
                results.append((ll, self._is_greedy(context, continuation)))
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args
            windows = [
                make_disjoint_window(window)
                for window in get_rolling_token_windows(
                    token_list=self._encode(text), prefix_token=self.prefix[0], max_seq_len=self.max_length - 1,
                    context_len=1,
                )
            ]
            results.append(float(sum(self._elbo(windows))))
        return results

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
            gen_kwargs.pop("do_sample", None)  # sampling settings come from the generation config
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                contexts = [(self.prefix + self._encode(requests[i].args[0]))[-(self.max_length - max_new):]
                            for i in chunk]
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
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        with self._autocast():
            out = self.model.generate(
                input_ids.to(self._device), attention_mask=attention_mask.to(self._device), max_new_tokens=max_new,
                generator=self.generator, return_dict_in_generate=True, **{**self.generation_kwargs, **gen_kwargs},
            )
        return [self.tokenizer.decode(row[width:].tolist(), skip_special_tokens=True) for row in out.sequences.cpu()]

if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
