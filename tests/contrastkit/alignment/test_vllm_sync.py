"""HyPO on vLLM: every sampling request sees the weights of its step (or <= sync_every-1 steps older).

vLLM is not installed: stand-ins sit at vLLM's boundary. Colocate: trl's ``vllm_generation.LLM``
(``load_weights`` + ``generate``). Server: the HTTP endpoints on 127.0.0.1 plus vLLM's NCCL
broadcast producer (the rendezvous itself needs CUDA). LoRA: the runtime LoRA endpoints, reading
the adapter file the trainer saved. Each stand-in compares what it holds, at every generation
request, with the policy's weights computed here from scratch (W + alpha/r * B @ A).
"""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import torch

datasets = pytest.importorskip("datasets")
from peft import LoraConfig  # noqa: E402

from contrastkit.alignment.configs import HyPOConfig  # noqa: E402
from contrastkit.alignment.trainers import HyPOTrainer  # noqa: E402
from contrastkit.errors import UsageError  # noqa: E402
from contrastkit.testing import JSONRequestHandler  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
R, ALPHA = 4, 8
EOS = 2


def pairs(n=8):
    import random

    rng = random.Random(0)
    words = "the cat dog bird saw a red blue king queen river city".split()
    w = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    return datasets.Dataset.from_list([{"prompt": w(4), "chosen": " " + w(3), "rejected": " " + w(2)} for _ in range(n)])


