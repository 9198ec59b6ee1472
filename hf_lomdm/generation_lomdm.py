"""`model.generate` for LoMDM: the loop that runs the backbone and hands its output to the sampler.

Hub-facing: this file ships inside checkpoints (trust_remote_code), so it imports only torch, transformers and
its `*_lomdm.py` siblings, through single-dot imports (`from .x import y`): transformers copies exactly those
into a saved folder.

Shapes: B = batch (after `num_return_sequences`), L = canvas length (left-padded prompt + new tokens),
V = vocabulary, R = rows re-run in one pass, W = columns a cached pass recomputes.

`LoMDMGenerationMixin.generate` resolves the settings (`generation_config_lomdm.LoMDMGenerationConfig`),
builds a `sampler_lomdm.LoMDMSampler` (which owns the canvas and the reveal rule of `order`) and, block by
block, runs one backbone pass on the rows that need it and lets the sampler reveal tokens. When a row's canvas
has not changed since its last pass and the backbone is time-independent, that pass is reused; with
`cache_implementation` a block KV cache (`cache_lomdm.LoMDMBlockCache`) lets the later passes of a block
recompute only part of the canvas. `nfe` counts the passes of each row and `computed_positions` what they
computed. Streaming and the history of canvases belong to the loop, not to the sampler.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.streamers import BaseStreamer
from transformers.utils import ModelOutput, logging

from .cache_lomdm import LoMDMBlockCache, cache_window
from .configuration_lomdm import check_token_id_tensor
from .generation_config_lomdm import DREAM_ALGORITHMS, SETTING_ALIASES, SPECIAL_TOKENS, LoMDMGenerationConfig
from .sampler_lomdm import LoMDMSampler

logger = logging.get_logger(__name__)


@dataclass
class LoMDMGenerateOutput(ModelOutput):
    """
    Args:
        sequences (`torch.LongTensor` of shape `(B, L)`): Prompt and generated tokens; generated positions
            after the first EOS of a row hold the pad token.
        reveal_pass (`torch.LongTensor` of shape `(B, L)`, *optional*): Index (0-based, per row) of the backbone
            pass whose prediction revealed each position; -1 for prompt and padding tokens and for positions a
            stopped row never revealed. Returned when `output_order=True`; also readable as `order` (the
            generation order it records), the name it had before.
        history (`tuple[torch.LongTensor]`, *optional*): The canvas `(B, L)` after every step that revealed
            tokens. Returned when `output_history=True`.
        nfe (`torch.LongTensor` of shape `(B,)`): Backbone passes each row took, whole-canvas or cached.
        computed_positions (`torch.LongTensor` of shape `(B,)`): Positions the backbone computed for each row
            over those passes: L per whole-canvas pass, the window's width per cached pass (`cache_lomdm`). The
            call's cost in whole-canvas passes is `computed_positions / L`, its positions per pass
            `computed_positions / nfe`.
    """

    sequences: torch.LongTensor | None = None
    reveal_pass: torch.LongTensor | None = None
    history: tuple[torch.LongTensor, ...] | None = None
    nfe: torch.LongTensor | None = None
    computed_positions: torch.LongTensor | None = None

    @property
    def order(self) -> torch.LongTensor | None:
        """Alias of `reveal_pass` (the field's earlier name; `order` is also the name of the reveal strategy)."""
        return self.reveal_pass


class LoMDMGenerationMixin:
    """`generate` for [`LoMDMForMaskedDiffusion`]. The class name contains `GenerationMixin`, which
    is how transformers recognises a generative model and builds / loads its `generation_config`."""

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: BaseStreamer | None = None,
        **kwargs: Any,
    ) -> LoMDMGenerateOutput | torch.LongTensor:
        r"""
        Fill the mask tokens of a canvas: prompts get `max_new_tokens` masks appended, mask tokens already in
        the input are filled in place (infilling), every other token is kept.

        Args:
            inputs (`torch.LongTensor` of shape `(B, L_in)`, *optional*): Left-padded prompts (may contain
                mask tokens). Defaults to one BOS token (or an empty prompt without BOS). Also accepted as
                `input_ids=`.
            generation_config ([`LoMDMGenerationConfig`], *optional*): Replaces `model.generation_config`.
            logits_processor (`LogitsProcessorList`, *optional*): Applied to log p_θ `(K, V)` of the positions
                being sampled, before temperature / top-k / top-p.
            stopping_criteria (`StoppingCriteriaList`, *optional*): Checked after each block on the canvas up
                to the end of that block; a row it stops gets no further blocks (they become padding).
            streamer (`BaseStreamer`, *optional*): Batch size 1. Receives the prompt, then the tokens in
                reading order as soon as every position before them is known (each revealed token once), up
                to the first EOS.
            kwargs: `attention_mask` `(B, L_in)`, `generator` (a `torch.Generator` or one per output row),
                `allowed_tokens` (bool `(L, V)` or `(B, L, V)` over the output canvas, L = prompt + new tokens:
                the tokens each position may take; the softmax spans only them, so constrained infilling
                never draws another token), any [`LoMDMGenerationConfig`] field (transformers' `do_sample`
                included) and Dream's / LLaDA's argument names (`generation_config_lomdm.SETTING_ALIASES`);
                anything else raises a `ValueError`. Random draws count from each row's first real token, so
                left padding changes no row; with one generator per row, row b equals its prompt run alone with
                generator b (see [`LoMDMSampler`]).

        Returns:
            `torch.LongTensor` `(B, L)` or, with `return_dict_in_generate=True`, a [`LoMDMGenerateOutput`].

        Steps (keep in sync with the body):
            1. Resolve the settings (kwargs > `generation_config` > `model.generation_config`) and the inputs.
            2. Build the sampler (it owns the canvas and picks the reveal rule of `order`) and the stream.
            3. For each block, until it has no mask left: (a) one backbone pass on the rows that need it (all
               rows without `use_cache`; with it, rows whose canvas changed); with `cache_implementation`, the
               block's first pass runs on the whole canvas and fills a block KV cache, the later ones recompute
               only the cache's window (`cache_lomdm`); (b) `sampler.step` takes that pass and reveals tokens,
               (c) stream and record history. After the block (`sampler.end_block`), rows that produced EOS or
               meet `stopping_criteria` stop.
            4. Finalize (padding after EOS) and build the output.
        """
        # 1. Settings and inputs.
        generation_config, model_kwargs = self._prepare_generation_config(generation_config, kwargs)
        input_ids, attention_mask = self._prepare_generation_inputs(inputs, model_kwargs, generation_config)
        num_new_tokens = self._num_new_tokens(
            input_ids, attention_mask, generation_config, self.config.max_position_embeddings
        )
        eos_token_id, pad_token_id = self._special_token_ids(generation_config, stopping_criteria)
        if streamer is not None and input_ids.shape[0] != 1:
            raise ValueError(f"streamers take one sequence; got {input_ids.shape[0]} output rows.")

        # 2. Canvas and sampler.
        sampler, allowed_tokens = self._prepare_sampler(
            generation_config, logits_processor, model_kwargs, input_ids, attention_mask, num_new_tokens
        )
        reuse_passes = generation_config.use_cache and not self.is_time_conditioned
        cache_implementation = generation_config.cache_implementation if generation_config.use_cache else None
        stream = None if streamer is None else _TokenStream(streamer, sampler, eos_token_id)
        history: list[torch.LongTensor] = []

        # 3. Denoise block by block.
        for block in range(sampler.num_blocks):
            sampler.begin_block(block)
            cache = None  # a block KV cache serves the passes of one block
            while sampler.has_masked():
                rows = sampler.rows_to_denoise(reuse_passes)  # (R,)
                if rows.numel() and cache is None and cache_implementation is not None:
                    window = cache_window(
                        cache_implementation, sampler.block, sampler.canvas.shape[1], self.config.shift
                    )
                    cache = LoMDMBlockCache(window, rows)
                revealed = self._step(sampler, rows, allowed_tokens, cache)  # (B, L)
                if stream is not None:
                    stream.put_known(sampler.canvas)
                if generation_config.output_history and bool(revealed.any()):
                    history.append(sampler.canvas.clone())
            sampler.end_block(eos_token_id, stopping_criteria)

        # 4. Output.
        sequences = sampler.finalize(eos_token_id, pad_token_id)
        if stream is not None:
            stream.end()
        if not generation_config.return_dict_in_generate:
            return sequences
        return LoMDMGenerateOutput(
            sequences=sequences,
            reveal_pass=sampler.reveal_pass if generation_config.output_order else None,
            history=tuple(history) if generation_config.output_history else None,
            nfe=sampler.nfe,
            computed_positions=sampler.computed_positions,
        )

    def diffusion_generate(
        self,
        inputs: torch.LongTensor | None = None,
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> LoMDMGenerateOutput | torch.LongTensor:
        """`generate` under Dream's name. Dream's arguments are accepted (by `generate` too): `alg` in
        `DREAM_ALGORITHMS` ('origin', 'maskgit_plus', 'topk_margin', 'entropy') selects the order, `alg_temp` may
        only be None / 0 (see `generation_config_lomdm.SETTING_ALIASES`); `steps`, `max_new_tokens`, `max_length`,
        `temperature`, `top_p`, `top_k`, `eps`, `output_history`, `return_dict_in_generate` and the token ids keep
        their meaning."""
        return self.generate(inputs, generation_config, **kwargs)

    def adjust_generation_fn(
        self,
        generation_config: GenerationConfig | None,
        from_auto_class: bool,
        from_pipeline: str | None,
        pretrained_model_name_or_path: str | None,
        cache_dir: str | None = None,
        force_download: bool = False,
        proxies: dict[str, str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str | None = None,
        subfolder: str = "",
        **kwargs: Any,
    ) -> None:
        """Called by `from_pretrained`: load `generation_config.json` as `generation_config_class`.

        transformers' own version loads a plain `GenerationConfig`; the other `from_pretrained` kwargs are not
        generation settings and are not forwarded (the config would reject them).
        """
        if generation_config is not None:
            self.generation_config = (
                generation_config
                if isinstance(generation_config, self.generation_config_class)
                else self.generation_config_class(**generation_config.to_diff_dict())
            )
            return
        if pretrained_model_name_or_path is None:
            return
        try:
            self.generation_config = self.generation_config_class.from_pretrained(
                pretrained_model_name_or_path,
                cache_dir=cache_dir,
                force_download=force_download,
                proxies=proxies,
                local_files_only=local_files_only,
                token=token,
                revision=revision or "main",
                subfolder=subfolder,
                _from_auto=from_auto_class,
                _from_pipeline=from_pipeline,
            )
        except OSError:
            logger.info("No generation_config.json found; keeping the defaults built from the model config.")

    # -- helpers of `generate` -------------------------------------------------------------------------------

    def _prepare_generation_config(
        self, generation_config: GenerationConfig | None, kwargs: dict[str, Any]
    ) -> tuple[LoMDMGenerationConfig, dict[str, Any]]:
        """kwargs override the config; special token ids left unset come from the model config."""
        base = self.generation_config if generation_config is None else generation_config
        if isinstance(base, LoMDMGenerationConfig):
            config = copy.deepcopy(base)
        else:  # e.g. a plain GenerationConfig: keep its non-default fields, which must all be LoMDM fields
            config = LoMDMGenerationConfig(**base.to_diff_dict())
        kwargs = dict(kwargs)
        model_kwargs = {
            name: kwargs.pop(name)
            for name in ("input_ids", "attention_mask", "generator", "allowed_tokens")
            if name in kwargs
        }
        unknown = config.update(**kwargs)
        if unknown:
            raise ValueError(
                f"`generate` got unknown arguments {sorted(unknown)}; it takes `input_ids`, "
                f"`attention_mask`, `generator`, `allowed_tokens`, the generation settings {config.field_names} "
                f"and the other samplers' names {sorted(SETTING_ALIASES)}."
            )
        for name in SPECIAL_TOKENS:
            if getattr(config, name) is None:
                setattr(config, name, getattr(self.config, name, None))
        if config.mask_token_id != self.config.mask_token_id:
            raise ValueError(
                f"`mask_token_id` ({config.mask_token_id}) differs from the model's "
                f"({self.config.mask_token_id})."
            )
        config.validate()
        return config, model_kwargs

    def _prepare_generation_inputs(
        self, inputs: torch.LongTensor | None, model_kwargs: dict[str, Any], config: LoMDMGenerationConfig
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Validated `(B, L_in)` ids and attention mask, repeated `num_return_sequences` times."""
        if inputs is not None and "input_ids" in model_kwargs:
            raise ValueError("pass the prompt either as `inputs` or as `input_ids`, not both.")
        input_ids = model_kwargs.get("input_ids", inputs)
        if input_ids is None:
            prompt = [] if config.bos_token_id is None else [config.bos_token_id]
            input_ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        check_token_id_tensor(input_ids, "inputs")
        attention_mask = model_kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of the inputs {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}."
            )
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("`attention_mask` must hold only 0 and 1.")
        attention_mask = attention_mask.to(input_ids.dtype)
        if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise ValueError(
                "`generate` needs left padding (new tokens are appended on the right); set "
                "`tokenizer.padding_side = 'left'`."
            )
        repeats = config.num_return_sequences
        return input_ids.repeat_interleave(repeats, dim=0), attention_mask.repeat_interleave(repeats, dim=0)

    @staticmethod
    def _num_new_tokens(
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        config: LoMDMGenerationConfig,
        max_positions: int,
    ) -> int:
        """Masks to append; raises when the prompt or the canvas does not fit in `max_positions`."""
        # Checked first: a prompt past the limit would otherwise surface as "nothing to generate" (max_length
        # below the prompt) or as a backbone error on the padded canvas.
        prompt_length = int(attention_mask.sum(-1).max()) if input_ids.numel() else 0
        if prompt_length > max_positions:
            raise ValueError(
                f"the prompt has {prompt_length} tokens, more than the model accepts "
                f"(max_position_embeddings={max_positions}); shorten it."
            )
        if config.max_new_tokens is not None:
            num_new_tokens = config.max_new_tokens
        elif config.max_length is not None:
            num_new_tokens = max(config.max_length - input_ids.shape[1], 0)
        else:
            num_new_tokens = 0
        has_infill = bool(((input_ids == config.mask_token_id) & attention_mask.bool()).any())
        if num_new_tokens == 0 and not has_infill:
            raise ValueError(
                "nothing to generate: set `max_new_tokens` (or `max_length`), or put mask tokens "
                f"(id {config.mask_token_id}) in the input to infill them."
            )
        if input_ids.shape[1] + num_new_tokens > max_positions:
            raise ValueError(
                f"the prompt ({input_ids.shape[1]} columns, left padding included) plus {num_new_tokens} new "
                f"tokens is {input_ids.shape[1] + num_new_tokens} positions, more than the model accepts "
                f"(max_position_embeddings={max_positions}); lower `max_new_tokens` / `max_length`."
            )
        return num_new_tokens

    @staticmethod
    def _special_token_ids(
        config: LoMDMGenerationConfig, stopping_criteria: StoppingCriteriaList | None
    ) -> tuple[list[int] | None, int | None]:
        """EOS ids as a list (`None` when there are none) and the pad id (default: the first EOS)."""
        eos_token_id = config.eos_token_id  # an id, a list of ids, or [] / None (no EOS)
        eos_token_id = [eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or None)
        pad_token_id = config.pad_token_id
        if pad_token_id is None and eos_token_id is not None:
            pad_token_id = eos_token_id[0]
        if stopping_criteria and pad_token_id is None:
            raise ValueError(
                "`stopping_criteria` can stop rows early, which needs a `pad_token_id` or `eos_token_id`."
            )
        return eos_token_id, pad_token_id

    @staticmethod
    def _logits_processor(
        config: LoMDMGenerationConfig, logits_processor: LogitsProcessorList | None
    ) -> LogitsProcessorList:
        """User processors first, then temperature, top-k and top-p (transformers' order)."""
        processors = LogitsProcessorList(logits_processor or [])
        if not config.greedy and config.temperature != 1:  # greedy: `LoMDMSampler` takes the argmax
            processors.append(TemperatureLogitsWarper(float(config.temperature)))
        if config.top_k is not None:
            processors.append(TopKLogitsWarper(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            processors.append(TopPLogitsWarper(config.top_p))
        return processors

    def _prepare_sampler(
        self,
        config: LoMDMGenerationConfig,
        logits_processor: LogitsProcessorList | None,
        model_kwargs: dict[str, Any],
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        num_new_tokens: int,
    ) -> tuple[LoMDMSampler, torch.Tensor | None]:
        """The initialized sampler and the checked `allowed_tokens`."""
        generator = model_kwargs.get("generator")
        if isinstance(generator, list) and len(generator) != input_ids.shape[0]:
            raise ValueError(
                f"`generator` must be one generator or a list with one per output row "
                f"({input_ids.shape[0]}), got a list of {len(generator)}."
            )
        sampler = LoMDMSampler(config, self._logits_processor(config, logits_processor), generator)
        sampler.initialize(input_ids, attention_mask, num_new_tokens)
        allowed_tokens = model_kwargs.get("allowed_tokens")
        if allowed_tokens is not None and allowed_tokens.shape[-2] != sampler.canvas.shape[1]:
            raise ValueError(
                f"`allowed_tokens` covers {allowed_tokens.shape[-2]} positions; the output has "
                f"{sampler.canvas.shape[1]} (prompt + new tokens)."
            )
        return sampler, allowed_tokens

    def _step(
        self,
        sampler: LoMDMSampler,
        rows: torch.LongTensor,
        allowed_tokens: torch.Tensor | None,
        cache: LoMDMBlockCache | None,
    ) -> torch.BoolTensor:
        """One sampler step: a backbone pass on the rows `rows` `(R,)` (none when R = 0: every row reuses its last
        pass), then `sampler.step`. Returns the `(B, L)` positions revealed."""
        if not rows.numel():
            return sampler.step()
        log_probs, reverse_exponents, computed = self._denoise(sampler, rows, allowed_tokens, cache)
        return sampler.step(log_probs, reverse_exponents, rows, computed)

    def _denoise(
        self,
        sampler: LoMDMSampler,
        rows: torch.LongTensor,
        allowed_tokens: torch.Tensor | None = None,
        cache: LoMDMBlockCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """One backbone pass on the canvas rows `rows` `(R,)`; noise_mask = the set M, as in training.

        Returns log p_θ `(R, L, V)`, ê `(R, L)` when the sampler's reveal rule reads them (else `None`), and the
        positions per row the pass computed. The head runs only at positions still to be revealed (the only
        ones the sampler reads); the other rows of log p_θ are 0 and never used. With a filled block `cache`
        the pass runs on its window only (`_cached_denoise`); otherwise on the whole canvas, filling `cache`.
        """
        if cache is not None and cache.is_filled:
            return self._cached_denoise(sampler, rows, allowed_tokens, cache)
        canvas = sampler.canvas[rows]
        still_masked = sampler.generated[rows] & (canvas == self.config.mask_token_id)  # (R, L)
        timesteps = sampler.timesteps()[rows].float() if self.is_time_conditioned else None
        out = self(
            canvas,
            attention_mask=sampler.attention_mask[rows],
            noise_mask=sampler.generated[rows],
            timesteps=timesteps,
            output_exponents=sampler.needs_exponents,
            logits_mask=still_masked,
            allowed_tokens=_rows_of(allowed_tokens, rows),
            past_key_values=cache,
        )
        if cache is not None:
            cache.features = (
                out.last_hidden_state
            )  # (R, L, H): what the reverse scheduler reads outside the window
        log_probs = out.packed_log_probs.new_zeros(
            canvas.shape + out.packed_log_probs.shape[-1:]
        )  # (R, L, V)
        log_probs[still_masked] = out.packed_log_probs
        return log_probs, out.reverse_exponents, canvas.shape[1]

    def _cached_denoise(
        self,
        sampler: LoMDMSampler,
        rows: torch.LongTensor,
        allowed_tokens: torch.Tensor | None,
        cache: LoMDMBlockCache,
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """`_denoise` on the cache's window `[start, end)`: the backbone computes W = end - start columns and
        attends to the cached keys / values of the others; the head runs at the block's masked positions.

        ê (when read) comes from the reverse scheduler on the whole canvas's features: the window's fresh ones
        and the block's first pass's elsewhere (see `cache_lomdm`).
        """
        start, end = cache.window
        canvas = sampler.canvas[rows]
        in_block = sampler.masked()[rows]  # (R, L): the only positions the sampler reads
        logits_mask = in_block[:, start:end]  # (R, W)
        timesteps = sampler.timesteps()[rows].float() if self.is_time_conditioned else None
        window_allowed = _rows_of(allowed_tokens, rows)
        cache.select(rows)
        out = self._denoiser_pass(
            canvas[:, start:end],
            sampler.attention_mask[rows],  # (R, L): the keys come back in the canvas's column order
            None,
            sampler.position_ids[rows, start:end],
            timesteps,
            output_exponents=False,
            logits_mask=logits_mask,
            allowed_tokens=None if window_allowed is None else window_allowed[..., start:end, :],
            past_key_values=cache,
        )
        log_probs = out.packed_log_probs.new_zeros(
            canvas.shape + out.packed_log_probs.shape[-1:]
        )  # (R, L, V)
        log_probs[in_block] = out.packed_log_probs
        reverse_exponents = None
        if sampler.needs_exponents:
            reverse_exponents = self._reverse_exponents(
                cache.features_with(out.last_hidden_state),
                canvas,
                sampler.attention_mask[rows],
                sampler.generated[rows],
                sampler.position_ids[rows],
            )
        return log_probs, reverse_exponents, end - start


def _rows_of(allowed_tokens: torch.Tensor | None, rows: torch.LongTensor) -> torch.Tensor | None:
    """`allowed_tokens` for the canvas rows `rows`: an `(L, V)` table serves every row, a `(B, L, V)` one is indexed."""
    return allowed_tokens if allowed_tokens is None or allowed_tokens.dim() == 2 else allowed_tokens[rows]


class _TokenStream:
    """Hands row 0 of the canvas to a streamer: first the prompt (the real tokens before the first generated
    position, as in HF), then each run of known tokens as soon as every position before it is known, each token
    once, up to the first generated EOS.

    Args:
        streamer (`BaseStreamer`): Receives the tokens.
        sampler ([`LoMDMSampler`]): The initialized sampler; its canvas has one row.
        eos_token_id (`list[int]`, *optional*): Nothing after a generated EOS is streamed.
    """

    def __init__(self, streamer: BaseStreamer, sampler: LoMDMSampler, eos_token_id: list[int] | None):
        self.streamer = streamer
        self.mask_token_id = sampler.mask_token_id
        self.eos_token_id = eos_token_id
        self.generated = sampler.generated[0]  # (L,) the set M of row 0
        length = self.generated.shape[0]
        first_real = length - int(sampler.attention_mask[0].sum())
        generated = self.generated.nonzero()
        self.next_column = int(generated[0]) if generated.numel() else length  # first column not yet streamed
        streamer.put(sampler.canvas[:, first_real : self.next_column].cpu())

    def put_known(self, canvas: torch.LongTensor) -> None:
        """Put the run of known tokens of `canvas` `(1, L)` after the last streamed one; stop for good after a
        generated EOS."""
        length = canvas.shape[1]
        tail = canvas[0, self.next_column :]
        count = int((tail != self.mask_token_id).long().cumprod(0).sum())  # leading run of known tokens
        run, end = tail[:count], self.next_column + count
        if self.eos_token_id is not None:
            is_eos = torch.isin(run, torch.tensor(self.eos_token_id, device=run.device))
            is_eos &= self.generated[self.next_column : end]
            if bool(is_eos.any()):  # nothing after the EOS is ever streamed
                run, end = run[: int(is_eos.nonzero()[0]) + 1], length
        if run.numel():
            self.streamer.put(run.cpu())
        self.next_column = end

    def end(self) -> None:
        self.streamer.end()


# DREAM_ALGORITHMS lives with the other aliases in the generation config; exported here too, its old address.
__all__ = ["DREAM_ALGORITHMS", "LoMDMGenerateOutput", "LoMDMGenerationMixin"]
