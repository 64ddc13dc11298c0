"""lm-evaluation-harness model plugin: run any lm-eval task under any contrastkit strategy.

lm-eval (>= 0.4.13, the ``lm-eval`` extra) looks models up in its own registry; importing
``ContrastkitLM`` from this module (or calling :func:`register`) registers ``contrastkit`` there.
From the shell, this module *is* lm-eval's CLI with the plugin registered (every lm-eval flag
works)::

    python -m contrastkit.eval.lm_eval_model --model contrastkit \\
        --model_args model=smollm2,strategy=icd,amateur=PATH,alpha=0.1 --tasks truthfulqa_mc2

From Python::

    import lm_eval
    from contrastkit.eval.lm_eval_model import ContrastkitLM  # registers "contrastkit"

    lm_eval.simple_evaluate(model="contrastkit", model_args="model=smollm2,strategy=dola", tasks=["arc_easy"])
    # or with a model already in memory:
    lm_eval.simple_evaluate(model=ContrastkitLM(model=model, tokenizer=tok, strategy="greedy"), tasks=[...])

``model_args``: ``model`` (alias ``pretrained``; anything :func:`contrastkit.load_model` takes:
``smollm2``, a local folder, a ``.gguf`` file or a Hub id), ``strategy`` (any registered name,
default ``greedy``), ``adapter``, ``dtype``, ``max_length``, ``check_greedy``, ``seed``, and the
strategy's own parameters (``amateur``, ``alpha``, ``penalty_alpha``, ...: checked against the
strategy's config before the model loads, with a did-you-mean).

What each lm-eval request type means under a strategy:

* ``loglikelihood`` (multiple choice, lambada...): the continuation's summed score under the
  strategy's scoring rule (log-probs for plain strategies; e.g. ``log p_expert - log p_amateur``
  for the contrastive family), tokenized with lm-eval's pair encoding. Plain rules and the
  contrast family (cd/icd/dola/lol) use the packed prefix-trie scorer of the TruthfulQA harness
  (:class:`contrastkit.eval.truthfulqa.PrefixCachedScorer`, :mod:`contrastkit.eval.packed_contrast`),
  so a few-shot prefix shared by many requests runs once. ``is_greedy`` (read by e.g. lambada's
  ``acc``) says whether decoding by the argmax of the strategy's rule from the context reproduces
  the continuation exactly; it is computed by generating it (greedy decoding for plain-rule
  strategies, the contrastive family's own decoding with sampling off). ``check_greedy=false``
  skips that extra pass for tasks that only read the log-likelihood (all multiple-choice tasks);
  ``is_greedy`` is then always False.
* ``loglikelihood_rolling`` (perplexity tasks): lm-eval's own disjoint rolling windows of at most
  ``max_length`` tokens (default: the model's context length), prefixed with BOS (else EOS),
  each scored under the strategy's rule.
* ``generate_until``: :func:`contrastkit.generate` with the strategy, at most ``max_gen_toks``
  new tokens, stopping at any ``until`` string (the text is cut before it). The task's sampling
  keys (``do_sample``, ``temperature``...) do not apply: the strategy decides how to decode.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import torch

from contrastkit.errors import UsageError

log = logging.getLogger(__name__)
_SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k")


def _batch_size(value) -> int:
    """lm-eval passes ``batch_size`` as an int, a digit string, or ``auto[:N]`` (not supported: 8)."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.isdigit() and int(text) > 0:
        return int(text)
    log.warning("contrastkit: batch_size=%r is not a positive integer; using 8", value)
    return 8


