"""`contrastkit train treg-heatmap`: the rendered rewards are T-REG's (better vs worse, chosen vs rejected,
max_length), as many pairs as asked, and bad templates / counts exit 2."""

from __future__ import annotations

import json
import random

import pytest

from contrastkit.cli.main import main as ck

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "the cat dog bird saw a red blue king queen river city".split()


def write_pairs(path, n=4):
    rng = random.Random(0)
    words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": words(4), "chosen": " " + words(5), "rejected": " " + words(2)}) + "\n")
    return path


@pytest.fixture
def captured(monkeypatch):
    import contrastkit.alignment.token_rewards as tr

    seen = []

    def fake_render(rows, tok):
        seen.append([dict(r) for r in rows])
        return "<html>heatmap</html>"

    monkeypatch.setattr(tr, "render_heatmap", fake_render)
    return seen


@pytest.mark.parametrize("max_length", [None, 7])
def test_rendered_rewards_are_treg_rewards(max_length, captured, tiny_model_dir, tmp_path, capsys):
    from contrastkit.alignment.configs import DEFAULT_BETTER_TEMPLATE, DEFAULT_WORSE_TEMPLATE
    from contrastkit.alignment.token_rewards import compute_token_rewards
    from contrastkit.models import load_model

    data = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "h.html"
    argv = ["train", "treg-heatmap", "--model", str(tiny_model_dir), "--train_file", str(data), "--num_examples", "2",
            "--output", str(out)] + (["--max_length", str(max_length)] if max_length else [])
    assert ck(argv) == 0, capsys.readouterr().err
    assert "token rewards of 2 pairs" in capsys.readouterr().out
    assert out.read_text() == "<html>heatmap</html>"
    (rows,) = captured
    assert len(rows) == 2
    model, tok = load_model(str(tiny_model_dir))
    plain = [{k: v for k, v in r.items() if not k.endswith("_token_rewards")} for r in rows]
    ref = compute_token_rewards(model, tok, plain, DEFAULT_BETTER_TEMPLATE, DEFAULT_WORSE_TEMPLATE,
                                max_length=max_length or 1024)
    for row, c, r in zip(rows, ref["chosen_token_rewards"], ref["rejected_token_rewards"]):
        assert len(row["chosen_ids"]) != len(row["rejected_ids"])
        assert row["chosen_token_rewards"] == pytest.approx(c, abs=1e-6)
        assert row["rejected_token_rewards"] == pytest.approx(r, abs=1e-6)
        assert any(abs(x) > 1e-4 for x in c)  # the sign of each reward matters
    if max_length:
        full = compute_token_rewards(model, tok, plain, DEFAULT_BETTER_TEMPLATE, DEFAULT_WORSE_TEMPLATE)
        assert full["chosen_token_rewards"] != ref["chosen_token_rewards"]  # max_length cut some tokens


def test_custom_templates_are_used(captured, tiny_model_dir, tmp_path, capsys):
    from contrastkit.alignment.token_rewards import compute_token_rewards
    from contrastkit.models import load_model

    data = write_pairs(tmp_path / "pairs.jsonl")
    better, worse = "Be kind. {prompt}", "Be rude. {prompt}"
    assert ck(["train", "treg-heatmap", "--model", str(tiny_model_dir), "--train_file", str(data), "--num_examples",
               "1", "--output", str(tmp_path / "h.html"), "--treg_better_template", better,
               "--treg_worse_template", worse]) == 0, capsys.readouterr().err
    (rows,) = captured
    model, tok = load_model(str(tiny_model_dir))
    plain = [{k: v for k, v in r.items() if not k.endswith("_token_rewards")} for r in rows]
    ref = compute_token_rewards(model, tok, plain, better, worse, max_length=1024)
    assert rows[0]["chosen_token_rewards"] == pytest.approx(ref["chosen_token_rewards"][0], abs=1e-6)


@pytest.mark.parametrize("extra, match", [
    (["--treg_better_template", "no placeholder"], "treg_better_template must contain the placeholder"),
    (["--treg_worse_template", "{question}"], "treg_worse_template must contain the placeholder"),
    (["--num_examples", "0"], "num_examples must be in [1, inf]"),
    (["--max_length", "1"], "max_length must be in [2, inf]"),
])
def test_bad_heatmap_inputs_exit_2(extra, match, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import contrastkit.models as models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", no_load)
    data = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "h.html"
    code = ck(["train", "treg-heatmap", "--model", str(tiny_model_dir), "--train_file", str(data),
               "--output", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
