"""`contrastkit score`: strategy flags reach the rule, --input records stay aligned, output file, bad inputs."""

from __future__ import annotations

import json

import pytest

from contrastkit.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_strategy_flags_reach_the_scoring_rule(tiny_model_dir, capsys):
    import contrastkit
    from contrastkit.models import load_model

    m, t = load_model(str(tiny_model_dir))
    sums = {}
    for layer in ("0", None):
        argv = ["score", "--model", str(tiny_model_dir), "--strategy", "dola", "--context", "the cat",
                "--continuation", " saw", "--continuation", " red dog"]
        code, out, err = run(argv + (["--lower_layer", layer] if layer else []), capsys)
        assert code == 0, err
        rec = json.loads(out)
        assert rec["strategy"] == "dola"
        kw = {"lower_layer": int(layer)} if layer else {}
        api = contrastkit.score(m, t, "the cat", [" saw", " red dog"], "dola", **kw)[0]
        assert [r["sum"] for r in rec["results"]] == pytest.approx([s.sum for s in api], abs=1e-5)
        sums[layer] = [r["sum"] for r in rec["results"]]
    assert abs(sums["0"][0] - sums[None][0]) > 1e-3  # the flag changes the scores


def test_input_file_records_stay_aligned_and_output_is_jsonl(tiny_model_dir, tmp_path, capsys):
    import contrastkit
    from contrastkit.models import load_model

    recs = [{"context": "the cat", "continuations": [" saw", " red dog was"]},
            {"context": "once upon a", "continuations": [" time"]},
            {"context": "a", "continuations": [" king", " queen", " ship"]}]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out.jsonl"
    code, stdout, err = run(["score", "--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out),
                             "--batch_size", "2"], capsys)
    assert code == 0, err
    text = out.read_text()
    assert text.endswith("}\n") and text.count("\n") == 3
    got = [json.loads(line) for line in text.splitlines()]
    m, t = load_model(str(tiny_model_dir))
    for rec, g in zip(recs, got):
        assert g["context"] == rec["context"] and g["strategy"] == "greedy"
        assert [r["continuation"] for r in g["results"]] == rec["continuations"]
        api = contrastkit.score(m, t, rec["context"], rec["continuations"])[0]
        assert [r["sum"] for r in g["results"]] == pytest.approx([s.sum for s in api], abs=1e-5)
        assert [r["num_tokens"] for r in g["results"]] == [s.num_tokens for s in api]
    code, stdout, err = run(["score", "--model", str(tiny_model_dir), "--input", str(inp)], capsys)
    assert code == 0, err
    assert stdout == text  # stdout and --output carry the same JSONL


@pytest.mark.parametrize("lines, argv_extra, match", [
    (None, ["--context", "x", "--continuation", " y"], "not both"),
    ([{"context": "a", "continuations": [" b"]}, {"context": "c", "continuations": []}], [],
     "in.jsonl:2: need 'context'"),
    ([{"context": 3, "continuations": [" b"]}], [], "in.jsonl:1: need 'context'"),
    ([{"context": "a", "continuations": " b"}], [], "in.jsonl:1: need 'context'"),
    (None, ["--strategy", "greedy,sample"], "exactly one --strategy"),
])
def test_bad_score_inputs_exit_2(lines, argv_extra, match, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import contrastkit.models as models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", no_load)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in (lines or [{"context": "a", "continuations": [" b"]}])))
    out = tmp_path / "out.jsonl"
    argv = ["score", "--model", str(tiny_model_dir), "--output", str(out)]
    argv += ["--input", str(inp)] if lines is not None or "not both" in match else ["--context", "a",
                                                                                     "--continuation", " b"]
    code, stdout, err = run(argv + argv_extra, capsys)
    assert code == 2, err
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize("argv, match", [
    (["--context", "a"], "need --context and at least one --continuation"),
    (["--continuation", " b"], "need --context and at least one --continuation"),
    (["--context", "a", "--continuation", " b", "--strategy", "sample", "--temperature", "-1"],
     "temperature must be in"),
])
def test_bad_flags_fail_before_the_model_load(argv, match, tiny_model_dir, monkeypatch, capsys):
    import contrastkit.models as models

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", no_load)
    code, stdout, err = run(["score", "--model", str(tiny_model_dir), *argv], capsys)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and stdout == ""


def test_non_ascii_text_is_written_as_is(tiny_model_dir, capsys):
    code, out, err = run(["score", "--model", str(tiny_model_dir), "--context", "le café",
                          "--continuation", " était fermé"], capsys)
    assert code == 0, err
    assert '"context": "le café"' in out and '"continuation": " était fermé"' in out
