"""Column tokens of a table: `TabularTokenizer` maps rows to one token per column and back.

Every column owns a disjoint range of token ids after the mask token (see the package docstring).

- Categorical columns: one token per category seen at fit time.
- Numeric columns: equal-frequency (quantile) bins over the sorted distinct values; ties stay in one bin, so a
  value that holds ≥ 1/num_bins of the rows (e.g. capital-gain = 0) is a bin of its own. A column with at most
  `num_bins` distinct values gets one bin per value. Bin edges (the smallest and largest fitted value of each
  bin) are saved; decoding draws a value uniformly inside the bin (an integer if the column held integers).
- Missing values: one extra "missing" token per column that had missing values at fit time.

Also the tables themselves: `read_table` (UCI-style CSV), `tabular_dataset` (rows of column tokens for the
Trainer) and `known_order_table` (a table whose generation order is known).

Shapes: N = rows, L = columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from datasets import Dataset

ColumnKind = Literal["numeric", "categorical"]
TOKENIZER_FILE = "tabular_tokenizer.json"
MASK_TOKEN_ID = 0


@dataclass
class TabularColumn:
    """One column's slice of the vocabulary.

    Args:
        name: column name in the DataFrame.
        kind: `numeric` (quantile bins) or `categorical`.
        offset: first token id of the column; its tokens are `offset .. offset + size - 1`.
        categories: categorical values in token order (JSON scalars).
        bin_low, bin_high: numeric bins in token order: the smallest and largest fitted value of each bin.
        integer: the numeric column held only integers (decoded values are integers).
        has_missing: the column's last token stands for a missing value.
    """

    name: str
    kind: ColumnKind
    offset: int
    categories: list[Any] = field(default_factory=list)
    bin_low: list[float] = field(default_factory=list)
    bin_high: list[float] = field(default_factory=list)
    integer: bool = False
    has_missing: bool = False

    @property
    def num_values(self) -> int:
        return len(self.categories) if self.kind == "categorical" else len(self.bin_low)

    @property
    def size(self) -> int:
        return self.num_values + int(self.has_missing)

    @property
    def missing_token_id(self) -> int | None:
        return self.offset + self.num_values if self.has_missing else None


def _python_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _quantile_bins(values: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-frequency bins over the distinct values: `(low, high)` per bin, ties never split."""
    values = np.sort(values)
    distinct, first = np.unique(values, return_index=True)
    if len(distinct) <= num_bins:
        return distinct, distinct
    # A distinct value goes to the quantile bin of its first occurrence; the bin index is non-decreasing.
    bin_of = first * num_bins // len(values)
    starts = np.flatnonzero(np.r_[True, np.diff(bin_of) > 0])
    ends = np.r_[starts[1:], len(distinct)] - 1
    return distinct[starts], distinct[ends]


def _fit_column(series: pd.Series, name: str, kind: ColumnKind, offset: int, num_bins: int) -> TabularColumn:
    present = series.dropna()
    if present.empty:
        raise ValueError(f"column {name!r} has no non-missing value to fit.")
    has_missing = bool(series.isna().any())
    if kind == "categorical":
        categories = sorted({_python_scalar(v) for v in present}, key=lambda v: (type(v).__name__, v))
        return TabularColumn(name, kind, offset, categories=categories, has_missing=has_missing)
    values = present.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"numeric column {name!r} holds non-finite values; only NaN (missing) is supported.")
    low, high = _quantile_bins(values, num_bins)
    integer = bool(np.all(values == np.round(values)))
    return TabularColumn(
        name,
        kind,
        offset,
        bin_low=low.tolist(),
        bin_high=high.tolist(),
        integer=integer,
        has_missing=has_missing,
    )


