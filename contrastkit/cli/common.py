"""Pieces every CLI command shares: dataclass-driven flags, YAML configs, one-line errors, atomic files.

Conventions (STYLE.md 6 and 11): a config dataclass's fields become snake_case flags with the
field's ``help`` metadata; ``--config run.yaml`` supplies defaults that flags override (trl
semantics); an unknown YAML key or flag is an error with a did-you-mean; any
:class:`~contrastkit.errors.UsageError` becomes ``contrastkit <cmd>: error: <message>`` and exit
code 2, never a traceback.

Every parser built with :class:`ArgumentParser` refuses flag prefixes (``allow_abbrev=False``:
``--max_new_token`` is an error with a did-you-mean, not ``--max_new_tokens``) and, unless built
with ``run_flags=False``, takes ``--threads`` (torch CPU threads) and ``--verbose`` (show
third-party warnings, quiet by default). ``--config`` takes a YAML path or the name of a config
shipped in ``contrastkit/configs`` (``contrastkit configs`` lists them). A value naming a known data
set by its Hub id is mapped to the local copy under ``$CONTRASTKIT_DATA`` when there is one (see
:mod:`contrastkit.io`), and fails at once with :func:`missing_data_error` when ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Callable

from contrastkit.errors import UsageError, did_you_mean
from contrastkit.io import (  # noqa: F401  (re-exported for the commands)
    DATASETS,
    atomic_write,
    dataset_for,
    missing_data_error,
    read_jsonl,
    resolve_data,
)

EXIT_USAGE = 2
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
THREADS_HELP = ("torch CPU threads (default: torch's, one per core). On a busy or shared machine 1-2 threads are "
                "often many times faster; on an idle one torch's default is fastest")
VERBOSE_HELP = "show third-party warnings (transformers FutureWarnings, faiss, pin_memory); hidden by default"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), a did-you-mean for unknown flags and no prefix matching.

    ``run_flags`` (default True) adds ``--threads`` and ``--verbose``; a command that defines its
    own ``--threads`` keeps its definition. ``flag_owners`` maps a flag this parser does not take
    to the names that do (e.g. other strategies), for the error message.
    """

    def __init__(self, *args, run_flags: bool = True, flag_owners: dict | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(*args, **kwargs)
        self.flag_owners = dict(flag_owners or {})
        if run_flags and kwargs.get("add_help", True):
            self.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
            self.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)

    def error(self, message: str):  # noqa: D401 - argparse API
        if message.startswith("unrecognized arguments:"):
            bad = message.split(":", 1)[1].split()
            flags = [b.split("=")[0] for b in bad if b.startswith("--")]
            owned = [f for f in flags if f in self.flag_owners]
            if owned:
                f = owned[0]
                message = (f"{f} belongs to: {', '.join(self.flag_owners[f])} "
                           f"(add --strategy {self.flag_owners[f][0]}; unrecognized: {' '.join(bad)})")
            elif flags:
                options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
                hint = did_you_mean(flags[0], options)
                message += f".{hint}" if hint else ""
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def strategy_flag_owners(selected: list[str]) -> dict[str, list[str]]:
    """``--flag -> [strategies]`` for the parameters of registered strategies outside ``selected``."""
    from contrastkit.decoding.base import get_strategy
    from contrastkit.registry import DECODERS

    owners: dict[str, list[str]] = {}
    for name in DECODERS.names():
        if name in selected:
            continue
        for f in dataclasses.fields(get_strategy(name).config_cls):
            owners.setdefault(f"--{f.name}", []).append(name)
    return owners


