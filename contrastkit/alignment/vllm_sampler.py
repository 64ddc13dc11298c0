"""On-policy HyPO samplers on vLLM: weight sync with a bounded, logged staleness.

HyPO's online term (arXiv 2406.01462, Alg. 1, line 5) estimates ``grad KL(pi || pi_ref)`` from
samples of the *current* policy ``pi``. A vLLM engine samples from its own copy of the weights,
so every sampler here pushes the policy's weights to the engine before sampling whenever the
copy is ``sync_every`` or more optimizer steps old (``hypo_sync_every``; our knob, the paper
samples on-policy, i.e. ``sync_every = 1``):

* staleness of a batch = ``trainer.state.global_step - step of the pushed weights``; it is always
  ``< sync_every`` (``0`` for every batch with ``sync_every = 1``), recorded per batch in
  ``{output_dir}/hypo_sampler_log.jsonl`` and logged as ``hypo/weights_staleness``.
* the first batch of a run (or of a resumed run) always pushes: the engine's initial weights
  are not assumed to be the policy's.

Transports (``hypo_sampler``):

* ``vllm-colocate`` / ``vllm-server``: trl 1.16's :class:`trl.generation.vllm_generation.VLLMGeneration`
  (the engine wrapper GRPO uses): ``sync_weights()`` handles PEFT merge, FSDP and DeepSpeed
  gathering, then ``load_weights`` in-process (colocate) or vLLM's NCCL weight-transfer engine
  (server, CUDA only). We reuse it rather than a home-made client.
* ``vllm-lora``: a LoRA policy synced without NCCL through vLLM's runtime LoRA endpoints: the
  adapter is saved to ``vllm_lora_dir/step-N`` (a path the server can read), ``POST
  /v1/load_lora_adapter`` registers it as ``<prefix>-step-N``, samples are requested with that
  model name, and the previous adapter is unloaded. Server needs ``--enable-lora
  --max-lora-rank R`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.
* ``vllm-http`` (in :mod:`contrastkit.alignment.sampler`) cannot sync: HyPO refuses it unless
  ``hypo_allow_off_policy`` is set, and the run summary then says ``off_policy: true``.

vLLM is never imported here; trl imports it lazily when a vLLM transport is built.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

import torch

from contrastkit.alignment.sampler import VLLMHTTPSampler, completion_mask_until_eos
from contrastkit.errors import UsageError

__all__ = ["SyncLedger", "TRLVLLMSampler", "VLLMLoRASampler", "SYNCING_SAMPLERS", "check_sampler_options",
           "pad_completions"]

SYNCING_SAMPLERS = ("hf", "vllm-colocate", "vllm-server", "vllm-lora")  # samplers on (near-)current weights


def check_sampler_options(cfg) -> None:
    """Config-time checks for the vLLM samplers (called from ``HyPOConfig.__post_init__``)."""
    from contrastkit.errors import check_range

    if not isinstance(cfg.hypo_sync_every, int) or cfg.hypo_sync_every < 1:
        raise UsageError(f"hypo_sync_every must be an integer >= 1 (1 = sync before every step), "
                         f"got {cfg.hypo_sync_every!r}")
    check_range("vllm_gpu_memory_utilization", cfg.vllm_gpu_memory_utilization, 0, 1, lo_open=True)
    check_range("vllm_tensor_parallel_size", cfg.vllm_tensor_parallel_size, 1)
    samples = cfg.hypo_lambda > 0 or getattr(cfg, "hypo_eval_kl", False)  # training term or held-out KL
    if cfg.hypo_sampler not in SYNCING_SAMPLERS and samples and not cfg.hypo_allow_off_policy:
        raise UsageError(
            f"hypo_sampler '{cfg.hypo_sampler}' cannot push the policy's weights to the server, so its samples "
            f"would come from a stale model and HyPO's KL term would be biased; use vllm-server, vllm-colocate or "
            f"vllm-lora (LoRA), or pass --hypo_allow_off_policy true to accept off-policy samples")


@dataclass
class SyncLedger:
    """Which optimizer step's weights the engine holds, and the staleness of every sampled batch."""

    sync_every: int = 1
    synced_step: int | None = None
    n_syncs: int = 0
    records: list = field(default_factory=list)

    def due(self, step: int) -> bool:
        return self.synced_step is None or step - self.synced_step >= self.sync_every

    def record(self, step: int, synced: bool, n_prompts: int, mode: str = "train") -> dict:
        rec = {"step": step, "weights_step": self.synced_step, "staleness": step - self.synced_step,
               "synced": synced, "n_prompts": n_prompts, "mode": mode}
        self.records.append(rec)
        return rec

    def summary(self) -> dict:
        st = [r["staleness"] for r in self.records]
        return {"sync_every": self.sync_every, "n_syncs": self.n_syncs, "n_batches": len(st),
                "max_staleness": max(st, default=None), "off_policy": False}


