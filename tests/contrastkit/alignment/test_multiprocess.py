"""accelerate beyond one process: shipped configs parse; DPO and T-REG under 2 gloo CPU processes.

The DPO check is an invariant: 2 processes x per-device batch 1 end with the same adapter as
1 process x batch 2 (same global batch, same seed): DDP averages the per-rank mean losses'
gradients, which is the gradient of the 1-process mean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from contrastkit.testing import JSONRequestHandler

ROOT = Path(__file__).resolve().parents[3]
ACC = ROOT / "contrastkit" / "configs" / "accelerate"
WORDS = "the cat dog bird saw a red blue king queen river city".split()


def write_pairs(path: Path, n=8):
    import random

    rng = random.Random(1)
    w = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    path.write_text("".join(json.dumps({"prompt": w(rng.randint(3, 6)), "chosen": " " + w(rng.randint(2, 5)),
                                        "rejected": " " + w(rng.randint(1, 4))}) + "\n" for _ in range(n)))
    return path


def flags(model_dir, data, out, per_device: int, steps=3):
    return ["--model", str(model_dir), "--train_file", str(data), "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", str(per_device), "--learning_rate", "5e-2", "--logging_steps", "1",
            "--gradient_checkpointing", "false", "--lora_r", "4", "--lora_target_modules", "q_proj,v_proj",
            "--report_to", "none", "--disable_tqdm", "true", "--max_length", "64", "--seed", "0",
            "--save_strategy", "no", "--use_cpu", "true", "--bf16", "false", "--dataloader_num_workers", "0"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run(cmd, timeout=600):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def launch2(method, argv):
    return run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACC / "cpu_2proc.yaml"),
                "-m", "contrastkit.cli.main", "train", method, *argv])


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    expect = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "cpu_2proc": "MULTI_GPU"}
    for name, kind in expect.items():
        path = ACC / f"{name}.yaml"
        cfg = load_config_from_file(str(path))
        assert str(cfg.distributed_type).endswith(kind), (name, cfg.distributed_type)
        assert f"--config_file contrastkit/configs/accelerate/{name}.yaml" in path.read_text()  # its one command
    assert load_config_from_file(str(ACC / "zero2.yaml")).deepspeed_config["zero_stage"] == 2
    assert load_config_from_file(str(ACC / "zero3.yaml")).deepspeed_config["zero_stage"] == 3
    assert load_config_from_file(str(ACC / "fsdp.yaml")).fsdp_config["fsdp_version"] == 2
    doc = (ROOT / "docs" / "scale_out.md").read_text()
    assert all(f"contrastkit/configs/accelerate/{n}.yaml" in doc for n in expect)


def test_two_process_dpo_equals_one_process_same_global_batch(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    data = write_pairs(tmp_path / "pairs.jsonl")
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "contrastkit.cli.main", "train", "dpo", *flags(tiny_model_dir, data, one, 2)])
    launch2("dpo", flags(tiny_model_dir, data, two, 1))
    s1 = json.loads((one / "train_summary.json").read_text())
    s2 = json.loads((two / "train_summary.json").read_text())
    assert (s1["num_processes"], s2["num_processes"]) == (1, 2) and s1["global_step"] == s2["global_step"] == 3
    a, b = load_file(one / "adapter_model.safetensors"), load_file(two / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 8
    moved = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"max |adapter(1 proc) - adapter(2 procs)| = {moved:.3g}")
    assert moved < 1e-5, moved  # same adapter within float tolerance
    assert any(a[k].abs().max() > 1e-3 for k in a if "lora_B" in k), "adapter never moved: test cannot fail"
    l1 = [h["loss"] for h in s1["log_history"] if "loss" in h]
    l2 = [h["loss"] for h in s2["log_history"] if "loss" in h]
    assert torch.allclose(torch.tensor(l1), torch.tensor(l2), atol=1e-5) and l1[0] != l1[-1], (l1, l2)


def test_two_process_treg_trains_and_logs(tmp_path, tiny_model_dir):
    data = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "treg"
    launch2("treg", [*flags(tiny_model_dir, data, out, 1, steps=2), "--treg_alpha", "0.5"])
    s = json.loads((out / "train_summary.json").read_text())
    assert s["num_processes"] == 2 and s["global_step"] == 2
    logs = [h for h in s["log_history"] if "loss" in h]
    assert len(logs) == 2 and all("treg/reg" in h and h["treg/reg"] == h["treg/reg"] for h in logs)
    assert (out / "adapter_model.safetensors").exists()


class _LoRAServer(JSONRequestHandler):
    """Runtime-LoRA endpoints in memory: records loads and which adapter each completion asked for."""

    log: list = []
    loaded: set = set()

    def do_GET(self):
        self._send({"data": [{"id": "base"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/load_lora_adapter":
            assert Path(body["lora_path"], "adapter_model.safetensors").is_file()
            type(self).loaded.add(body["lora_name"])
        elif self.path == "/v1/unload_lora_adapter":
            if body["lora_name"] not in type(self).loaded:
                return self._send({"object": "error", "message": "not found"}, 404)
            type(self).loaded.discard(body["lora_name"])
        elif body["model"] not in type(self).loaded:  # a rank sampled before the adapter was served
            type(self).log.append(("missing", body["model"]))
            return self._send({"error": "adapter not loaded"}, 404)
        type(self).log.append((self.path, body.get("lora_name") or body.get("model")))
        if self.path == "/v1/completions":
            n = body["n"]
            return self._send({"choices": [{"index": i * n + j, "token_ids": [p[-1], 2], "finish_reason": "stop"}
                                           for i, p in enumerate(body["prompt"]) for j in range(n)]})
        text = f"Success: LoRA adapter '{body['lora_name']}' done.".encode()  # vLLM answers in plain text
        self.send_response(200)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


def test_two_process_hypo_vllm_lora_main_rank_syncs_every_rank_samples_it(tmp_path, tiny_model_dir):
    _LoRAServer.log, _LoRAServer.loaded = [], set()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _LoRAServer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        data = write_pairs(tmp_path / "pairs.jsonl")
        out = tmp_path / "hypo"
        launch2("hypo", [*flags(tiny_model_dir, data, out, 1, steps=2), "--hypo_lambda", "1.0",
                         "--hypo_max_new_tokens", "3", "--hypo_sampler", "vllm-lora",
                         "--vllm_server_url", f"http://127.0.0.1:{srv.server_address[1]}"])
    finally:
        srv.shutdown()
        srv.server_close()
    log = _LoRAServer.log
    names = ["contrastkit-policy-step-0", "contrastkit-policy-step-1"]
    assert [x for x in log if x[0] == "/v1/load_lora_adapter"] == [("/v1/load_lora_adapter", n) for n in names]
    asked = [m for p, m in log if p == "/v1/completions"]
    assert asked == [names[0]] * 2 + [names[1]] * 2  # both ranks, each step, on that step's adapter
    s = json.loads((out / "train_summary.json").read_text())
    assert s["num_processes"] == 2 and s["sampler"]["n_syncs"] == 2 and s["sampler"]["max_staleness"] == 0