def token_progress(num_prompts: int, max_new_tokens: int, batch_size: int, desc: str = "generate"):
    """A ``StoppingCriteria`` that never stops: it moves a tqdm bar by one token per decoding step.

    The bar counts prompt-tokens (total = prompts x max_new_tokens), so batched generation shows
    progress per token, not per batch. A step belongs to the current batch when it extends the
    previous ``input_ids`` by one token; otherwise a new batch (the next ``batch_size`` slice, as
    :func:`contrastkit.generate` cuts them) started, and the tokens the previous one did not need
    (all rows hit EOS early) are added, so the bar ends full after ``close()``.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import StoppingCriteria

    class TokenProgress(StoppingCriteria):
        def __init__(self):
            self.sizes = [min(batch_size, num_prompts - s) for s in range(0, num_prompts, batch_size)]
            self.batch, self.step, self.last = -1, 0, None
            self.bar = tqdm(total=num_prompts * max_new_tokens, desc=desc, unit="tok", dynamic_ncols=True)

        def __call__(self, input_ids, scores, **kwargs):
            last = self.last
            same = (last is not None and last.shape[0] == input_ids.shape[0]
                    and input_ids.shape[-1] == last.shape[-1] + 1 and torch.equal(input_ids[:, :-1], last))
            if not same:
                self._finish_batch()
            self.last = input_ids
            if self.step < max_new_tokens and self.batch < len(self.sizes):
                self.step += 1
                self.bar.update(self.sizes[self.batch])
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        def _finish_batch(self):
            if 0 <= self.batch < len(self.sizes):
                self.bar.update((max_new_tokens - self.step) * self.sizes[self.batch])
            self.batch, self.step = self.batch + 1, 0

        def close(self):
            while self.batch < len(self.sizes):
                self._finish_batch()
            self.bar.close()

    return TokenProgress()


def apply_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` after a range check; None keeps torch's default."""
    if threads is None:
        return
    from contrastkit.errors import check_range

    check_range("--threads", threads, 1)
    import torch

    torch.set_num_threads(int(threads))


_NOISE = [  # (category, message regex) of third-party warnings a user cannot act on
    (FutureWarning, ""),
    (UserWarning, ".*pin_memory.*"),
    (UserWarning, ".*training points.*"),
    (UserWarning, ".*TRANSFORMERS_CACHE.*"),
]


def _quiet_faiss_kmeans(faiss) -> None:
    """Make ``faiss.Kmeans`` default to ``min_points_per_centroid=1``.

    faiss prints "please provide at least M training points" from C++ (Python's filters cannot hide
    it) whenever N < K x that parameter, which gates nothing else: the centroids are the same.
    """
    base = getattr(faiss, "Kmeans", None)
    if base is None or getattr(base, "_contrastkit_quiet", False):
        return

    class Kmeans(base):
        _contrastkit_quiet = True
        def __init__(self, d, k, **kwargs):  # noqa: E301
            kwargs.setdefault("min_points_per_centroid", 1)
            super().__init__(d, k, **kwargs)

    faiss.Kmeans = Kmeans


class _AfterImport:
    """A ``sys.meta_path`` finder that runs ``hook(module)`` right after ``name`` is first imported."""

    def __init__(self, name: str, hook):
        self.name, self.hook = name, hook

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run, hook = spec.loader.exec_module, self.hook
        def exec_module(module):  # noqa: E306
            run(module)
            hook(module)

        spec.loader.exec_module = exec_module
        return spec


def _quiet_faiss() -> None:  # now if faiss is imported, else right after its first import
    if "faiss" in sys.modules:
        _quiet_faiss_kmeans(sys.modules["faiss"])
    elif not any(isinstance(f, _AfterImport) and f.name == "faiss" for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport("faiss", _quiet_faiss_kmeans))


def quiet_third_party(verbose: bool = False, *, transformers: bool = False) -> None:
    """Hide third-party noise unless verbose: FutureWarnings, pin_memory / faiss warnings, transformers logs.

    ``transformers=True`` (set once a command has parsed its flags, before any model load) also
    imports transformers to turn off its per-tensor "Loading weights" bar and info logs.
    """
    if verbose or os.environ.get("CONTRASTKIT_VERBOSE"):
        return
    for category, pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # trl's per-row map() bars, not training progress
    if "datasets" in sys.modules:  # imported already: the env var is read at import
        sys.modules["datasets"].disable_progress_bars()
    for name in ("transformers", "accelerate", "datasets", "peft", "trl", "huggingface_hub", "faiss"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _quiet_faiss()
    if transformers or "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _list_of(item_type: Callable) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [item_type(x.strip()) for x in str(text).split(",") if x.strip()]

    return parse


def field_argtype(tp) -> Callable[[str], Any] | None:
    """argparse ``type=`` for a dataclass field annotation (bool, int, float, str, list[...], Optional[...])."""
    if isinstance(tp, str):
        tp = eval(tp, {"typing": typing, "Any": Any, "Literal": typing.Literal}, {})  # noqa: S307 - own annotations
    tp = _unwrap_optional(tp)
    if tp is bool:
        return _parse_bool
    if typing.get_origin(tp) in (list, tuple):
        args = typing.get_args(tp)
        return _list_of(_unwrap_optional(args[0]) if args else str)
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0])
    if tp in (int, float, str):
        return tp
    return str


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                            group_title: str | None = None) -> list[str]:
    """Add a ``--field`` flag for every field of dataclass ``cls``; flags default to None (= use the class default).

    Returns the field names added. Booleans accept ``--flag`` / ``--flag true|false``.
    """
    target = parser.add_argument_group(group_title) if group_title else parser
    existing = {a.dest for a in parser._actions}
    added = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in existing or not f.init:
            continue
        tp = hints.get(f.name, f.type)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default!r})" if help_text else f"default: {default!r}"
        kwargs: dict[str, Any] = dict(dest=f.name, default=None, help=help_text.replace("%", "%%"))
        if _unwrap_optional(tp) is bool:
            kwargs.update(nargs="?", const=True, type=_parse_bool, metavar="BOOL")
        else:
            kwargs.update(type=field_argtype(tp), metavar=f.name.upper())
        target.add_argument(f"--{f.name}", **kwargs)
        added.append(f.name)
    return added


