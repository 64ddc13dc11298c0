import numpy as np
import pytest
import torch

from contrastkit.eval.packing import build_segment, pack_rows, row_batch


def test_segment_shares_answer_prefixes_and_reads_every_token():
    ctx = [5, 6, 7, 8, 9]
    conts = [[1, 2, 3], [1, 2, 4, 4], [2], [1, 2, 3]]  # shared prefix [1, 2]; a duplicate; a one-token answer
    seg = build_segment(ctx, conts, n_prefix=2)
    # suffix 7 8 9, then trie nodes for [1], [1,2] (shared), [1,2,4]; last tokens and [2] add no node
    assert seg.tokens == [7, 8, 9, 1, 2, 4]
    assert seg.parent == [-1, 0, 1, 2, 3, 4]
    assert seg.position == [2, 3, 4, 5, 6, 7]
    root = 2
    assert seg.reads[0] == [(root, 1), (3, 2), (4, 3)]
    assert seg.reads[1] == [(root, 1), (3, 2), (4, 4), (5, 4)]
    assert seg.reads[2] == [(root, 2)]
    assert seg.reads[3] == seg.reads[0]
    for cont, reads in zip(conts, seg.reads):  # one read per answer token, in order
        assert [tok for _, tok in reads] == cont


def test_branching_trie_ancestors_exclude_siblings():
    seg = build_segment([1, 2], [[3, 4, 5], [3, 6, 7]], n_prefix=1)
    # tokens: 2 (suffix) | 3 | 4 (child of 3) | 6 (child of 3)
    assert seg.tokens == [2, 3, 4, 6] and seg.parent == [-1, 0, 1, 1]
    assert seg.position == [1, 2, 3, 3]  # siblings share a position
    anc = seg.ancestors()
    expect = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]], dtype=bool)
    assert (anc == expect).all()


def test_segment_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one context token"):
        build_segment([1, 2], [[3]], n_prefix=2)
    with pytest.raises(ValueError, match="at least one token"):
        build_segment([1, 2], [[3], []], n_prefix=0)


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([5, 3, 8, 2, 11], max_tokens=10)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]  # every segment exactly once
    lengths = [5, 3, 8, 2, 11]
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows if len(r) > 1)
    assert rows[0] == [4]  # an oversized segment gets its own row
    assert len(rows) == 3  # 11 | 8+2 | 5+3


def test_row_batch_is_block_diagonal_and_reads_point_at_the_right_tokens():
    a = build_segment([9, 1, 2], [[3, 4], [3, 5, 6]], n_prefix=1)
    b = build_segment([9, 7], [[8]], n_prefix=1)
    batch = row_batch([a, b], [[0], [1]], pad_id=0)
    R, L = batch.input_ids.shape
    assert (R, L) == (2, len(a))
    assert batch.input_ids[1, 1:].tolist() == [0] * (L - 1)  # right-padded
    allowed = batch.allowed
    assert not allowed[0, :, :][torch.triu(torch.ones(L, L, dtype=torch.bool), 1)].any()  # never sees the future
    assert allowed[1].diagonal().all()  # pads see themselves
    assert not allowed[1, 0, 1:].any()
    # the reads of answer (0, 1) = [3, 5, 6]: root, node [3], node [3, 5]
    flat = batch.input_ids.reshape(-1)
    sel = batch.read_answer == batch.answers.index((0, 1))
    assert batch.read_token[sel].tolist() == [3, 5, 6]
    assert flat[batch.read_index[sel]].tolist() == [2, 3, 5]  # the tokens whose next-token distribution is read
    mask = batch.additive_mask(n_prefix=4, dtype=torch.float32)
    assert mask.shape == (2, 1, L, 4 + L)
    assert (mask[..., :4] == 0).all()  # the primer is visible to every token
    assert ((mask[..., 4:] == 0) == allowed[:, None]).all()

    packed = row_batch([a, b], [[0, 1]])
    assert packed.input_ids.shape == (1, len(a) + len(b))
    assert not packed.allowed[0, len(a):, :len(a)].any() and not packed.allowed[0, :len(a), len(a):].any()
