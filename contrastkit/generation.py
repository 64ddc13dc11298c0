"""Python API: ``contrastkit.generate(model, tokenizer, prompts, strategy=..., **params)``.

Prompts are encoded (text, chat messages, or token ids used verbatim), batched with left
padding and handed to ``model.generate(custom_generate=<strategy>)``, so this API runs exactly
the code that HF ``generate`` and pipelines run.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch

from contrastkit.decoding.base import DecodingStrategy, get_strategy
from contrastkit.errors import UsageError

Prompt = str | dict | Sequence[int]


@dataclass
class GenerationResult:
    """One generated continuation (one output JSONL record)."""

    prompt: str
    text: str
    token_ids: list[int]
    strategy: str
    params: dict[str, Any]
    prompt_tokens: int
    new_tokens: int
    time_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def context_length(model) -> int | None:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(cfg, name, None):
            return int(getattr(cfg, name))
    return None


def encode_prompt(tokenizer, item: Prompt, *, chat: bool = False, where: str = "prompt") -> tuple[list[int], str]:
    """Turn one prompt into ``(token_ids, display_text)``.

    ``item`` is a string, a list of token ids (used verbatim), or a dict with exactly one of
    ``prompt`` (text), ``messages`` (chat; the chat template is applied) or ``input_ids``.
    With ``chat=True`` a plain text prompt is wrapped as a single user message.
    """
    if isinstance(item, dict):
        keys = [k for k in ("prompt", "messages", "input_ids") if k in item]
        if len(keys) != 1:
            raise UsageError(f"{where}: a record needs exactly one of 'prompt', 'messages' or 'input_ids', got {sorted(item)}")
        key = keys[0]
        value = item[key]
        if key == "prompt":
            return encode_prompt(tokenizer, value, chat=chat, where=where)
        if key == "input_ids":
            return encode_prompt(tokenizer, value, where=where)
        return _encode_messages(tokenizer, value, where)
    if isinstance(item, str):
        if not item.strip():
            raise UsageError(f"{where} is empty")
        if chat:
            return _encode_messages(tokenizer, [{"role": "user", "content": item}], where)
        ids = tokenizer(item, add_special_tokens=True)["input_ids"]
        return list(ids), item
    if isinstance(item, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
        if not item:
            raise UsageError(f"{where}: input_ids is empty")
        vocab = len(tokenizer)
        bad = [t for t in item if t < 0 or t >= vocab]
        if bad:
            raise UsageError(f"{where}: token id {bad[0]} is outside the vocabulary [0, {vocab - 1}]")
        return list(item), tokenizer.decode(item)
    raise UsageError(f"{where}: expected text, a list of token ids, or a record, got {type(item).__name__}")


def _encode_messages(tokenizer, messages, where: str) -> tuple[list[int], str]:
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise UsageError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    if any(not str(m.get("content", "")).strip() for m in messages):
        raise UsageError(f"{where}: a chat message has empty content")
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"{where}: this tokenizer has no chat template, so 'messages' / --chat cannot be used")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids), text


def left_pad(tokenizer, batch: list[list[int]], device, *, right: bool = False) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Left-pad (or, ``right=True``, right-pad) token id lists into ``(input_ids, attention_mask)`` (B, T).

    Decoder-only prompts are left padded (generation continues at the right edge); encoder inputs
    of encoder-decoder models are right padded, as their absolute position embeddings (BART) expect.
    """
    T = max(len(ids) for ids in batch)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(batch), T), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, ids in enumerate(batch):  # per-row copy at encode time, not in a decoding loop
        cols = slice(0, len(ids)) if right else slice(T - len(ids), T)
        input_ids[i, cols] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, cols] = 1
    return input_ids.to(device), attention_mask.to(device)


def check_lengths(model, encoded: list[list[int]], max_new_tokens: int, where: Iterable[str]) -> None:
    limit = context_length(model)
    if limit is None:
        return
    for ids, w in zip(encoded, where):
        if len(ids) + max_new_tokens > limit:
            raise UsageError(
                f"{w} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} that exceeds the model's context "
                f"of {limit} tokens (keep prompt + max_new_tokens <= {limit})"
            )


def trim_generated(new_ids: list[int], eos_ids: set[int]) -> list[int]:
    """Cut a row's new tokens after its first EOS (finished rows are padded after that)."""
    for i, t in enumerate(new_ids):
        if t in eos_ids:
            return new_ids[: i + 1]
    return new_ids


def eos_token_ids(model, tokenizer) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = eos if isinstance(eos, (list, tuple)) else [eos]
    return {int(i) for i in ids if i is not None}