def make_trainer(tmp_path, sampler: str, steps=4, eval_dataset=None, **extra):
    from contrastkit.testing import tiny_llama, tiny_tokenizer

    args = HyPOConfig(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2, use_cpu=True,
                      bf16=False, report_to="none", logging_steps=1, learning_rate=5e-2, save_strategy="no",
                      gradient_checkpointing=False, seed=0, disable_tqdm=True, hypo_lambda=1.0,
                      hypo_max_new_tokens=4, hypo_sampler=sampler, **extra)
    return HyPOTrainer(model=tiny_llama(init_range=0.3), args=args, train_dataset=pairs(), eval_dataset=eval_dataset,
                       processing_class=tiny_tokenizer(),
                       peft_config=LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"]))


def merged_policy(model) -> dict:
    """vLLM-named full weights of a LoRA policy, from scratch: W + alpha/r * B @ A (no peft merge code)."""
    params = dict(model.named_parameters())
    out = {}
    for name, p in params.items():
        if "lora_" in name:
            continue
        clean = name.removeprefix("base_model.model.").replace(".base_layer", "")
        w = p.detach().clone()
        if ".base_layer." in name:
            stem = name.replace(".base_layer.weight", "")
            a, b = params[f"{stem}.lora_A.default.weight"], params[f"{stem}.lora_B.default.weight"]
            w = w + (ALPHA / R) * (b.detach() @ a.detach())
        out[clean] = w
    return out


def lora_state(model) -> dict:
    return {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


class Witness:
    """Snapshots the policy at each step and checks what the engine holds at each generation request."""

    def __init__(self, snapshot):
        self.snapshot, self.trainer, self.by_step, self.requests, self.updates = snapshot, None, {}, [], []
        self.sample_with = None  # optional engine: (held weights, prompt id lists, sampling kwargs) -> rows

    def see(self, held: dict, *, n_prompts: int):
        if self.trainer is None:  # CLI-level runs: the trainer lives inside run_training
            self.requests.append({"n_prompts": n_prompts})
            return
        step = self.trainer.state.global_step
        self.by_step.setdefault(step, self.snapshot(self.trainer.model))
        matches = [s for s, ref in self.by_step.items()
                   if ref.keys() <= held.keys() and all(torch.allclose(held[k], v, atol=1e-6, rtol=0)
                                                          for k, v in ref.items())]
        self.requests.append({"step": step, "weights_match_steps": matches, "n_prompts": n_prompts})


def fake_rows(prompt: list[int]) -> list[int]:
    return [prompt[-1], 7 + len(prompt) % 5, EOS, 9]  # trailing token after EOS must be masked away


def check_ledger(tmp_path, witness, sync_every: int, steps: int):
    log = [json.loads(line) for line in (tmp_path / "hypo_sampler_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(steps))
    assert [r["staleness"] for r in log] == [s % sync_every for s in range(steps)]
    assert [r["synced"] for r in log] == [s % sync_every == 0 for s in range(steps)]
    assert len(witness.requests) == steps
    for req, rec in zip(witness.requests, log):
        assert rec["weights_step"] in req["weights_match_steps"], (req, rec)  # engine held that step's weights
        # and not the current weights when stale (the policy moved: lr is large)
        assert (req["step"] in req["weights_match_steps"]) == (rec["staleness"] == 0), (req, rec)


# ---------------------------------------------------------------- colocate: stand-in for vllm.LLM
@pytest.fixture
def fake_vllm_colocate(monkeypatch):
    import trl.generation.vllm_generation as vg

    witness = Witness(merged_policy)

    class FakeLLM:
        def __init__(self, model=None, **kwargs):
            self.held, self.kwargs = {}, kwargs
            runner = SimpleNamespace(model=SimpleNamespace(load_weights=self.load_weights))
            self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=runner)))

        def load_weights(self, weights):
            for name, p in weights:
                self.held[name] = p.detach().clone()
                witness.updates.append(name)

        def reset_prefix_cache(self):
            pass

        def generate(self, prompts, sampling_params=None, use_tqdm=False):
            assert sampling_params.kwargs["n"] == 1 and sampling_params.kwargs["temperature"] == 1.0
            witness.see(self.held, n_prompts=len(prompts))
            ids = [p["prompt_token_ids"] for p in prompts]
            rows = (witness.sample_with(self.held, ids, sampling_params.kwargs) if witness.sample_with
                    else [fake_rows(p) for p in ids])
            return [SimpleNamespace(prompt_token_ids=p, outputs=[SimpleNamespace(token_ids=r, logprobs=None)])
                    for p, r in zip(ids, rows)]

    class FakeSamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setattr(vg, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(vg, "LLM", FakeLLM, raising=False)
    monkeypatch.setattr(vg, "SamplingParams", FakeSamplingParams, raising=False)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # trl sets these; restore after
        monkeypatch.setenv(var, {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.get(var, "x"))
        monkeypatch.delenv(var)
    return witness


@pytest.mark.parametrize("sync_every", [1, 2])
def test_colocate_each_request_sees_its_steps_weights(tmp_path, fake_vllm_colocate, sync_every):
    witness = fake_vllm_colocate
    trainer = make_trainer(tmp_path, "vllm-colocate", hypo_sync_every=sync_every)
    witness.trainer = trainer
    trainer.train()
    check_ledger(tmp_path, witness, sync_every, 4)
    summary = trainer._sampler.summary()
    assert summary["n_syncs"] == len(range(0, 4, sync_every)) and summary["max_staleness"] == sync_every - 1
    assert summary["name"] == "vllm-colocate" and summary["off_policy"] is False
    logged = [h["hypo/weights_staleness"] for h in trainer.state.log_history if "hypo/weights_staleness" in h]
    assert logged == [float(s % sync_every) for s in range(4)]


def test_colocate_on_policy_trains_exactly_like_hf_sampling(tmp_path, fake_vllm_colocate):
    """End to end: an engine that samples with the weights it was pushed (plain Llama, merged LoRA, HF's
    ancestral sampling on the same left-padded batch and RNG) makes HyPO train as the HF sampler does."""
    from transformers import LlamaForCausalLM

    from contrastkit.testing import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    engine: LlamaForCausalLM = tiny_llama(seed=123)  # its own random weights, replaced by every push

    def sample_with(held, prompts, kw):
        engine.load_state_dict(held, strict=True)
        width = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = engine.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=kw["top_p"],
                                  temperature=kw["temperature"], max_new_tokens=kw["max_tokens"],
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        rows = out[:, width:].tolist()
        return [r[: r.index(tok.eos_token_id) + 1] if tok.eos_token_id in r else r for r in rows]

    fake_vllm_colocate.sample_with = sample_with
    ref = make_trainer(tmp_path / "hf", "hf", steps=3)
    ref.train()
    trainer = make_trainer(tmp_path / "vllm", "vllm-colocate", steps=3, hypo_sync_every=1)
    fake_vllm_colocate.trainer = trainer
    trainer.train()
    keys = ("loss", "hypo/kl", "hypo/gen_len", "hypo/surrogate")
    a = [[h[k] for k in keys] for h in ref.state.log_history if "loss" in h]
    b = [[h[k] for k in keys] for h in trainer.state.log_history if "loss" in h]
    assert len(a) == 3 and torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5), (a, b)
    assert len({round(r[1], 6) for r in a}) > 1  # the KL moved: the samples mattered


def test_colocate_eval_kl_samples_on_current_weights(tmp_path, fake_vllm_colocate):
    witness = fake_vllm_colocate
    trainer = make_trainer(tmp_path, "vllm-colocate", hypo_sync_every=1, eval_strategy="steps", eval_steps=2,
                           per_device_eval_batch_size=4, eval_dataset=pairs(4))
    witness.trainer = trainer
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "hypo_sampler_log.jsonl").read_text().splitlines()]
    assert [(r["mode"], r["step"]) for r in log] == [("train", 0), ("train", 1), ("eval", 2), ("train", 2),
                                                     ("train", 3), ("eval", 4)]
    assert all(r["staleness"] == 0 for r in log) and [r["synced"] for r in log] == [1, 1, 1, 0, 1, 1]
    assert all(req["step"] in req["weights_match_steps"] for req in witness.requests)  # eval on current weights
    evals = [h for h in trainer.state.log_history if "eval_hypo/weights_staleness" in h]
    assert [h["step"] for h in evals] == [2, 4] and all("hypo/weights_staleness" not in h for h in evals)