class TabularTokenizer:
    """Maps table rows to column tokens in one shared id space and back.

    Build it with `TabularTokenizer.fit(df)`; `encode` gives `(N, L)` token ids, `decode` a DataFrame.
    `config_kwargs()` gives the `LoMDMConfig` fields the table fixes (`vocab_size`, `max_position_embeddings`,
    `mask_token_id`). Saved as `tabular_tokenizer.json` beside the model.

    Args:
        columns: the columns in row order, with contiguous token ranges starting at 1.
    """

    def __init__(self, columns: list[TabularColumn]):
        if not columns:
            raise ValueError("a tabular tokenizer needs at least one column.")
        expected = MASK_TOKEN_ID + 1
        for column in columns:
            if column.offset != expected or column.size < 1:
                raise ValueError(
                    f"column {column.name!r} must start at token id {expected} and hold at least one "
                    f"token, got offset {column.offset} and size {column.size}."
                )
            expected += column.size
        names = [column.name for column in columns]
        if len(set(names)) != len(names):
            raise ValueError(f"column names must be unique, got {names}.")
        self.columns = columns
        self._category_index = [{value: i for i, value in enumerate(column.categories)} for column in columns]

    @classmethod
    def fit(
        cls,
        table: pd.DataFrame,
        *,
        num_bins: int = 32,
        column_kinds: Mapping[str, ColumnKind] | None = None,
    ) -> TabularTokenizer:
        """Fit per-column vocabularies on `table`.

        Args:
            table: the rows; every column becomes one token position, in the DataFrame's column order.
            num_bins: the most quantile bins of a numeric column.
            column_kinds: per-column `numeric` / `categorical` overrides; by default numeric dtypes (not bool)
                are numeric and everything else is categorical.
        """
        if not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(f"`num_bins` must be a positive integer, got {num_bins!r}.")
        column_kinds = dict(column_kinds or {})
        unknown = set(column_kinds) - set(table.columns)
        if unknown:
            raise ValueError(f"`column_kinds` names columns that are not in the table: {sorted(unknown)}.")
        columns, offset = [], MASK_TOKEN_ID + 1
        for name in table.columns:
            series = table[name]
            default = (
                "numeric"
                if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
                else "categorical"
            )
            kind = column_kinds.get(name, default)
            if kind not in ("numeric", "categorical"):
                raise ValueError(
                    f"column kind must be 'numeric' or 'categorical', got {kind!r} for {name!r}."
                )
            column = _fit_column(series, str(name), kind, offset, num_bins)
            columns.append(column)
            offset += column.size
        return cls(columns)

    # -- vocabulary ------------------------------------------------------------------------------------------

    @property
    def mask_token_id(self) -> int:
        return MASK_TOKEN_ID

    @property
    def vocab_size(self) -> int:
        last = self.columns[-1]
        return last.offset + last.size

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    @property
    def column_kinds(self) -> dict[str, ColumnKind]:
        return {column.name: column.kind for column in self.columns}

    def config_kwargs(self) -> dict[str, int]:
        """The `LoMDMConfig` fields fixed by the table: one position per column, the shared vocabulary."""
        return {
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.num_columns,
            "mask_token_id": self.mask_token_id,
        }

    def token_ranges(self) -> torch.LongTensor:
        """`(L, 2)` half-open token-id range `[start, end)` of each column."""
        return torch.tensor([[c.offset, c.offset + c.size] for c in self.columns], dtype=torch.long)

    def allowed_tokens(self) -> torch.BoolTensor:
        """`(L, V)`: True where token v belongs to column ℓ. Passed to `LoMDMTrainer` / `generate` as
        `allowed_tokens`, the denoiser's softmax at each column spans that column's tokens only."""
        ranges = self.token_ranges()
        ids = torch.arange(self.vocab_size)
        return (ids >= ranges[:, :1]) & (ids < ranges[:, 1:])

    def valid_tokens(self, input_ids: torch.Tensor) -> torch.BoolTensor:
        """`(N, L)`: whether each token lies in its own column's range (the mask token does not)."""
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dim() != 2 or input_ids.shape[1] != self.num_columns:
            raise ValueError(
                f"expected token ids of shape (rows, {self.num_columns}), got {tuple(input_ids.shape)}."
            )
        ranges = self.token_ranges().to(input_ids.device)
        return (input_ids >= ranges[:, 0]) & (input_ids < ranges[:, 1])

    # -- encoding --------------------------------------------------------------------------------------------

    def _encode_column(self, index: int, series: pd.Series) -> np.ndarray:
        column = self.columns[index]
        missing = series.isna().to_numpy()
        if missing.any() and not column.has_missing:
            raise ValueError(f"column {column.name!r} has missing values, but none were seen at fit time.")
        codes = np.full(len(series), column.num_values, dtype=np.int64)  # the missing token's local index
        present = series[~missing]
        if column.kind == "categorical":
            lookup = self._category_index[index]
            local = [lookup.get(_python_scalar(v), -1) for v in present]
            unknown = sorted({str(v) for v, code in zip(present, local) if code < 0})
            if unknown:
                raise ValueError(f"column {column.name!r} has categories unseen at fit time: {unknown[:5]}.")
            codes[~missing] = local
        else:
            values = present.to_numpy(dtype=np.float64)
            bins = np.searchsorted(np.asarray(column.bin_low), values, side="right") - 1
            codes[~missing] = np.clip(bins, 0, column.num_values - 1)
        return codes + column.offset

    def encode(self, table: pd.DataFrame) -> torch.LongTensor:
        """`(N, L)` token ids of the rows of `table` (its columns are matched by name)."""
        absent = [name for name in self.column_names if name not in table.columns]
        if absent:
            raise ValueError(f"the table lacks the fitted columns {absent}.")
        codes = [self._encode_column(i, table[name]) for i, name in enumerate(self.column_names)]
        return torch.from_numpy(np.stack(codes, axis=1))

    def __call__(self, table: pd.DataFrame) -> dict[str, torch.LongTensor]:
        """`{"input_ids": (N, L)}`, as transformers tokenizers return."""
        return {"input_ids": self.encode(table)}

    # -- decoding --------------------------------------------------------------------------------------------

    def _decode_column(self, index: int, local: np.ndarray, rng: np.random.Generator) -> pd.Series:
        column = self.columns[index]
        missing = local == column.num_values
        present = local[~missing]
        if column.kind == "categorical":
            values = np.empty(len(local), dtype=object)
            values[missing] = np.nan
            values[~missing] = [column.categories[i] for i in present]
            return pd.Series(values, name=column.name)
        low = np.asarray(column.bin_low)[present]
        high = np.asarray(column.bin_high)[present]
        u = rng.random(len(present))
        # Uniform inside the bin: over its integers [low, high] (integer column), else over [low, high].
        drawn = np.floor(low + u * (high - low + 1)) if column.integer else low + u * (high - low)
        values = np.full(len(local), np.nan)
        values[~missing] = drawn
        if column.integer:
            return pd.Series(values, name=column.name).astype("Int64" if missing.any() else "int64")
        return pd.Series(values, name=column.name)

    def decode(self, input_ids: torch.Tensor | np.ndarray, *, seed: int = 0) -> pd.DataFrame:
        """Rows of column tokens back to a DataFrame; numeric values are drawn uniformly inside their bin.

        Args:
            input_ids: `(N, L)` token ids; each must lie in its own column's range.
            seed: seed of the numpy generator that draws the numeric values.
        """
        input_ids = torch.as_tensor(input_ids).cpu()
        valid = self.valid_tokens(input_ids)
        if not bool(valid.all()):
            row, col = (~valid).nonzero()[0].tolist()
            start, end = self.token_ranges()[col].tolist()
            raise ValueError(
                f"token id {int(input_ids[row, col])} at row {row} is not a token of column "
                f"{self.column_names[col]!r} (ids {start}..{end - 1})."
            )
        rng = np.random.default_rng(seed)
        local = input_ids.numpy() - self.token_ranges()[:, 0].numpy()  # (N, L) index inside each column
        return pd.concat([self._decode_column(i, local[:, i], rng) for i in range(self.num_columns)], axis=1)

    # -- persistence -----------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write `tabular_tokenizer.json` into `save_directory` (created if needed); returns its path."""
        path = Path(save_directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"columns": [asdict(c) for c in self.columns]}, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TabularTokenizer:
        """Load the tokenizer saved by `save_pretrained` in `directory`."""
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise ValueError(f"no {TOKENIZER_FILE} in {str(directory)!r}.")
        return cls([TabularColumn(**column) for column in json.loads(path.read_text())["columns"]])