def generate(
    model,
    tokenizer,
    prompts: Prompt | Sequence[Prompt],
    strategy: str | DecodingStrategy = "greedy",
    *,
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    chat: bool = False,
    batch_size: int = 8,
    seed: int | None = 0,
    streamer=None,
    logits_processor=None,
    stopping_criteria=None,
    repetition_penalty: float | None = None,
    stop: str | Sequence[str] | None = None,
    progress: bool = False,
    **params: Any,
) -> list[GenerationResult]:
    """Generate a continuation for each prompt with a registered strategy.

    Args:
        model, tokenizer: from :func:`contrastkit.load_model`.
        prompts: one prompt or a list (text, token ids, or ``{"prompt"|"messages"|"input_ids": ...}``).
        strategy: a registered name (``contrastkit strategies`` lists them) or a :class:`DecodingStrategy`.
        max_new_tokens, min_new_tokens: length limits (HF semantics).
        chat: wrap text prompts as a user message and apply the chat template.
        batch_size: prompts per left-padded batch.
        seed: seeds torch's RNG before each batch (and ``sample``'s generator unless given).
        streamer: an HF streamer (``TextStreamer``...), for a single prompt.
        logits_processor, stopping_criteria: extra HF processors / criteria.
        repetition_penalty: HF's ``RepetitionPenaltyLogitsProcessor`` (CTRL rule, > 0; 1 = off). None = the
            strategy's default: 1.2 for ``dola`` (DoLa's code and HF's docs), 1.0 (off) for the others.
        stop: stop string(s): a row stops once its text ends with one (HF's ``StopStringCriteria``); the
            stop string is kept in ``text`` / ``token_ids``, as HF keeps it.
        **params: the strategy's own parameters (validated by its config class).

    Returns:
        One :class:`GenerationResult` per prompt, in order.

    Example:
        >>> model, tok = contrastkit.load_model("smollm2")  # doctest: +SKIP
        >>> contrastkit.generate(model, tok, "Once upon a time", "greedy", max_new_tokens=16)[0].text  # doctest: +SKIP
    """
    strat = get_strategy(strategy)
    config = strat.make_config(**params)
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise UsageError(f"min_new_tokens must be in [0, max_new_tokens={max_new_tokens}], got {min_new_tokens}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if repetition_penalty is None:
        repetition_penalty = float(strat.generate_defaults.get("repetition_penalty", 1.0))
    if not (isinstance(repetition_penalty, (int, float)) and repetition_penalty > 0):
        raise UsageError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty!r}")
    stops = stop_strings(stop)
    if isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
        prompts = [prompts]  # type: ignore[list-item]
    if not prompts:
        raise UsageError("no prompts given")
    if streamer is not None and (len(prompts) != 1 or not strat.streams):
        raise UsageError(f"streaming needs exactly one prompt and a streaming strategy ('{strat.name}' given)")
    where = [f"prompt {i + 1}" for i in range(len(prompts))]
    encoded = [encode_prompt(tokenizer, p, chat=chat, where=w) for p, w in zip(prompts, where)]
    check_lengths(model, [ids for ids, _ in encoded], max_new_tokens, where)
    if seed is not None and getattr(config, "seed", 0) is None:  # a strategy's own generator follows the run seed
        config = dataclasses.replace(config, seed=seed)
    gen_kwargs = strat.generate_kwargs(config)
    active: list[str] = []
    gen_kwargs["custom_generate"] = recording(gen_kwargs["custom_generate"], active)
    criteria = list(stopping_criteria or [])
    if stops:
        from transformers import StopStringCriteria

        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stops))
    if streamer is not None:
        gen_kwargs["token_streamer"] = streamer
    eos = eos_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    results: list[GenerationResult] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(encoded), desc=f"generate[{strat.name}]", unit="prompt")
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        input_ids, attention_mask = left_pad(tokenizer, [ids for ids, _ in chunk], device,
                                             right=bool(getattr(model.config, "is_encoder_decoder", False)))
        if seed is not None:
            torch.manual_seed(seed + start)
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens or None, pad_token_id=tokenizer.pad_token_id, do_sample=False,
            repetition_penalty=float(repetition_penalty), logits_processor=logits_processor,
            stopping_criteria=criteria or None, **gen_kwargs,
        )
        elapsed = time.perf_counter() - t0
        sequences = out.sequences if hasattr(out, "sequences") else out
        # encoder-decoder: the decoder's output starts with its start token, not with the prompt
        first_new = 1 if getattr(model.config, "is_encoder_decoder", False) else input_ids.shape[1]
        new = sequences[:, first_new:].tolist()
        for (ids, text), row in zip(chunk, new):
            row = trim_at_stop(tokenizer, trim_generated(row, eos), stops)
            results.append(GenerationResult(
                prompt=text, text=tokenizer.decode(row, skip_special_tokens=True), token_ids=row,
                strategy=strat.name, params=dict(gen_kwargs_for_record(config)), prompt_tokens=len(ids),
                new_tokens=len(row), time_s=elapsed / len(chunk),
                extra={"batch_time_s": elapsed, "repetition_penalty": float(repetition_penalty), "stop": stops,
                       "processors": list(active)},
            ))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return results


def gen_kwargs_for_record(config) -> dict:
    return {k: v for k, v in asdict(config).items() if not hasattr(v, "forward")}  # drop model objects


def stop_strings(stop) -> list[str]:
    """Normalise ``stop`` (None, a string, or a list of strings) to a list of non-empty strings."""
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(x, str) and x for x in items):
        raise UsageError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return items


def trim_at_stop(tokenizer, new_ids: list[int], stops: list[str]) -> list[int]:
    """Cut a row right after the first token whose text completes a stop string (pads after it go)."""
    if not stops or not any(s in tokenizer.decode(new_ids) for s in stops):
        return new_ids
    lo, hi = 1, len(new_ids)  # smallest prefix whose text contains a stop string (monotone in the length)
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in tokenizer.decode(new_ids[:mid]) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return new_ids[:lo]


def describe_processor(proc) -> str:
    """``ClassName(key=value, ...)`` of a logits processor's scalar settings, for the output records."""
    fields = {k: v for k, v in vars(proc).items()
              if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and not isinstance(v, type)}
    inner = ", ".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return f"{type(proc).__name__}({inner})"


def recording(custom_generate, sink: list):
    """Wrap a strategy callable so the processors HF hands it are written to ``sink`` (same signature)."""

    @functools.wraps(custom_generate)
    def wrapper(model, input_ids, logits_processor, stopping_criteria, generation_config, *args, **kwargs):
        sink[:] = [describe_processor(p) for p in (logits_processor or [])]
        return custom_generate(model, input_ids, logits_processor, stopping_criteria, generation_config,
                               *args, **kwargs)

    return wrapper