class _ContrastkitLMImpl:
    """The body of :class:`ContrastkitLM`; the class itself also derives from lm-eval's ``LM``.

    lm-eval is an optional extra, so ``LM`` is imported only when ``ContrastkitLM`` is first
    asked for (:func:`register`): importing this module alone never imports lm-eval.
    """

    def __init__(self, model: Any = "smollm2", strategy: str = "greedy", *, pretrained: Any = None, tokenizer=None,
                 batch_size: int | str = 8, max_batch_size=None, device: str | None = None, dtype: str | None = None,
                 adapter: str | None = None, max_length: int | None = None, check_greedy: bool = True,
                 seed: int = 0, **strategy_params):
        super().__init__()
        from contrastkit.decoding.base import get_strategy
        from contrastkit.eval.truthfulqa import PrefixCachedScorer, is_plain
        from contrastkit.generation import context_length
        from contrastkit.models import load_model

        self.strategy = get_strategy(strategy)
        self.params = dict(strategy_params)
        self.strategy.make_config(**self.params)  # bad parameter names / values fail before any model loads
        self.plain = is_plain(self.strategy)
        self.batch_size = _batch_size(batch_size)
        self.check_greedy, self.seed = bool(check_greedy), int(seed)
        model = pretrained if pretrained is not None else model
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI passes its default "cuda:0" everywhere: without CUDA the loader picks the device.
            # Only a --device the user typed is worth a warning.
            if _CLI_STATE.get("user_device"):
                log.warning("contrastkit: --device %r but CUDA is not available; using the loader's default", device)
            device = None
        if isinstance(model, str):
            self.model, self.tok = load_model(model, adapter=adapter, dtype=dtype, device=device)
        else:
            if tokenizer is None:
                raise UsageError("ContrastkitLM(model=<model object>) needs tokenizer=<its tokenizer>")
            self.model, self.tok = model, tokenizer
        self.model.eval()
        self.max_length = int(max_length or context_length(self.model) or 2048)
        self._cached = PrefixCachedScorer(self.model, self.tok, batch_size=self.batch_size)
        self._rule = None  # the packed form of a contrast-family rule (contrastkit.eval.packed_contrast), once

    # -- lm-eval helpers ---------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tok, "name_or_path", "contrastkit")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id

    def _bar(self, total: int, desc: str, disable: bool):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"contrastkit[{self.strategy.name}] {desc}", disable=disable)

    # -- loglikelihood -----------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        by_context: dict[str, list[int]] = {}
        for i, (ctx, _) in enumerate(pairs):
            by_context.setdefault(ctx, []).append(i)
        contexts = list(by_context)
        lls: list[float] = [0.0] * len(pairs)
        bar = self._bar(len(pairs), "loglikelihood", disable_tqdm)
        step = 16  # contexts per scoring call
        for start in range(0, len(contexts), step):
            chunk = contexts[start:start + step]
            scores = self._score(chunk, [[pairs[i][1] for i in by_context[c]] for c in chunk])
            for ctx, row in zip(chunk, scores):
                for i, value in zip(by_context[ctx], row):
                    lls[i] = value
                bar.update(len(row))
        bar.close()
        greedy = self._is_greedy(pairs, disable_tqdm) if self.check_greedy else [False] * len(pairs)
        out = []
        for req, ll, g in zip(requests, lls, greedy):
            out.append((ll, g))
            self.cache_hook.add_partial("loglikelihood", req.args, (ll, g))
        return out

    def _score(self, contexts: list[str], continuations: list[list[str]]) -> list[list[float]]:
        from contrastkit.decoding.scoring import score
        from contrastkit.eval.packed_contrast import packed_rule

        if not self.plain and self._rule is None:
            self._rule = packed_rule(self.model, self.tok, self.strategy, self.params) or False
        rule = None if self.plain else self._rule
        if rule is not False and (rule is None or self._cached.packed_supported(None, rule)):
            try:  # plain log-probs, or the contrast family on the packed layout
                return self._cached.score(contexts, continuations, rule=rule)
            except UsageError:  # a rare pair whose context tokenizes differently: score it the generic way
                pass
        scored = score(self.model, self.tok, contexts, continuations, self.strategy, batch_size=self.batch_size,
                       **self.params)
        return [[s.total for s in row] for row in scored]

    def _greedy_strategy(self) -> tuple[str, dict]:
        if self.plain:  # the plain log-prob rule's argmax is greedy decoding
            return "greedy", {}
        params = dict(self.params)
        if "sampling" in getattr(self.strategy.config_cls, "__dataclass_fields__", {}):
            params["sampling"] = False
        return self.strategy.name, params

    def _is_greedy(self, pairs, disable_tqdm: bool) -> list[bool]:
        """Whether decoding with the strategy from each context reproduces its continuation token for token."""
        from contrastkit.decoding.scoring import encode_pair
        from contrastkit.generation import generate

        name, params = self._greedy_strategy()
        # the log-likelihood rule has no repetition penalty (dola's generation preset adds 1.2): ask for its argmax
        params = {**params, "repetition_penalty": 1.0}
        encoded = [encode_pair(self.tok, ctx, cont) for ctx, cont in pairs]
        by_len: dict[int, list[int]] = {}
        for i, (_, x) in enumerate(encoded):
            by_len.setdefault(len(x), []).append(i)
        result = [False] * len(pairs)
        bar = self._bar(len(pairs), "is_greedy", disable_tqdm)
        for n, idx in sorted(by_len.items()):
            if n == 0:
                bar.update(len(idx))
                continue
            outs = generate(self.model, self.tok, [encoded[i][0] for i in idx], name, max_new_tokens=n,
                            batch_size=self.batch_size, seed=self.seed, **params)
            for i, out in zip(idx, outs):
                result[i] = out.token_ids[:n] == encoded[i][1]
            bar.update(len(idx))
        bar.close()
        return result

    # -- loglikelihood_rolling ---------------------------------------------------------------

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows: list[tuple[int, list[int], list[int]]] = []
        for r, req in enumerate(requests):
            (text,) = req.args
            tokens = self.tok(text, add_special_tokens=False)["input_ids"]
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    tokens, self.prefix_token_id, self.max_length, context_len=1)):
                windows.append((r, ctx, cont))
        totals = [0.0] * len(requests)
        bar = self._bar(len(windows), "rolling windows", disable_tqdm)
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start:start + self.batch_size]
            for (r, _, cont), value in zip(chunk, self._score_token_windows([(c, x) for _, c, x in chunk])):
                totals[r] += value
            bar.update(len(chunk))
        bar.close()
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    @torch.no_grad()
    def _score_token_windows(self, windows: list[tuple[list[int], list[int]]]) -> list[float]:
        """Summed rule scores of each window's continuation tokens given its context tokens (one padded batch)."""
        from contrastkit.decoding.scoring import logprob_scorer
        from contrastkit.generation import left_pad

        scorer = self.strategy.scorer or logprob_scorer
        config = self.strategy.make_config(**self.params)
        device = next(self.model.parameters()).device
        input_ids, mask = left_pad(self.tok, [c + x for c, x in windows], device)
        scores = scorer(self.model, input_ids, mask, config).double()  # (B, T-1): [t] scores token t+1
        return [float(scores[b, scores.shape[1] - len(x):].sum()) for b, (_, x) in enumerate(windows)]

    # -- generate_until ----------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from transformers import StoppingCriteriaList, StopStringCriteria

        from contrastkit.generation import generate

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        texts = [""] * len(requests)
        bar = self._bar(len(requests), "generate_until", disable_tqdm)
        for key, idx in groups.items():
            kwargs = dict(requests[idx[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            if kwargs.get("do_sample"):
                log.warning("contrastkit: the task asks for sampling (%s); strategy '%s' decides how to decode",
                            {k: kwargs[k] for k in _SAMPLING_KEYS if k in kwargs}, self.strategy.name)
            keep = max(1, self.max_length - max_new)
            prompts = [self.tok(requests[i].args[0], add_special_tokens=False)["input_ids"][-keep:] for i in idx]
            stop = StoppingCriteriaList([StopStringCriteria(self.tok, until)]) if until else None
            outs = generate(self.model, self.tok, prompts, self.strategy, max_new_tokens=max_new,
                            batch_size=self.batch_size, seed=self.seed, stopping_criteria=stop, **self.params)
            for i, out in zip(idx, outs):
                text = out.text
                for s in until:
                    text = text.split(s)[0]
                texts[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(idx))
        bar.close()
        return texts


_REGISTERED: dict[str, type] = {}


def register() -> type:
    """Build ``ContrastkitLM`` (``_ContrastkitLMImpl`` + lm-eval's ``LM``) and register it as ``contrastkit``."""
    if "cls" not in _REGISTERED:
        try:
            from lm_eval.api.model import LM
            from lm_eval.api.registry import register_model
        except ImportError as e:
            raise UsageError("the lm-eval plugin needs lm-evaluation-harness: pip install 'contrastkit[lm-eval]'") from e
        doc = "An lm-eval ``LM`` whose scores and generations come from a contrastkit strategy (see the module doc)."
        cls = type("ContrastkitLM", (_ContrastkitLMImpl, LM), {"__module__": __name__, "__doc__": doc})
        _REGISTERED["cls"] = register_model("contrastkit")(cls)
    return _REGISTERED["cls"]


def __getattr__(name: str):
    if name == "ContrastkitLM":  # `from contrastkit.eval.lm_eval_model import ContrastkitLM` registers the model
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CLI_STATE: dict[str, bool] = {}
_OFFLINE_ERRORS = ("ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError",
                   "HFValidationError", "RepositoryNotFoundError")


def _one_line_error(e: BaseException) -> str | None:
    """A one-line message for failures that are the user's setup (offline Hub, bad arguments), else None."""
    if isinstance(e, UsageError):
        return str(e)
    chain, cur = [], e
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for err in chain:
        if type(err).__name__ in _OFFLINE_ERRORS or isinstance(err, ConnectionError):
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            return (f"could not reach the Hugging Face Hub ({first[:200]}); lm-eval tasks download their data: "
                    f"run once with network access to fill the datasets cache, or point the task at local files")
    return None


def main(argv: list[str] | None = None) -> int:
    """lm-eval's own command line, with the ``contrastkit`` model registered; one-line errors, exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _CLI_STATE["user_device"] = any(a == "--device" or a.startswith("--device=") for a in argv)
    try:
        register()
        from lm_eval.__main__ import cli_evaluate

        saved, sys.argv = sys.argv, [sys.argv[0], *argv]
        try:
            cli_evaluate()
        finally:
            sys.argv = saved
    except Exception as e:  # noqa: BLE001 - setup failures become one line; real bugs keep their traceback
        msg = _one_line_error(e)
        if msg is None:
            raise
        print(f"contrastkit lm-eval: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
