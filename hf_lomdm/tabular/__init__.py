"""Tabular data as column tokens: masked diffusion over table rows with learned per-column schedules.

A table row becomes a sequence of L tokens, one per column (MDM(LS), arXiv 2511.19152 §4). Every column owns a
disjoint range of token ids in one shared vocabulary, after the mask token (id 0):

    [mask] [column 0: values..., missing?] [column 1: values..., missing?] ... [column L-1: ...]

so position ℓ of a row always holds a token of column ℓ's range, and the `per_position` schedule learns one
exponent per column: α_{t,ℓ} = 1 - t^{e_ℓ}. A column is revealed at t*_ℓ = u^{1/e_ℓ}: the larger e_ℓ, the
earlier in generation (Algorithm 1 of 2511.19152 = `model.generate(order="learned", steps=None)`).

Modules:
- `tokenizer`: `TabularTokenizer` (columns to tokens and back), reading tables and the known-order table.
- `fit`: `train_tabular_model` (`LoMDMTrainer`, best validation NELBO kept), the column exponents and
  sampling rows of valid column tokens.
- `fidelity`: the SDMetrics Shape and Trend scores of synthetic rows against real ones.

Shapes: N = rows, L = columns, V = vocabulary.
"""

from .fidelity import FidelityReport, column_pair_trend, column_shape, fidelity
from .fit import TabularTrainResult, column_exponents, sample_token_rows, train_tabular_model
from .tokenizer import TabularColumn, TabularTokenizer, known_order_table, read_table, tabular_dataset

__all__ = [
    "FidelityReport",
    "TabularColumn",
    "TabularTokenizer",
    "TabularTrainResult",
    "column_exponents",
    "column_pair_trend",
    "column_shape",
    "fidelity",
    "known_order_table",
    "read_table",
    "sample_token_rows",
    "tabular_dataset",
    "train_tabular_model",
]
