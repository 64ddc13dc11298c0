"""The lm-eval model plugin: each request type against a slow reference, and lm-eval end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from contrastkit.decoding.scoring import encode_pair, score  # noqa: E402
from contrastkit.errors import UsageError  # noqa: E402
from contrastkit.eval.lm_eval_model import ContrastkitLM  # noqa: E402
from contrastkit.generation import generate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[3]


def _requests(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


def _slow_greedy_check(model, tok, ctx, cont) -> bool:
    c, x = encode_pair(tok, ctx, cont)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([c + x])).logits[0, len(c) - 1:-1]
    return logits.argmax(-1).tolist() == x


def test_loglikelihood_and_is_greedy(tiny_llama, tiny_tok):
    ctx = "Q: what is it?\nA:"
    greedy = generate(tiny_llama, tiny_tok, ctx, "greedy", max_new_tokens=5)[0].token_ids
    # the longest greedy prefix whose text round-trips to the same tokens (random tiny models emit odd merges)
    n = max(k for k in range(1, 6) if encode_pair(tiny_tok, ctx, tiny_tok.decode(greedy[:k]))[1] == greedy[:k])
    cont = tiny_tok.decode(greedy[:n])
    pairs = [(ctx, cont), (ctx, " no idea"), ("Hello", " world"), (ctx, cont[:-1] + "z")]
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok)
    out = lm.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
    ref = [score(tiny_llama, tiny_tok, c, [x], "greedy")[0][0].total for c, x in pairs]
    assert [ll for ll, _ in out] == pytest.approx(ref, abs=1e-4)
    assert [g for _, g in out] == [_slow_greedy_check(tiny_llama, tiny_tok, c, x) for c, x in pairs]
    assert out[0][1] is True
    skip = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok, check_greedy=False)
    assert [g for _, g in skip.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)] == [False] * 4


def test_loglikelihood_under_a_contrastive_rule(tiny_llama, tiny_tok, monkeypatch):
    from contrastkit.eval.truthfulqa import PrefixCachedScorer

    calls = []
    orig = PrefixCachedScorer._forward_packed_rule
    monkeypatch.setattr(PrefixCachedScorer, "_forward_packed_rule", lambda self, *a: calls.append(1) or orig(self, *a))
    pairs = [("Q: is it?\nA:", " yes"), ("Q: is it?\nA:", " no it is not"), ("Other", " thing")]
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok, strategy="dola", check_greedy=False)
    got = [ll for ll, _ in lm.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)]
    assert calls, "the plugin did not use the packed contrast scorer"
    ref = [score(tiny_llama, tiny_tok, c, [x], "dola")[0][0].total for c, x in pairs]
    plain = [score(tiny_llama, tiny_tok, c, [x], "greedy")[0][0].total for c, x in pairs]
    assert got == pytest.approx(ref, abs=1e-4)
    assert got != pytest.approx(plain, abs=1e-3)  # the rule really changed the scores


def test_rolling_loglikelihood(tiny_llama, tiny_tok):
    text = "the quick brown fox jumps over the lazy dog, again and again"
    tokens = tiny_tok(text, add_special_tokens=False)["input_ids"]
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok, batch_size=3)
    prefix = lm.prefix_token_id
    with torch.no_grad():  # one window: log p(tokens | prefix token), as one full sequence
        logits = tiny_llama(input_ids=torch.tensor([[prefix] + tokens])).logits[0, :-1]
    whole = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens)[:, None]).sum().item()
    assert lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [text]), disable_tqdm=True)[0] == \
        pytest.approx(whole, abs=1e-4)
    # short windows: several per text, each conditioned only on its own window
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    lm.max_length = 8
    ref = 0.0
    for c, x in map(make_disjoint_window, get_rolling_token_windows(tokens, prefix, 8, context_len=1)):
        with torch.no_grad():
            lg = tiny_llama(input_ids=torch.tensor([c + x])).logits[0, len(c) - 1:-1]
        ref += torch.log_softmax(lg, -1).gather(-1, torch.tensor(x)[:, None]).sum().item()
    got = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [text, "ab"]), disable_tqdm=True)
    assert got[0] == pytest.approx(ref, abs=1e-4)
    assert got[0] != pytest.approx(whole, abs=1e-3)  # the windows really cut the context


def test_generate_until(tiny_llama, tiny_tok):
    prompt = "Once upon"
    ids = tiny_tok(prompt, add_special_tokens=False)["input_ids"]
    full = generate(tiny_llama, tiny_tok, [ids], "greedy", max_new_tokens=12)[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop and stop in full
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok)
    reqs = _requests("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 12}),
                                        (prompt, {"max_gen_toks": 12, "do_sample": False})])
    got = lm.generate_until(reqs, disable_tqdm=True)
    assert got == [full.split(stop)[0], full]


def test_bad_arguments_fail_before_the_model_loads():
    with pytest.raises(UsageError, match="Did you mean 'greedy'"):
        ContrastkitLM(model="/nonexistent/model", strategy="greedyy")
    with pytest.raises(UsageError, match="Did you mean 'alpha'"):
        ContrastkitLM(model="/nonexistent/model", strategy="icd", alpah=0.1)
    with pytest.raises(UsageError, match="tokenizer"):
        ContrastkitLM(model=torch.nn.Linear(1, 1))


def _tiny_task(tmp_path: Path) -> Path:
    docs = [{"question": "Is the sky blue?", "choices": [" Yes.", " No.", " Only on Tuesdays."], "label": 0},
            {"question": "Do cats purr?", "choices": [" Yes they do.", " Never."], "label": 0},
            {"question": "Who?", "choices": [" Me.", " You.", " Nobody at all."], "label": 2}]
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "ck_tiny_mc.yaml").write_text(
        "task: ck_tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {data}\nvalidation_split: validation\noutput_type: multiple_choice\n"
        "doc_to_text: \"Q: {{question}}\\nA:\"\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    return tmp_path


def test_lm_eval_end_to_end_matches_hf_backend(tiny_llama, tiny_tok, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    assert get_model("contrastkit") is ContrastkitLM
    tasks = TaskManager(include_path=str(_tiny_task(tmp_path)))
    runs = {}
    for name, lm in (("hf", HFLM(pretrained=tiny_llama, tokenizer=tiny_tok, batch_size=4)),
                     ("ck", ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok, check_greedy=False))):
        out = simple_evaluate(model=lm, tasks=["ck_tiny_mc"], task_manager=tasks, log_samples=True,
                              bootstrap_iters=0)
        runs[name] = {s["doc_id"]: ([float(r[0]) for r in s["filtered_resps"]], s["acc"])
                      for s in out["samples"]["ck_tiny_mc"]}
    assert runs["ck"].keys() == runs["hf"].keys() == {0, 1, 2}
    for doc in runs["hf"]:
        assert runs["ck"][doc][0] == pytest.approx(runs["hf"][doc][0], abs=1e-4)
        assert runs["ck"][doc][1] == runs["hf"][doc][1]


def _samples(out: dict, task: str) -> dict:
    return {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in out["samples"][task]}


def test_command_line_runs_lm_eval_with_the_plugin(tiny_model_dir, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from contrastkit.models import load_model

    include = _tiny_task(tmp_path / "tasks")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "contrastkit.eval.lm_eval_model", "--model", "contrastkit",
         "--model_args", f"model={tiny_model_dir},strategy=greedy,check_greedy=false", "--tasks", "ck_tiny_mc",
         "--include_path", str(include), "--output_path", str(out), "--log_samples"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (samples_file,) = list(out.rglob("samples_ck_tiny_mc_*.jsonl"))
    cli = {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]]
           for s in map(json.loads, samples_file.read_text().splitlines())}
    model, tok = load_model(str(tiny_model_dir))  # the same saved model through lm-eval's own hf backend
    ref = _samples(simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=4), tasks=["ck_tiny_mc"],
                                   task_manager=TaskManager(include_path=str(include)), log_samples=True,
                                   bootstrap_iters=0), "ck_tiny_mc")
    assert cli.keys() == ref.keys() == {0, 1, 2}
    for doc in ref:
        assert cli[doc] == pytest.approx(ref[doc], abs=1e-4)


@pytest.mark.integration
def test_smollm2_rolling_and_generation(smollm2, shared_data):
    """On the embedded model: perplexity windows == one full sequence; generate_until under contrastive search."""
    model, tok = smollm2
    raw = (shared_data / "wikitext103_test" / "wiki.test.raw").read_text(encoding="utf-8")
    text = next(p for p in raw.split("\n") if len(p.split()) > 60)[:600]
    lm = ContrastkitLM(model=model, tokenizer=tok, strategy="contrastive", penalty_alpha=0.6, top_k=4)
    tokens = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[lm.prefix_token_id] + tokens])).logits[0, :-1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(tokens)[:, None]).sum().item()
    got = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [text]), disable_tqdm=True)[0]
    assert got == pytest.approx(ref, abs=1e-3)  # contrastive search scores with the plain rule
    prompt = "Q: What is the capital of France?\nA:"
    out = lm.generate_until(_requests("generate_until", [(prompt, {"until": ["\nQ:", "\n\n"], "max_gen_toks": 24})]),
                            disable_tqdm=True)[0]
    full = generate(model, tok, [tok(prompt, add_special_tokens=False)["input_ids"]], "contrastive",
                    max_new_tokens=24, penalty_alpha=0.6, top_k=4)[0].text
    assert out.strip() and out == full.split("\nQ:")[0].split("\n\n")[0]


def test_plugin_cli_offline_is_one_line_exit_2(tiny_model_dir, capsys, monkeypatch, caplog):
    """Offline, lm-eval's dataset download fails: one line, exit 2, and no 'cuda:0 requested' on a CPU machine."""
    pytest.importorskip("lm_eval")
    import datasets

    from contrastkit.eval import lm_eval_model

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    code = lm_eval_model.main(["--model", "contrastkit", "--model_args", f"model={tiny_model_dir}",
                               "--tasks", "truthfulqa_mc1", "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "contrastkit lm-eval: error: could not reach the Hugging Face Hub" in err
    assert "Traceback" not in err and "requested" not in err + caplog.text


def test_one_line_error_walks_the_exception_chain():
    from contrastkit.eval.lm_eval_model import _one_line_error

    try:
        try:
            raise OSError("OfflineModeIsEnabled: no network")
        except OSError as inner:
            raise ConnectionError("Couldn't reach 'x/y' on the Hub") from inner
    except ConnectionError as e:
        assert "Couldn't reach 'x/y'" in _one_line_error(e)
    assert _one_line_error(ValueError("a real bug")) is None


def test_is_greedy_follows_the_scoring_rule_not_the_generation_preset(tiny_llama, tiny_tok):
    """dola's generation preset adds a repetition penalty of 1.2; its log-likelihood rule has none, so
    ``is_greedy`` must ask whether the continuation is the rule's own argmax chain (penalty 1.0)."""
    lm = ContrastkitLM(model=tiny_llama, tokenizer=tiny_tok, strategy="dola")
    found = 0
    for ctx in ("Q: what is it?\nA:", "yes no yes no yes", "the cat saw the cat saw the"):
        plain = generate(tiny_llama, tiny_tok, ctx, "dola", max_new_tokens=6, repetition_penalty=1.0)[0].token_ids
        penal = generate(tiny_llama, tiny_tok, ctx, "dola", max_new_tokens=6)[0].token_ids  # preset: 1.2
        n = next((k for k in range(1, 7) if plain[:k] != penal[:k]), None)
        if n is None or encode_pair(tiny_tok, ctx, tiny_tok.decode(plain[:n]))[1] != plain[:n]:
            continue
        if encode_pair(tiny_tok, ctx, tiny_tok.decode(penal[:n]))[1] != penal[:n]:
            continue
        pairs = [(ctx, tiny_tok.decode(plain[:n])), (ctx, tiny_tok.decode(penal[:n]))]
        out = lm.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
        assert [g for _, g in out] == [True, False]
        found += 1
    assert found, "no context where the preset's repetition penalty changes dola's tokens"
