"""amateur.py: resolving ``amateur=`` (vocab checks, the per-expert cache, several adapters on one expert), the
layer-spec grammar and the refocus instruction's ids."""

from types import SimpleNamespace

import pytest
import torch

import contrastkit
from contrastkit.decoding.amateur import (
    bind_tokenizer,
    check_vocab,
    instruction_ids,
    parse_layer_spec,
    resolve_amateur,
)
from contrastkit.errors import UsageError
from contrastkit.testing import tiny_llama

N = 4
PROMPTS = ["the cat", "once upon a time there lived a king"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_adapter(path, seed):
    """A random LoRA (non-zero B) for tiny_llama(0, N layers), saved as an adapter directory."""
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(0, init_range=0.3, num_layers=N)  # seeds torch itself: seed the LoRA init after it
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, cfg).save_pretrained(str(path))
    return path


def merged(path):
    from peft import PeftModel

    return PeftModel.from_pretrained(tiny_llama(0, init_range=0.3, num_layers=N), str(path)).merge_and_unload()


def scores(expert, tok, amateur, **kw):
    res = contrastkit.score(expert, tok, PROMPTS[1], [" the dog was red", " a king"], "icd", amateur=amateur, **kw)
    return torch.tensor([s for c in res[0] for s in c.token_scores])


def test_check_vocab_compares_bos_and_eos_ids():
    expert = tiny_llama(0)
    check_vocab(expert, tiny_llama(1))  # same tokenizer: fine
    for attr in ("bos_token_id", "eos_token_id"):
        other = tiny_llama(1)
        setattr(other.config, attr, getattr(other.config, attr) + 7)
        with pytest.raises(UsageError, match=attr):
            check_vocab(expert, other)
        with pytest.raises(UsageError, match=attr):
            resolve_amateur(expert, other)


def test_resolved_amateurs_are_cached_per_expert(tmp_path, tiny_model_dir):
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    adapter = save_adapter(tmp_path / "a", 0)
    first = resolve_amateur(expert, str(adapter))
    assert first.kind == "adapter"
    assert resolve_amateur(expert, str(adapter)) is first
    assert resolve_amateur(expert, adapter) is first  # a Path and its str are one key
    loaded = resolve_amateur(expert, str(tiny_model_dir))
    assert loaded.kind == "model" and resolve_amateur(expert, str(tiny_model_dir)) is loaded
    assert resolve_amateur(tiny_llama(0, init_range=0.3, num_layers=N), str(adapter)) is not first  # per expert


def test_attaching_an_adapter_leaves_the_expert_the_base_model(tmp_path):
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = expert(input_ids=ids).logits
        amateur = resolve_amateur(expert, str(save_adapter(tmp_path / "a", 0)))
        after = expert(input_ids=ids).logits
        with amateur.enabled():
            on = expert(input_ids=ids).logits
        again = expert(input_ids=ids).logits
    assert torch.equal(before, after) and torch.equal(before, again)
    assert not torch.allclose(on, before, atol=1e-3)  # the adapter really is a different model


def _attached(tmp_path, tiny_tok, n):
    paths = [save_adapter(tmp_path / f"a{i}", i + 1) for i in range(n)]
    want = []
    for p in paths:
        expert = tiny_llama(0, init_range=0.3, num_layers=N)
        bind_tokenizer(expert, tiny_tok)
        want.append(scores(expert, tiny_tok, merged(p)))
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    bind_tokenizer(expert, tiny_tok)
    amateurs = [resolve_amateur(expert, str(p)) for p in paths]
    return expert, paths, want, amateurs


def test_several_adapters_on_one_expert_each_score_as_their_merged_model(tmp_path, tiny_tok):
    """Three adapter amateurs attached to one expert (the last attached is the active one): the others, used
    afterwards and in any order, in both the mixed-batch and the sequential plan, score as their own merged model."""
    expert, paths, want, amateurs = _attached(tmp_path, tiny_tok, 3)
    assert len({a.adapter_name for a in amateurs}) == 3 and all(a.model is amateurs[0].model for a in amateurs)
    assert not torch.allclose(want[1], want[2], atol=1e-3)
    for i in (1, 2, 1, 2):
        for mixed in (True, False):
            got = scores(expert, tiny_tok, str(paths[i]), mixed_batch=mixed)
            torch.testing.assert_close(got, want[i], atol=1e-4, rtol=1e-4)


def test_first_adapter_after_another_was_attached_scores_as_its_merged_model(tmp_path, tiny_tok):
    expert, paths, want, _ = _attached(tmp_path, tiny_tok, 2)
    for mixed in (False, True):
        got = scores(expert, tiny_tok, str(paths[0]), mixed_batch=mixed)
        torch.testing.assert_close(got, want[0], atol=1e-4, rtol=1e-4)