def pad_completions(rows: list[list[int]], max_new_tokens: int, pad_id: int, eos_id: int, device=None):
    """(N, C) completions padded with ``pad_id`` after the first EOS, and their mask (EOS kept)."""
    tensors = [torch.tensor(r[:max_new_tokens] or [eos_id], dtype=torch.long) for r in rows]
    out = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=pad_id)  # (N, C)
    lengths = torch.tensor([len(t) for t in tensors])
    mask = completion_mask_until_eos(out, eos_id, lengths)
    out = out.masked_fill(mask == 0, pad_id)
    return out.to(device), mask.to(device)


class _SyncingSampler:
    """Shared loop: push weights when due, sample, record the staleness of the batch."""

    name = "vllm"

    def __init__(self, trainer, tokenizer, sync_every: int = 1):
        self.trainer, self.tokenizer = trainer, tokenizer
        self.ledger = SyncLedger(sync_every=sync_every)

    def _step(self) -> int:
        return int(self.trainer.state.global_step)

    def _is_main(self) -> bool:
        return self.trainer.accelerator.is_main_process

    def _log_path(self) -> str:
        return os.path.join(self.trainer.args.output_dir, "hypo_sampler_log.jsonl")

    def push_weights(self, step: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], k: int, max_new_tokens: int, temperature: float,
                 top_p: float) -> list[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, k: int, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0):
        step = self._step()
        synced = self.ledger.due(step)
        if synced:
            self.push_weights(step)
            self.ledger.synced_step, self.ledger.n_syncs = step, self.ledger.n_syncs + 1
        mode = "train" if self.trainer.model.training else "eval"  # eval: HyPO's held-out KL samples too
        rec = self.ledger.record(step, synced, prompt_ids.shape[0], mode)
        self.trainer._metrics[mode]["hypo/weights_staleness"].append(float(rec["staleness"]))
        if self._is_main():
            os.makedirs(self.trainer.args.output_dir, exist_ok=True)
            with open(self._log_path(), "a") as f:
                f.write(json.dumps({**rec, "sampler": self.name, "time": time.time()}) + "\n")
        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]  # unpadded
        rows = self.generate(prompts, k, max_new_tokens, temperature, top_p)  # N*k lists, prompt-major
        if len(rows) != len(prompts) * k:
            raise UsageError(f"vLLM returned {len(rows)} completions, expected {len(prompts) * k}")
        return pad_completions(rows, max_new_tokens, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                               prompt_ids.device)

    def summary(self) -> dict:
        return {"name": self.name, **self.ledger.summary()}


class TRLVLLMSampler(_SyncingSampler):
    """vLLM through trl's ``VLLMGeneration`` (``mode='colocate'`` or ``'server'``), synced by its ``sync_weights``."""

    def __init__(self, trainer, tokenizer, *, mode: str, sync_every: int = 1, **engine_kwargs):
        super().__init__(trainer, tokenizer, sync_every)
        self.name = f"vllm-{mode}"
        from trl.generation.vllm_generation import VLLMGeneration

        args = trainer.args
        self.engine = VLLMGeneration(trainer.model, trainer.accelerator, tokenizer, mode=mode,
                                     temperature=args.hypo_temperature, top_p=args.hypo_top_p, top_k=0,
                                     max_completion_length=args.hypo_max_new_tokens, logprobs=None,
                                     **engine_kwargs)

    def push_weights(self, step: int) -> None:
        self.engine.sync_weights()

    def generate(self, prompts, k, max_new_tokens, temperature, top_p):
        e = self.engine
        e.temperature, e.top_p, e.max_completion_length = temperature, top_p, max_new_tokens
        repeated = [p for p in prompts for _ in range(k)]  # VLLMGeneration expects k consecutive copies
        _, completion_ids, _, _ = e.generate(repeated, None, k)
        return [list(c) for c in completion_ids]


