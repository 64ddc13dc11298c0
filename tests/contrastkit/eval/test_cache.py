"""Record cache identity and the packed trie layout, checked against rules written out here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contrastkit.errors import UsageError
from contrastkit.eval.cache import (
    RecordCache,
    load_records,
    path_identity,
    run_label,
    strategy_identity,
    value_identity,
)
from contrastkit.eval.packing import build_segment, row_batch

# ------------------------------------------------------------------------------------------
# packing
# ------------------------------------------------------------------------------------------


def _path_to_root(seg, node):
    """Tokens from the segment start down to ``node`` (inclusive), by following parents."""
    out = []
    while node >= 0:
        out.append(seg.tokens[node])
        node = seg.parent[node]
    return out[::-1]


@pytest.mark.parametrize("context,conts,n_prefix", [
    ([5, 6], [[1, 2, 9], [2, 2, 9], [1, 1, 1, 1]], 1),     # the same token at different depths of the trie
    ([9, 1, 2], [[3, 4], [3, 5, 6], [4, 3, 5, 6]], 1),
    ([4, 4, 4], [[4, 4], [4], [4, 4, 4, 4]], 0),
])
def test_every_read_sees_exactly_its_answer_prefix(context, conts, n_prefix):
    seg = build_segment(context, conts, n_prefix)
    for cont, reads in zip(conts, seg.reads):
        assert [tok for _, tok in reads] == cont
        for t, (node, _) in enumerate(reads):
            # the token whose next-token distribution scores cont[t] carries exactly context[n_prefix:] + cont[:t]
            assert _path_to_root(seg, node) == list(context[n_prefix:]) + list(cont[:t])
            assert seg.position[node] == len(context) - 1 + t
    anc = seg.ancestors()
    for j in range(len(seg)):
        chain, p = {j}, seg.parent[j]
        while p >= 0:
            chain.add(p)
            p = seg.parent[p]
        assert set(anc[j].nonzero()[0].tolist()) == chain


def test_reads_of_later_segments_in_a_row_point_at_their_own_tokens():
    a = build_segment([9, 1, 2], [[3, 4], [3, 5, 6]], n_prefix=1)
    b = build_segment([9, 7], [[8, 1], [11]], n_prefix=1)
    segs = [a, b]
    contexts = {0: [9, 1, 2], 1: [9, 7]}
    conts = {0: [[3, 4], [3, 5, 6]], 1: [[8, 1], [11]]}
    for rows in ([[0, 1]], [[1, 0]], [[1], [0]]):
        batch = row_batch(segs, rows, pad_id=0)
        flat_ids = batch.input_ids.reshape(-1)
        flat_pos = batch.position_ids.reshape(-1)
        assert sorted(batch.answers) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        for k, (s, c) in enumerate(batch.answers):
            sel = batch.read_answer == k
            cont, ctx = conts[s][c], contexts[s]
            assert batch.read_token[sel].tolist() == cont
            # the scoring token of cont[t] is ctx[-1] for t = 0, else cont[t - 1], at position len(ctx) - 1 + t
            assert flat_ids[batch.read_index[sel]].tolist() == [ctx[-1]] + cont[:-1]
            assert flat_pos[batch.read_index[sel]].tolist() == [len(ctx) - 1 + t for t in range(len(cont))]


# ------------------------------------------------------------------------------------------
# cache identity
# ------------------------------------------------------------------------------------------


def test_run_label_does_not_depend_on_parameter_order():
    assert run_label("sample", {"top_p": 0.9, "top_k": 5}) == run_label("sample", {"top_k": 5, "top_p": 0.9})
    assert run_label("sample", {"top_p": 0.9}) != run_label("sample", {"top_p": 0.8})
    assert run_label("greedy", {}) == "greedy"


def test_strategy_identity_holds_every_resolved_field():
    ident = strategy_identity("sample", {})
    assert ident["name"] == "sample" and {"temperature", "top_k", "top_p", "seed"} <= set(ident)
    # an explicit default is the same run as an omitted one; a changed value is not
    assert strategy_identity("sample", {"temperature": 1.0}) == ident
    assert strategy_identity("sample", {"temperature": 0.7}) != ident


def test_amateur_named_by_a_relative_directory_is_identified_by_its_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "am").mkdir()
    (tmp_path / "am" / "adapter_model.safetensors").write_bytes(b"v1")
    got = value_identity("am", "amateur")
    assert got == path_identity(tmp_path / "am") and "adapter_model.safetensors" in got["files"]
    (tmp_path / "middle").mkdir()  # a plain word stays text for other parameters, even if such a folder exists
    assert value_identity("middle", "lower_layer") == "middle"


def test_check_items_ignores_records_outside_the_current_items(tmp_path):
    path = tmp_path / "greedy.jsonl"
    fp = {"task": "t", "strategy.name": "greedy"}
    cache = RecordCache(path, fp).open()
    cache.append([{"id": i, "item_key": f"q{i}"} for i in range(4)])
    again = RecordCache(path, fp)
    assert sorted(again.records) == [0, 1, 2, 3]
    again.check_items({0: "q0", 1: "q1"})  # a --limit 2 rerun: items 2, 3 are simply not asked for
    again.check_items({})
    with pytest.raises(UsageError, match="item 1 was computed for"):
        again.check_items({0: "q0", 1: "other"})


def test_load_records_drops_a_line_cut_before_its_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 0, "v": 1}\n{"id": 1, "v": 2}')  # the last record lost only its newline
    assert list(load_records(path)) == [0]
    assert list(load_records(path, rewrite=True)) == [0]
    assert path.read_text() == '{"id": 0, "v": 1}\n'


def test_load_records_drops_everything_after_a_torn_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": 0}\n{"id": 1, "v\n{"id": 2}\n')
    assert list(load_records(path, rewrite=True)) == [0]
    assert path.read_text() == '{"id": 0}\n'
    assert json.loads(path.read_text()) == {"id": 0}


def test_flatten_keeps_empty_dicts_as_values():
    from contrastkit.eval.cache import flatten

    assert flatten({"a": {}, "b": {"c": 1, "d": {"e": [1, 2]}}, "f": None}) == {
        "a": {}, "b.c": 1, "b.d.e": [1, 2], "f": None}


def test_open_drops_records_that_have_no_meta(tmp_path):
    path = tmp_path / "greedy.jsonl"
    path.write_text('{"id": 0, "item_key": "q0"}\n')  # records left without their .meta.json: provenance unknown
    cache = RecordCache(path, {"task": "t"})
    assert cache.records == {}
    cache.open()
    assert cache.records == {} and not (path.exists() and path.read_text()) and cache.meta.is_file()


def test_old_cache_format_is_refused(tmp_path):
    path = tmp_path / "greedy.jsonl"
    cache = RecordCache(path, {"task": "t"}).open()
    cache.append([{"id": 0}])
    meta = json.loads(cache.meta.read_text())
    meta["schema"] = 1
    cache.meta.write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="older contrastkit"):
        RecordCache(path, {"task": "t"})
    assert list(RecordCache(path, {"task": "t"}, overwrite=True).open().records) == []


def test_reopening_keeps_the_creation_time(tmp_path):
    path = tmp_path / "greedy.jsonl"
    first = RecordCache(path, {"task": "t"}).open()
    first.append([{"id": 0}])
    created = json.loads(first.meta.read_text())["created"]
    again = RecordCache(path, {"task": "t"})
    assert again.created == created
    again.open()
    assert json.loads(again.meta.read_text())["created"] == created  # the run's place in the directory order
    assert list(again.records) == [0]


def test_mismatch_names_added_removed_and_changed_fields():
    from contrastkit.eval.cache import changed_fields, mismatch_message

    old = {"task": "t", "strategy.alpha": 0.1, "strategy.old_field": 1}
    new = {"task": "t", "strategy.alpha": 0.2, "strategy.new_field": 2}
    assert changed_fields(old, new) == ["strategy.alpha", "strategy.new_field", "strategy.old_field"]
    assert changed_fields(old, dict(old)) == []
    tmp = Path("r/greedy.jsonl")
    msg = mismatch_message(tmp, old, new)
    assert msg.startswith(f"{tmp} was computed with a different strategy.alpha, strategy.new_field, strategy.old_field")
    assert 'strategy.new_field: "<absent>" -> 2' in msg and 'strategy.old_field: 1 -> "<absent>"' in msg
    many = {f"k{i}": i for i in range(5)}
    assert "(and 2 more)" in mismatch_message(tmp, many, {})