def test_parse_layer_spec_buckets_and_middle():
    assert parse_layer_spec("middle", 5, False) == (2,)
    assert parse_layer_spec("middle", 4, False) == (2,)
    assert parse_layer_spec("middle", None, False) == ()
    assert parse_layer_spec("none", 4, False) == () and parse_layer_spec("", 4, False) == ()
    assert parse_layer_spec("high", 32, False) == tuple(range(16, 32, 2))
    assert parse_layer_spec("high", 32, True) == tuple(range(16, 32, 2))  # tied embeddings only move the low start
    assert parse_layer_spec("low", 32, False) == tuple(range(0, 16, 2))
    assert parse_layer_spec("low", 32, True) == tuple(range(2, 16, 2))
    assert parse_layer_spec("high", 48, False) == tuple(range(28, 48, 2))
    assert parse_layer_spec(" 0, 3 ,4 ", 4, False) == (0, 3, 4)  # 0 = embeddings and N = final are both valid
    with pytest.raises(UsageError, match="out of range"):
        parse_layer_spec("5", 4, False)
    with pytest.raises(UsageError, match="out of range"):
        parse_layer_spec("-1", 4, False)


class RecordingTokenizer:
    """A tokenizer stand-in whose ids depend on add_special_tokens (a BOS when True, as real ones add)."""

    def __init__(self):
        self.calls = []

    def __call__(self, text, add_special_tokens=True):
        self.calls.append((text, add_special_tokens))
        return {"input_ids": ([1] if add_special_tokens else []) + [40 + len(w) for w in text.split()]}


def test_instruction_ids_prefer_refocus_ids_then_the_text_without_special_tokens():
    model = tiny_llama(0)
    tok = RecordingTokenizer()
    bind_tokenizer(model, tok)
    cfg = SimpleNamespace(refocus_ids=[3, 4], refocus_instruction="be careful")
    assert instruction_ids(model, cfg, "cpu").tolist() == [3, 4] and tok.calls == []
    cfg = SimpleNamespace(refocus_ids=None, refocus_instruction="be careful")
    ids = instruction_ids(model, cfg, "cpu")
    assert ids.tolist() == [42, 47] and ids.dtype == torch.long
    assert tok.calls == [("be careful", False)]
    with pytest.raises(UsageError, match="empty"):
        instruction_ids(model, SimpleNamespace(refocus_ids=[], refocus_instruction=""), "cpu")


def test_amateur_loaded_from_a_path_takes_the_experts_dtype(tiny_model_dir):
    expert = tiny_llama(0).to(torch.bfloat16)
    amateur = resolve_amateur(expert, str(tiny_model_dir))
    assert amateur.kind == "model" and next(amateur.model.parameters()).dtype == torch.bfloat16


def test_enabled_block_restores_the_base_model_and_bad_amateur_types(tmp_path):
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    amateur = resolve_amateur(expert, str(save_adapter(tmp_path / "a", 0)))
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        base = expert(input_ids=ids).logits
        for _ in range(2):
            with amateur.enabled():
                pass
            assert torch.equal(expert(input_ids=ids).logits, base)
    assert all(layer._disable_adapters for layer in amateur.lora_layers)
    with pytest.raises(UsageError, match="amateur must be"):
        resolve_amateur(expert, 3)


def test_model_layers_uses_the_models_tied_embeddings():
    from contrastkit.decoding.amateur import model_layers
    from contrastkit.testing import tiny_gpt2

    tied = tiny_gpt2(0, num_layers=8)
    assert tied.config.tie_word_embeddings
    assert model_layers(tied, "low") == (2,)  # embeddings are the LM head: hidden_states[0] is skipped
    assert model_layers(tiny_llama(0, num_layers=8), "low") == (0, 2)
    assert model_layers(tied, "middle") == (4,)


def test_dora_adapter_amateur_with_the_default_mixed_batch(tmp_path, tiny_tok):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(0, init_range=0.3, num_layers=N)
    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, use_dora=True)
    get_peft_model(base, cfg).save_pretrained(str(tmp_path / "dora"))
    expert = tiny_llama(0, init_range=0.3, num_layers=N)
    bind_tokenizer(expert, tiny_tok)
    want = scores(expert, tiny_tok, merged(tmp_path / "dora"))
    torch.testing.assert_close(scores(expert, tiny_tok, str(tmp_path / "dora")), want, atol=1e-4, rtol=1e-4)