# -- tables ------------------------------------------------------------------------------------------------


def read_table(path: str | Path, *, column_names: list[str] | None = None) -> pd.DataFrame:
    """Read a CSV table: blanks after delimiters are skipped and `?` or empty fields are missing (UCI style).

    Args:
        path: the CSV file.
        column_names: names for a file without a header row (e.g. UCI's `adult.data`); None reads the header.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"table file {str(path)!r} does not exist.")
    header = None if column_names is not None else "infer"
    return pd.read_csv(path, header=header, names=column_names, skipinitialspace=True, na_values=["?"])


def tabular_dataset(table: pd.DataFrame | str | Path, tokenizer: TabularTokenizer) -> Dataset:
    """A `datasets.Dataset` with one `input_ids` row of column tokens per table row (for `LoMDMTrainer`)."""
    if not isinstance(table, pd.DataFrame):
        table = read_table(table)
    return Dataset.from_dict({"input_ids": tokenizer.encode(table).tolist()})


def known_order_table(num_rows: int, *, num_values: int = 6, seed: int = 0) -> pd.DataFrame:
    """A table whose generation order is known: two independent causes and a deterministic effect.

    `A` and `B` are independent and uniform on `0 .. num_values - 1`, and `C = max(A, B)`: a many-to-one
    function that neither cause can be recovered from (given C = A, B is any value up to A). Revealing the
    causes first needs only their marginals and a deterministic last step; revealing `C` before a cause needs
    the stochastic conditionals p(A | C) and p(B | A, C). A perfect model scores every order the same (chain
    rule), so the preference is about what a finite model learns. (With C = (A + B) mod k, C is independent of
    A and of B, any two columns fix the third, and no order is easier than another.)

    Args:
        num_rows: rows to draw.
        num_values: k, the number of values of each cause.
        seed: numpy seed.
    """
    if num_rows < 1 or num_values < 2:
        raise ValueError(f"need num_rows >= 1 and num_values >= 2, got {num_rows} and {num_values}.")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, num_values, num_rows)
    b = rng.integers(0, num_values, num_rows)
    return pd.DataFrame({"A": a, "B": b, "C": np.maximum(a, b)})


__all__ = [
    "MASK_TOKEN_ID",
    "TOKENIZER_FILE",
    "ColumnKind",
    "TabularColumn",
    "TabularTokenizer",
    "known_order_table",
    "read_table",
    "tabular_dataset",
]