def test_colocate_samples_reach_the_loss_masked_after_eos(tmp_path, fake_vllm_colocate):
    witness = fake_vllm_colocate
    trainer = make_trainer(tmp_path, "vllm-colocate", steps=1)
    witness.trainer = trainer
    prompts = torch.tensor([[0, 11, 12], [13, 14, 15]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    out, keep = trainer._sampler.sample(None, prompts, mask, k=2, max_new_tokens=4)
    assert out.tolist() == [[12, 9, EOS, 0]] * 2 + [[15, 10, EOS, 0]] * 2  # token after EOS -> pad
    assert keep.tolist() == [[1, 1, 1, 0]] * 4


# ---------------------------------------------------------------- server: HTTP endpoints + NCCL producer
class _Handler(JSONRequestHandler):
    engine = None

    def do_GET(self):
        self._send(self.engine.get(self.path.split("?")[0]))

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(n)) if n else {}
        try:
            out = self.engine.post(self.path, payload)
        except LookupError as e:  # vLLM: JSON error body, 404 for an unknown adapter/model, 400 for a duplicate
            return self._send({"object": "error", "message": str(e)}, 400 if isinstance(e, IndexError) else 404)
        if isinstance(out, str):  # vLLM answers the runtime-LoRA endpoints in plain text
            body = out.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        self._send(out)


class FakeServer:
    """vLLM's OpenAI server + dev weight-transfer endpoints + runtime LoRA endpoints, in memory."""

    def __init__(self, witness, lora_key=None):
        self.witness, self.held, self.adapters, self.pending, self.lora_key = witness, {}, {}, None, lora_key
        self.calls, self.broadcast_done, self.neutral = [], threading.Event(), []

    def get(self, path):
        self.calls.append(path)
        return {"/v1/models": {"data": [{"id": "base"}]}, "/health": {}, "/get_world_size": {"world_size": 1},
                "/server_info": {"vllm_config": {"weight_transfer_config": {"backend": "nccl"}}}}[path]

    def post(self, path, payload):
        self.calls.append(path)
        if path == "/update_weights":  # blocks in the NCCL receive until the trainer's broadcast is done
            assert self.broadcast_done.wait(30)
            self.broadcast_done.clear()
            assert list(self.pending) == payload["update_info"]["names"]
            self.held.update(self.pending)
        elif path == "/v1/load_lora_adapter":
            from safetensors.torch import load_file

            if payload["lora_name"] in self.adapters:
                raise IndexError(f"The lora adapter '{payload['lora_name']}' has already been loaded.")
            state = load_file(f"{payload['lora_path']}/adapter_model.safetensors")
            self.adapters[payload["lora_name"]] = {self.lora_key(k): v for k, v in state.items()}
            return f"Success: LoRA adapter '{payload['lora_name']}' added successfully."
        elif path == "/v1/unload_lora_adapter":
            if payload["lora_name"] not in self.adapters:
                raise KeyError(f"The lora adapter '{payload['lora_name']}' cannot be found.")
            del self.adapters[payload["lora_name"]]
            return f"Success: LoRA adapter '{payload['lora_name']}' removed successfully."
        elif path == "/v1/completions":
            # neutral sampling said explicitly (else vLLM fills it from generation_config.json)
            self.neutral.append({k: payload.get(k) for k in ("top_k", "min_p", "repetition_penalty")})
            held = self.adapters[payload["model"]] if self.lora_key else self.held
            self.witness.see(held, n_prompts=len(payload["prompt"]))
            return {"choices": [{"index": i * payload["n"] + j, "token_ids": fake_rows(p), "prompt_token_ids": p,
                                 "logprobs": None, "finish_reason": "stop"}
                                for i, p in enumerate(payload["prompt"]) for j in range(payload["n"])]}
        return {"success": True}


@pytest.fixture
def serve():
    servers = []

    def start(engine):
        handler = type("H", (_Handler,), {"engine": engine})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_server_mode_each_request_sees_its_steps_weights(tmp_path, serve, monkeypatch):
    import trl.generation.vllm_client as vc
    import trl.generation.vllm_generation as vg

    witness = Witness(merged_policy)
    engine = FakeServer(witness)
    url = serve(engine)

    def producer(iterator, group, src, post_iter_func):  # stand-in for vLLM's packed NCCL broadcast
        assert group == "fake-nccl-group" and src == 0
        engine.pending = {name: post_iter_func((name, t)).detach().clone() for name, t in iterator}
        witness.updates.append(len(engine.pending))
        engine.broadcast_done.set()

    def init_communicator(self, device=0):  # the NCCL rendezvous needs CUDA; the HTTP half is kept
        assert self.get_server_info()["weight_transfer_config"] is not None
        self._post(f"{self.base_url}/init_weight_transfer_engine", json={"init_info": {"world_size": 2}})
        self.communicator = "fake-nccl-group"

    for mod in (vc, vg):
        monkeypatch.setattr(mod, "is_vllm_available", lambda *a, **k: True)
    monkeypatch.setattr(vc, "_HAS_STATEFUL_TRAINER_ENGINE", True)
    monkeypatch.setattr(vc, "_HAS_RESET_PREFIX_CACHE_SUCCESS", True)
    monkeypatch.setattr(vc, "packed_nccl_broadcast_producer", producer, raising=False)
    monkeypatch.setattr(vc.VLLMClient, "init_communicator", init_communicator)
    trainer = make_trainer(tmp_path, "vllm-server", hypo_sync_every=3, vllm_server_url=url)
    witness.trainer = trainer
    trainer.train()
    check_ledger(tmp_path, witness, 3, 4)
    assert engine.neutral == [{"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}] * 4  # trl says them too
    assert engine.calls.count("/update_weights") == 2 and engine.calls.count("/reset_prefix_cache") == 2
    order = [c for c in engine.calls if c in ("/update_weights", "/v1/completions")]
    assert order == ["/update_weights", "/v1/completions", "/v1/completions", "/v1/completions",
                     "/update_weights", "/v1/completions"]


# ---------------------------------------------------------------- LoRA through runtime endpoints
def test_lora_endpoint_sync_sends_the_current_adapter(tmp_path, serve):
    witness = Witness(lora_state)
    engine = FakeServer(witness, lora_key=lambda k: k)
    engine.adapters["contrastkit-policy-step-0"] = {"stale": torch.zeros(1)}  # left by a killed earlier run
    url = serve(engine)
    trainer = make_trainer(tmp_path, "vllm-lora", vllm_server_url=url)
    witness.trainer = trainer
    trainer.train()
    check_ledger(tmp_path, witness, 1, 4)
    assert engine.neutral == [{"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}] * 4
    loads = [c for c in engine.calls if c == "/v1/load_lora_adapter"]
    assert len(loads) == 4 and sorted(engine.adapters) == ["contrastkit-policy-step-2", "contrastkit-policy-step-3"]
    assert sorted(p.name for p in (tmp_path / "vllm_lora").iterdir()) == ["step-2", "step-3"]


def test_lora_sampler_refuses_full_finetune(tmp_path):
    from contrastkit.alignment.sampler import make_sampler
    from contrastkit.testing import tiny_llama, tiny_tokenizer

    args = SimpleNamespace(output_dir=str(tmp_path), hypo_sync_every=1, vllm_server_url="http://127.0.0.1:9",
                           vllm_lora_dir=None)
    trainer = SimpleNamespace(model=tiny_llama(), args=args, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    with pytest.raises(UsageError, match="LoRA adapter"):
        make_sampler("vllm-lora", tiny_tokenizer(), trainer=trainer)
    from peft import get_peft_model

    sharded = SimpleNamespace(model=get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"])),
                              args=args, is_fsdp_enabled=True,
                              accelerator=SimpleNamespace(unwrap_model=lambda m: m, state=SimpleNamespace()))
    with pytest.raises(UsageError, match="FSDP / ZeRO-3"):
        make_sampler("vllm-lora", tiny_tokenizer(), trainer=sharded)
    with pytest.raises(UsageError, match="needs the trainer"):
        make_sampler("vllm-server", tiny_tokenizer())


# ---------------------------------------------------------------- refusal without sync, opt-in recorded
def test_unsynced_sampler_refused_unless_off_policy_opt_in(tmp_path):
    kw = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    with pytest.raises(UsageError, match="hypo_allow_off_policy"):
        HyPOConfig(hypo_sampler="vllm-http", **kw)
    HyPOConfig(hypo_sampler="vllm-http", hypo_allow_off_policy=True, **kw)
    HyPOConfig(hypo_sampler="vllm-http", hypo_lambda=0.0, hypo_eval_kl=False, **kw)  # nothing is sampled
    with pytest.raises(UsageError, match="hypo_allow_off_policy"):  # the held-out KL at eval samples too
        HyPOConfig(hypo_sampler="vllm-http", hypo_lambda=0.0, hypo_eval_kl=True, **kw)
    for s in ("vllm-server", "vllm-colocate", "vllm-lora", "hf"):
        HyPOConfig(hypo_sampler=s, **kw)
    for bad in (0, -1, 1.5):
        with pytest.raises(UsageError, match="hypo_sync_every must be an integer >= 1"):
            HyPOConfig(hypo_sampler="vllm-server", hypo_sync_every=bad, **kw)


def test_ledger_sync_rule_boundaries():
    from contrastkit.alignment.vllm_sampler import SyncLedger

    led = SyncLedger(sync_every=3)
    assert led.due(0)  # never synced: always push first
    led.synced_step = 5
    assert [led.due(s) for s in (5, 6, 7, 8, 9)] == [False, False, False, True, True]


# ---------------------------------------------------------------- CLI level: refusal, opt-in and summary
def _cli_flags(tiny_model_dir, data, out, url, *extra):
    return ["--model", str(tiny_model_dir), "--train_file", str(data), "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "2", "--learning_rate", "5e-3", "--logging_steps", "1",
            "--gradient_checkpointing", "false", "--lora_r", "4", "--lora_target_modules", "q_proj,v_proj",
            "--report_to", "none", "--disable_tqdm", "true", "--max_length", "64", "--hypo_max_new_tokens", "4",
            "--save_strategy", "no", "--vllm_server_url", url, *extra]


def test_cli_refuses_unsynced_sampler_before_model_load(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import contrastkit.models
    from contrastkit.cli.main import main

    monkeypatch.setattr(contrastkit.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs().to_list()))
    code = main(["train", "hypo", *_cli_flags(tiny_model_dir, data, tmp_path / "o", "http://127.0.0.1:9"),
                 "--hypo_sampler", "vllm-http"])
    err = capsys.readouterr().err
    assert code == 2 and "--hypo_allow_off_policy true" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sampler, extra, expect", [
    ("vllm-http", ["--hypo_allow_off_policy", "true"], {"name": "vllm-http", "off_policy": True, "n_syncs": 0}),
    ("vllm-lora", ["--hypo_sync_every", "2"], {"name": "vllm-lora", "off_policy": False, "n_syncs": 2,
                                                "sync_every": 2, "max_staleness": 1, "n_batches": 3}),
])
def test_cli_run_summary_records_sampler(tmp_path, tiny_model_dir, serve, sampler, extra, expect):
    from contrastkit.alignment.configs import HyPOConfig as Cfg
    from contrastkit.cli.train_common import parse_configs, run_training

    engine = FakeServer(Witness(lora_state), lora_key=(lambda k: k) if sampler == "vllm-lora" else None)
    url = serve(engine)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pairs().to_list()))
    summary = run_training("hypo", *parse_configs("t", Cfg, [*_cli_flags(tiny_model_dir, data, tmp_path / "o", url),
                                                            "--hypo_sampler", sampler, *extra]))
    assert {k: summary["sampler"][k] for k in expect} == expect
    saved = json.loads((tmp_path / "o" / "train_summary.json").read_text())
    assert saved["sampler"] == summary["sampler"] and len(engine.witness.requests) == 3


def test_lora_sync_without_runtime_lora_is_one_line_error(tmp_path, serve):
    class NoLoRA(FakeServer):
        def post(self, path, payload):
            if "lora_adapter" in path:
                raise KeyError("Not Found")
            return super().post(path, payload)

    url = serve(NoLoRA(Witness(lora_state), lora_key=lambda k: k))
    trainer = make_trainer(tmp_path, "vllm-lora", steps=1, vllm_server_url=url)
    with pytest.raises(UsageError, match="refused /v1/load_lora_adapter .* HTTP 404 .*--enable-lora"):
        trainer.train()