def check_data(value):
    """A known data set's Hub id -> its local copy ($CONTRASTKIT_DATA); offline without one -> UsageError at once."""
    ds = dataset_for(value)
    if ds is None:
        return value
    local = resolve_data(value)
    if local == value and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise missing_data_error(ds.name)
    return local


def build_dataclass(cls: type, values: dict[str, Any], *, where: str = "") -> Any:
    """Instantiate ``cls`` from the non-None entries of ``values`` whose keys are its fields.

    A field whose value (given or default) is a known data set's Hub id then goes through
    :func:`check_data`: the class validates its values first, so a bad parameter is reported
    before missing data.
    """
    fields = [f for f in dataclasses.fields(cls) if f.init]
    kwargs = {k: v for k, v in values.items() if k in {f.name for f in fields} and v is not None}
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise UsageError(f"{where}{e}") from None
    data = {f.name: check_data(getattr(obj, f.name)) for f in fields if dataset_for(getattr(obj, f.name, None))}
    changed = {k: v for k, v in data.items() if v != getattr(obj, k)}
    return dataclasses.replace(obj, **changed) if changed else obj


def shipped_configs() -> dict[str, Path]:
    """Configs shipped in the package: name (file stem) -> path."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_config(path: str) -> Path:
    """``--config`` value -> file: an existing path, else a shipped config's name (with or without ``.yaml``)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    shipped = shipped_configs()
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if name in shipped and ("/" not in path and os.sep not in path or p.parent.name == "configs"):
        return shipped[name]
    raise UsageError(f"config file '{path}' does not exist and is not a shipped config.{did_you_mean(name, shipped)} "
                     f"Shipped: {', '.join(shipped)} (contrastkit configs)")


def load_yaml_config(path: str | None, known: list[str]) -> dict[str, Any]:
    """Read ``--config``: a YAML mapping of flag names to values (an ``env:`` mapping sets env vars)."""
    if not path:
        return {}
    import yaml

    p = resolve_config(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file '{path}' must be a mapping of option names to values")
    for key, value in (data.pop("env", None) or {}).items():
        os.environ[str(key)] = str(value)
    for key in data:
        if key not in known:
            raise UsageError(f"config file '{path}': unknown key '{key}'.{did_you_mean(key, known)}")
    return data


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; values from ``--config`` YAML fill every flag the command line left unset."""
    args = parser.parse_args(argv)
    known = [a.dest for a in parser._actions if a.dest not in ("help", "config")]
    for key, value in load_yaml_config(getattr(args, "config", None), known).items():
        if getattr(args, key, None) in (None, False, []):
            setattr(args, key, value)
    for key, value in vars(args).items():
        if dataset_for(value) is not None:
            setattr(args, key, check_data(value))
    quiet_third_party(bool(getattr(args, "verbose", False)), transformers=True)
    apply_threads(getattr(args, "threads", None))
    return args


def run_command(prog: str, fn: Callable[[], int | None]) -> int:
    """Run a command body, mapping bad input to one line on stderr and exit code 2."""
    try:
        return fn() or 0
    except SystemExit as e:  # argparse: --help (0) or a usage error it already printed (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
