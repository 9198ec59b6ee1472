"""What every command-line tool of the package shares (the console scripts and `examples/*.py`).

- `ArgumentParser` / `DataclassArgumentParser`: argparse / `HfArgumentParser` that accept both flag spellings
  (`--max_steps` and `--max-steps`), take negative numbers as values (`--learning_rate -1e-3`), never
  abbreviate flags, show defaults in `--help`, and raise `UsageError` instead of printing the usage.
- `run_cli`: runs a tool's `main`; bad input (`UsageError`, `ValueError`, `OSError`) becomes one line on stderr
  and exit status 2. `--debug` (or `LOMDM_DEBUG=1`) shows the traceback instead; other exceptions are bugs and
  keep theirs.
- `integer_at_least`: an argparse `type` for integer flags with a lower bound.
- `check_local_folder` / `from_pretrained`: a missing local folder is named as such, before anything is loaded
  (no Hub round trip), and a folder that cannot be loaded (e.g. a truncated `model.safetensors`) names the file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import HfArgumentParser

__all__ = [
    "ArgumentParser",
    "DataclassArgumentParser",
    "HelpFormatter",
    "UsageError",
    "check_local_folder",
    "from_pretrained",
    "integer_at_least",
    "normalize_argv",
    "run_cli",
]

_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


class UsageError(ValueError):
    """Bad command-line input: `run_cli` prints the message on one line and exits with status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` with every default shown and the description's line breaks kept."""


def _canonical(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def normalize_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """`argv` with every flag in the spelling `parser` registered (`--max-steps` -> `--max_steps` or back; the
    underscore one where both are, so callers look a flag up by one name) and a
    negative number after a flag that takes one value glued to it (`--lr -1e-3` -> `--lr=-1e-3`), which
    argparse would otherwise read as an unknown flag."""
    options: dict[str, str] = {}  # canonical name -> the registered spelling, `--max_steps` where both are
    for option in parser._option_string_actions:
        key = _canonical(option)
        if option.startswith("--") and (key not in options or option == f"--{key}"):
            options[key] = option
    out: list[str] = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, sep, value = arg.partition("=")
            if _canonical(name) in options:
                arg = options[_canonical(name)] + sep + value
        out.append(arg)
    glued: list[str] = []
    index = 0
    while index < len(out):
        arg = out[index]
        action = parser._option_string_actions.get(arg)
        takes_one = action is not None and action.nargs in (None, "?") and action.option_strings
        if takes_one and index + 1 < len(out) and _NUMBER.match(out[index + 1]):
            glued.append(f"{arg}={out[index + 1]}")
            index += 2
            continue
        glued.append(arg)
        index += 1
    return glued


class _Conventions:
    """The parsing conventions of the module docstring, for any argparse parser."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(normalize_argv(self, args), namespace)

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


class ArgumentParser(_Conventions, argparse.ArgumentParser):
    """argparse with the conventions of the module docstring and a `--debug` flag (tracebacks)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("epilog", "Flags may be spelled with '-' or '_' (--max-steps, --max_steps).")
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the full traceback of an error")


class DataclassArgumentParser(_Conventions, HfArgumentParser):
    """`HfArgumentParser` with the conventions of the module docstring (no abbreviations, usage errors raised)."""

    def __init__(self, dataclass_types, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: the flag's value as an int, or "must be an integer >= minimum" (a usage error)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value!r}")
        return number

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its message
    return parse


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_cli(prog: str, main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)` (default: `sys.argv[1:]`) as a command-line tool: bad input exits with status 2 and one
    line `prog: error: ...` on stderr; with `--debug` in `argv` or `LOMDM_DEBUG=1`, the traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("LOMDM_DEBUG", "") not in ("", "0")
    try:
        main(argv)
    except (ValueError, OSError) as error:  # UsageError, the package's validation, unreadable files
        if debug:
            raise
        print(f"{prog}: error: {_one_line(error)} (--debug for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _looks_local(path: str) -> bool:
    """Whether `path` can only be a local folder: a path form, an existing parent folder, or no valid Hub id."""
    if path.startswith((".", "~", os.sep)) or path.count("/") > 1 or (os.sep != "/" and os.sep in path):
        return True
    head = path.split("/", 1)[0]
    if "/" in path and os.path.isdir(head):
        return True
    try:
        validate_repo_id(path)
    except HFValidationError:
        return True
    return False


def check_local_folder(path: str, what: str = "model") -> str:
    """`path` with `~` expanded; `UsageError` naming it when it is a file, or when it can only be a local folder
    (see `_looks_local`) and does not exist. A valid Hub id that is not a folder is returned unchanged."""
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded):
        raise UsageError(f"{what} {path!r} is a file; pass the folder that holds config.json.")
    if _looks_local(expanded):
        raise UsageError(f"{what} {path!r}: no such folder.")
    return expanded


def from_pretrained(auto_class, path: str, what: str = "model", **kwargs: Any):
    """`auto_class.from_pretrained(path, **kwargs)` after `check_local_folder`; a failure becomes a `UsageError`
    that names the folder (or the file that cannot be read), or says that `path` is neither a folder nor a Hub
    repo that could be loaded."""
    path = check_local_folder(path, what)
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except OSError as error:
        if os.path.isdir(path):
            raise UsageError(f"cannot load {what} {path!r}: {_one_line(error)}") from error
        reason = _one_line(error).split(". ")[0]  # the Hub client's first sentence
        raise UsageError(
            f"{what} {path!r}: no such folder, and no Hub repo of that name could be loaded ({reason})."
        ) from error
    except Exception as error:
        if type(error).__name__ != "SafetensorError":
            raise
        files = sorted(name for name in os.listdir(path) if name.endswith(".safetensors"))
        raise UsageError(
            f"cannot read {', '.join(os.path.join(path, name) for name in files) or path}: {_one_line(error)} "
            "(a truncated or partly copied file?)"
        ) from error