class VLLMLoRASampler(_SyncingSampler):
    """LoRA sync without NCCL: save the adapter, ``POST /v1/load_lora_adapter``, sample under its name."""

    name = "vllm-lora"

    def __init__(self, trainer, tokenizer, *, base_url: str, lora_dir: str | None = None, sync_every: int = 1,
                 prefix: str = "contrastkit-policy", keep: int = 2, timeout: float = 120.0):
        super().__init__(trainer, tokenizer, sync_every)
        from peft import PeftModel

        if not isinstance(trainer.accelerator.unwrap_model(trainer.model), PeftModel):
            raise UsageError("hypo_sampler 'vllm-lora' syncs a LoRA adapter; this policy has none (use_peft false?). "
                             "Use vllm-server or vllm-colocate for full fine-tuning")
        ds = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if getattr(trainer, "is_fsdp_enabled", False) or (ds is not None and ds.zero_stage == 3):
            raise UsageError("hypo_sampler 'vllm-lora' saves the adapter from the main process, which holds only a "
                             "shard under FSDP / ZeRO-3; use DDP or ZeRO-2 with it, or vllm-server (trl gathers)")
        self.http = VLLMHTTPSampler(base_url, tokenizer, None, timeout)
        self.lora_dir = os.path.abspath(lora_dir or os.path.join(trainer.args.output_dir, "vllm_lora"))
        self.prefix, self.keep, self.loaded = prefix, keep, []

    def _admin(self, path: str, lora_name: str, lora_path: str | None = None, *, missing_ok: bool = False) -> str:
        """POST a runtime-LoRA endpoint. vLLM answers success in plain text ("Success: LoRA adapter ...")
        and errors as JSON with HTTP 400/404; ``missing_ok`` ignores 'not found' on unload."""
        import urllib.error
        import urllib.request

        payload = {"lora_name": lora_name} if lora_path is None else {"lora_name": lora_name, "lora_path": lora_path}
        req = urllib.request.Request(self.http.base_url.rstrip("/") + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.http.timeout) as resp:  # noqa: S310 - user-given URL
                return resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            if missing_ok and e.code in (400, 404):
                return ""
            detail = " ".join(e.read().decode(errors="replace").split())[:300]
            hint = " (start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)" if e.code == 404 else ""
            raise UsageError(f"vLLM server at {self.http.base_url} refused {path} for '{lora_name}': "
                             f"HTTP {e.code} {detail}{hint}") from None
        except (urllib.error.URLError, OSError) as e:
            raise UsageError(f"vLLM server at {self.http.base_url} did not answer {path}: {e}") from None

    def push_weights(self, step: int) -> None:
        name = f"{self.prefix}-step-{step}"
        if self._is_main():
            path = os.path.join(self.lora_dir, f"step-{step}")
            self.trainer.accelerator.unwrap_model(self.trainer.model).save_pretrained(path)
            # a resumed run reuses step names: drop a stale adapter of that name (vLLM refuses a reload)
            self._admin("/v1/unload_lora_adapter", name, missing_ok=True)
            self._admin("/v1/load_lora_adapter", name, path)
            self.loaded.append((name, path))
            while len(self.loaded) > self.keep:
                old, old_path = self.loaded.pop(0)
                self._admin("/v1/unload_lora_adapter", old, missing_ok=True)
                shutil.rmtree(old_path, ignore_errors=True)
        self.trainer.accelerator.wait_for_everyone()  # no rank samples before the adapter is served
        self.http.model_name = name

    def generate(self, prompts, k, max_new_tokens, temperature, top_p):
        n = len(prompts)
        ids = torch.zeros(n, max(map(len, prompts)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left-pad back into the HTTP sampler's input format
            ids[i, ids.shape[1] - len(p):], mask[i, ids.shape[1] - len(p):] = torch.tensor(p), 1
        out, keep = self.http.sample(None, ids, mask, k=k, max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_p=top_p)
        return [row[m.bool()].tolist() for row, m in zip(out, keep)]


def _trainer_or_error(trainer, name: str):
    if trainer is None:
        raise UsageError(f"hypo_sampler '{name}' needs the trainer (it syncs the policy's weights each step)")
    return trainer


def vllm_colocate_sampler(tokenizer, *, trainer=None, **_):
    t = _trainer_or_error(trainer, "vllm-colocate")
    a = t.args
    return TRLVLLMSampler(t, tokenizer, mode="colocate", sync_every=a.hypo_sync_every,
                          gpu_memory_utilization=a.vllm_gpu_memory_utilization,
                          tensor_parallel_size=a.vllm_tensor_parallel_size)


def vllm_server_sampler(tokenizer, *, trainer=None, **_):
    t = _trainer_or_error(trainer, "vllm-server")
    return TRLVLLMSampler(t, tokenizer, mode="server", sync_every=t.args.hypo_sync_every,
                          server_base_url=t.args.vllm_server_url)


def vllm_lora_sampler(tokenizer, *, trainer=None, **_):
    t = _trainer_or_error(trainer, "vllm-lora")
    return VLLMLoRASampler(t, tokenizer, base_url=t.args.vllm_server_url, lora_dir=t.args.vllm_lora_dir,
                           sync_every=t.args.hypo_sync_every)
