"""Model cards for LoMDM checkpoints (`huggingface_hub.ModelCard` + the template in `hf_lomdm/templates/`),
and the reveal-order heat map they show."""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .lora import scheduler_modules

__all__ = ["ORDER_PLOT_NAME", "build_model_card", "plot_reveal_order", "write_model_card"]

ORDER_PLOT_NAME = "reveal_order.png"
_DESCRIPTIONS = {
    "linear": "MDLM's log-linear schedule, every token e = 1",
    "polynomial": "a fixed polynomial schedule α = 1 − t^c1",
    "per_position": "MDM(LS): one learned exponent per position, e = c1 + c2·NormSig(θ)",
    "lomdm": "LoMDM: state-dependent learned exponents e = c1 + c2·NormSig(g(f(x))), reverse scheduler at inference",
}


def build_model_card(
    model,
    *,
    repo_id: str = "path/to/checkpoint",
    eval_metrics: dict[str, float] | None = None,
    dataset_name: str = "shakespeare",
    training_data: str = "",
    samples: Sequence[str] = (),
    order_plot: str | None = None,
    example_prompt: str = "",
    license: str = "apache-2.0",
) -> ModelCard:
    """A filled model card for a `LoMDMForMaskedDiffusion`.

    Args:
        model: the model (its config gives the schedule and size).
        repo_id: Hub id (or path) shown in the loading snippet.
        eval_metrics: `{"nelbo", "ppl_bound", "tokens"}` of the validation set (also written as model-index).
        dataset_name: training data set, for the metadata.
        training_data: a sentence on the training data.
        samples: generated texts to show.
        order_plot: file name of the reveal-order PNG beside the card.
        example_prompt: text of the loading snippet's prompt.
        license: license of the weights.
    """
    config = model.config
    eval_results = None
    if eval_metrics:
        eval_results = [EvalResult(
            task_type="text-generation", task_name="Masked diffusion language modeling", dataset_type=dataset_name,
            dataset_name=dataset_name, dataset_split="validation", metric_type="perplexity",
            metric_name="Validation perplexity bound exp(NELBO)", metric_value=round(eval_metrics["ppl_bound"], 4),
        )]
    card_data = ModelCardData(
        library_name="transformers", license=license, datasets=[dataset_name], model_name=repo_id.split("/")[-1],
        tags=["hf_lomdm", "masked-diffusion", "diffusion-language-model", f"schedule-{config.schedule}"],
        pipeline_tag="text-generation", eval_results=eval_results,
    )
    template = importlib.resources.files("hf_lomdm") / "templates" / "model_card.md"
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        schedule=config.schedule,
        schedule_description=_DESCRIPTIONS[config.schedule]
        + ("" if config.schedule == "linear" else f", c1 = {config.c1}, c2 = {config.c2}"),
        num_parameters=f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M",
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        max_length=config.max_position_embeddings,
        eval_nelbo=None if not eval_metrics else eval_metrics["nelbo"],
        eval_ppl_bound=None if not eval_metrics else eval_metrics["ppl_bound"],
        eval_tokens=None if not eval_metrics else int(eval_metrics.get("tokens", 0)),
        training_data=training_data or f"`{dataset_name}`.",
        samples=list(samples),
        order_plot=order_plot,
        example_prompt=example_prompt,
        scheduler_modules=", ".join(f"`{name}`" for name in scheduler_modules(model)) or "none for this schedule",
    )


def plot_reveal_order(tokens: Sequence[str], order: Sequence[int], path: str | Path, *, columns: int = 16) -> Path:
    """Heat map of the pass index that revealed each generated position (prompt / -1 positions left blank).

    Needs matplotlib (the `plot` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(tokens) != len(order):
        raise ValueError(f"`tokens` ({len(tokens)}) and `order` ({len(order)}) must have the same length.")
    rows = -(-len(order) // columns)
    grid = torch.full((rows * columns,), float("nan"))
    grid[: len(order)] = torch.tensor([float(o) if o >= 0 else float("nan") for o in order])
    fig, ax = plt.subplots(figsize=(columns * 0.9, rows * 0.55 + 0.8))
    image = ax.imshow(grid.view(rows, columns).numpy(), cmap="viridis_r", aspect="auto")
    for index, token in enumerate(tokens):
        ax.text(index % columns, index // columns, token.strip()[:8] or "␣", ha="center", va="center", fontsize=7,
                color="black" if order[index] < 0 else "white")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, label="reveal pass (earlier = darker)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def write_model_card(
    output_dir: str | Path,
    model,
    tokenizer,
    *,
    eval_metrics: dict[str, float] | None = None,
    samples: Sequence[str] = (),
    seed: int = 0,
    **card_kwargs,
) -> ModelCard:
    """Write `README.md` (and, with matplotlib, `reveal_order.png` from one learned-order sample) into `output_dir`."""
    output_dir = Path(output_dir)
    order_plot = None
    try:
        prompt = torch.tensor([[tokenizer.bos_token_id]], device=model.device)
        out = model.generate(prompt, max_new_tokens=min(48, model.config.max_position_embeddings - 1), order="learned",
                             return_dict_in_generate=True, output_order=True,
                             generator=torch.Generator(device=model.device).manual_seed(seed))
        tokens = [tokenizer.decode([token]) for token in out.sequences[0].tolist()]
        plot_reveal_order(tokens, out.order[0].tolist(), output_dir / ORDER_PLOT_NAME)
        order_plot = ORDER_PLOT_NAME
    except ImportError:  # matplotlib is optional
        pass
    card = build_model_card(model, eval_metrics=eval_metrics, samples=samples, order_plot=order_plot, **card_kwargs)
    card.save(output_dir / "README.md")
    return card
