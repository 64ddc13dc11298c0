"""The README's CLI tour, run as written from an empty directory outside the repository.

The test parses the ```bash block under "## Quick tour: the CLI" in README.md and runs every
command in it, in order, in a fresh temporary directory, so a flag renamed in the CLI, a config
that moved or a path that only works from the repository root fails here. What is substituted
(and nothing else) is the model and data location, by this documented mechanism:

* ``source .venv/bin/activate`` is skipped: the test runs the installed ``contrastkit`` itself.
* ``CONTRASTKIT_DATA`` points at ``../shared/data`` (the README's "Data" section: the offline copies),
  with ``HF_HUB_OFFLINE=1``.
* every ``contrastkit`` command that loads a model gets ``--model <tiny random model>`` appended
  (``MODEL_COMMANDS``): SmolLM2 would make the tour take many minutes on CPU.

``contrastkit`` lines run in this process through the same ``main(argv)`` as the console script
(argv from ``shlex``, exactly the README's words); other lines (``echo ... > prompts.jsonl``) run in
bash. Each command must exit 0; its wall time is recorded in the failure message and printed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SKIP = {"source .venv/bin/activate"}
MODEL_COMMANDS = {("generate",), ("score",), ("train", "induce"), ("train", "dpo"), ("train", "hypo"),
                  ("train", "treg"), ("eval", "truthfulqa"), ("eval", "open-ended")}


def tour_commands(text: str) -> list[str]:
    """The commands of the tour block: comment lines dropped, a quoted newline joins two lines."""
    section = text.split("## Quick tour: the CLI", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, pending = [], ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command continues on the next line
            continue
        if words:
            commands.append(pending)
        pending = ""
    assert not pending, f"unterminated command in the README tour: {pending!r}"
    return commands


def substitute(words: list[str], tiny: str) -> list[str] | None:
    """The README's argv with the model location substituted; None for set-up lines the test skips."""
    if " ".join(words) in SKIP:
        return None
    if words[0] == "contrastkit" and (tuple(words[1:2]) in MODEL_COMMANDS or tuple(words[1:3]) in MODEL_COMMANDS):
        return [*words, "--model", tiny]
    return words


def test_tour_parser_keeps_every_command():
    cmds = tour_commands(README.read_text())
    assert len(cmds) >= 15
    score = next(c for c in cmds if c.startswith("contrastkit score"))
    assert "Q: Who wrote Hamlet?\nA:" in shlex.split(score, comments=True)  # the quoted newline stays in the argument
    assert all(not c.lstrip().startswith("#") for c in cmds)


@pytest.mark.integration
def test_readme_tour_runs_from_an_empty_directory(tmp_path_factory, tiny_model_dir, shared_data, monkeypatch,
                                                  capsys):
    from contrastkit.cli.main import main

    work = tmp_path_factory.mktemp("newcomer")
    assert not list(work.iterdir()) and README.parent not in work.parents
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("CONTRASTKIT_DATA", str(shared_data))
    times = []
    for cmd in tour_commands(README.read_text()):
        argv = substitute(shlex.split(cmd, comments=True), str(tiny_model_dir))
        if argv is None:
            continue
        t0 = time.perf_counter()
        if argv[0] == "contrastkit":
            code = main(argv[1:])
            out, err = capsys.readouterr()
        else:
            res = subprocess.run(["bash", "-c", cmd], cwd=work, capture_output=True, text=True, timeout=60)
            code, out, err = res.returncode, res.stdout, res.stderr
        times.append((time.perf_counter() - t0, cmd.splitlines()[0][:90]))
        assert code == 0, f"README tour command failed (exit {code}): {cmd}\n{err[-2000:]}\ntimes so far: {times}"
        if argv[0] == "contrastkit" and argv[1] in ("generate", "score", "configs", "strategies") and "--output" not in argv:
            assert out.strip(), f"README tour command printed nothing: {cmd}"
    with capsys.disabled():
        print("\nREADME tour wall times (s):")
        for t, c in times:
            print(f"  {t:7.2f}  {c}")
    assert (work / "out.jsonl").exists() and (work / "runs" / "amateur" / "adapter_config.json").exists()
    assert (work / "runs" / "tqa" / "summary.json").exists() and (work / "runs" / "open" / "summary.json").exists()
    assert (work / "runs" / "dpo_smollm2_hh" / "train_summary.json").exists()
    assert (work / "eval_compare" / "compare.md").exists()
