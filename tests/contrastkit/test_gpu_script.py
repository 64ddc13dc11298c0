"""benchmarks/gpu.sh: the CPU dry run completes and writes the JSON; the real run refuses without CUDA."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_gpu_script_dry_run_writes_every_section(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(tmp_path), "--dry_run"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert res["dry_run"] is True and res["device"] == "cpu" and res["skipped"] == []
    sec = res["sections"]
    search = {(r["method"], r["batch"]): r for r in sec["greedy_vs_contrastive"]["rows"]}
    assert set(search) == {(m, b) for m in ("greedy", "contrastive k=4", "contrastive k=8") for b in (1, 2)}
    for (m, b), r in search.items():
        g = search[("greedy", b)]["tok_s"]
        assert r["tok_s"] > 0 and math.isclose(r["ratio_to_greedy"], r["tok_s"] / g, rel_tol=1e-9)
    cd = {(r["method"], r["batch"]) for r in sec["cd_family_vs_expert_plus_amateur"]["rows"]}
    assert cd == {(m, b) for m in ("expert greedy + amateur greedy", "cd", "icd", "lol") for b in (1, 2)}
    mc = sec["truthfulqa_mc_scoring"]["rows"]
    assert [r["method"] for r in mc] == ["one answer at a time", "packed, primer cached"]
    assert mc[1]["max_abs_diff_vs_one_at_a_time"] < 1e-3  # packed scores are the same scores
    assert "contrastive_k4_b1_vs_greedy>=0.9" in res["targets"] and "cd_b1_vs_sum<=1.15" in res["targets"]


def test_gpu_script_without_cuda_is_a_clear_error(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "gpu_bench.json").exists()


def test_full_size_model_is_about_1b_parameters():
    import sys

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_bench import BIG
    finally:
        sys.path.pop(0)
    with torch.device("meta"):
        n = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**BIG)).parameters())
    assert 0.9e9 < n < 1.3e9, n
