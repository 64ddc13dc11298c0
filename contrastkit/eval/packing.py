"""Packed prefix-trie layout for scoring many answers over one shared primer (pure, no model).

Multiple-choice scoring asks for ``log p(answer | primer + question)`` for every answer of
every question. The primer is shared by all questions (its KV cache is computed once); what
remains is, per question, its own suffix tokens and its answers. This module lays those out
so that one forward of the transformer body scores the answers of *several* questions:

* **Segment** (:func:`build_segment`): one question's suffix tokens followed by a prefix trie
  of its answers. Answers that start with the same tokens ("No, ...", "The ...") share those
  trie nodes: a token's hidden state depends only on the tokens before it, so a shared prefix
  is computed once (on TruthfulQA the trie holds 27% fewer tokens than the answers do).
  Every token records its ``parent`` (the token it extends), its absolute position, and every
  answer records its *reads*: ``(token whose next-token distribution scores it, token id)``,
  one per answer token. An answer's last token is never an input (nothing attends to it).
* **Rows** (:func:`pack_rows`): segments are placed side by side in rows of at most
  ``max_tokens`` tokens (first-fit decreasing); a segment never spans two rows.
* **Mask** (:func:`row_mask`): token ``j`` attends to the primer and to its own ancestors in
  its own segment (itself included), never to another segment or to a sibling branch. So each
  token sees exactly the sequence ``primer + question + its answer's earlier tokens`` at the
  positions it would have in the unpacked sequence, and gets the same logits.

This is the tree-attention idea of :mod:`contrastkit.decoding.tree` applied to scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch


@dataclass
class Segment:
    """One context's suffix plus the trie of its continuations (indices are local to the segment)."""

    tokens: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)  # index of the token extended; -1 = extends the primer
    position: list[int] = field(default_factory=list)  # absolute position in the unpacked sequence
    reads: list[list[tuple[int, int]]] = field(default_factory=list)  # per answer: (scoring token, token id)

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestors(self) -> np.ndarray:
        """(n, n) bool: ``[j, i]`` is True when token ``i`` is ``j`` itself or one of its ancestors."""
        n = len(self.tokens)
        anc = np.zeros((n, n), dtype=bool)
        for j, p in enumerate(self.parent):  # parents always come first
            if p >= 0:
                anc[j] = anc[p]
            anc[j, j] = True
        return anc


def build_segment(context: Sequence[int], continuations: Sequence[Sequence[int]], n_prefix: int) -> Segment:
    """Lay out ``context[n_prefix:]`` and a prefix trie of ``continuations`` (each non-empty).

    The last context token scores every continuation's first token; the trie node for
    ``c[:t]`` (t >= 1) scores ``c[t]``.
    """
    if not 0 <= n_prefix < len(context):
        raise ValueError(f"n_prefix={n_prefix} must leave at least one context token (context has {len(context)})")
    seg = Segment()
    for i, tok in enumerate(context[n_prefix:]):
        seg.tokens.append(int(tok))
        seg.parent.append(i - 1)
        seg.position.append(n_prefix + i)
    root, start = len(seg.tokens) - 1, len(context)
    children: dict[tuple[int, int], int] = {}
    for cont in continuations:
        if not cont:
            raise ValueError("every continuation needs at least one token")
        node, reads = root, [(root, int(cont[0]))]
        for t in range(len(cont) - 1):
            key = (node, int(cont[t]))
            if key not in children:
                children[key] = len(seg.tokens)
                seg.tokens.append(int(cont[t]))
                seg.parent.append(node)
                seg.position.append(start + t)
            node = children[key]
            reads.append((node, int(cont[t + 1])))
        seg.reads.append(reads)
    return seg


def pack_rows(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group segment indices into rows of total length <= ``max_tokens`` (first-fit decreasing).

    A segment longer than ``max_tokens`` gets a row of its own. Rows come out in the order they were opened:
    the first holds the longest segment (not necessarily the most tokens).
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_tokens - lengths[i])
    return rows


@dataclass
class PackedBatch:
    """Model inputs for a group of rows plus where each answer's reads sit in the flattened output."""

    input_ids: torch.LongTensor  # (R, L)
    position_ids: torch.LongTensor  # (R, L)
    allowed: torch.BoolTensor  # (R, L, L): query j may attend key i of the same row
    read_index: torch.LongTensor  # (N,) flat index into R*L of the scoring token of each read
    read_token: torch.LongTensor  # (N,) the token it scores
    read_answer: torch.LongTensor  # (N,) which answer (running index over the batch's answers) it belongs to
    answers: list[tuple[int, int]]  # (segment, continuation) of each answer, in read_answer order

    def additive_mask(self, n_prefix: int, dtype: torch.dtype) -> torch.Tensor:
        """(R, 1, L, n_prefix + L) additive mask: the primer is visible to all, the rest as ``allowed``."""
        R, L, _ = self.allowed.shape
        lowest = torch.finfo(dtype).min
        own = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device).masked_fill_(
            ~self.allowed, lowest)
        primer = torch.zeros((R, L, n_prefix), dtype=dtype, device=self.allowed.device)
        return torch.cat([primer, own], dim=-1)[:, None]


def row_batch(segments: Sequence[Segment], rows: Sequence[Sequence[int]], pad_id: int = 0) -> PackedBatch:
    """Concatenate the segments of each row; right-pad rows to one length (pads attend only to themselves)."""
    L = max(sum(len(segments[s]) for s in row) for row in rows)
    R = len(rows)
    ids = np.full((R, L), pad_id, dtype=np.int64)
    pos = np.zeros((R, L), dtype=np.int64)
    allowed = np.zeros((R, L, L), dtype=bool)
    allowed[:, np.arange(L), np.arange(L)] = True  # pads see themselves: no fully masked query row
    read_index, read_token, read_answer, answers = [], [], [], []
    for r, row in enumerate(rows):
        off = 0
        for s in row:
            seg = segments[s]
            n = len(seg)
            ids[r, off:off + n] = seg.tokens
            pos[r, off:off + n] = seg.position
            allowed[r, off:off + n, off:off + n] = seg.ancestors()
            for a, reads in enumerate(seg.reads):
                for node, tok in reads:
                    read_index.append(r * L + off + node)
                    read_token.append(tok)
                    read_answer.append(len(answers))
                answers.append((s, a))
            off += n
    as_long = lambda x: torch.as_tensor(np.asarray(x, dtype=np.int64))  # noqa: E731
    return PackedBatch(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(allowed), as_long(read_index),
                       as_long(read_token), as_long(read_answer), answers)
