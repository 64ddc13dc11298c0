"""embed_examples: eval mode during embedding, the caller's mode restored, every example once, in order."""

from __future__ import annotations

import torch

from contrastkit.alignment.coact_data import Collator, Examples, embed_examples


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.classifier = torch.nn.Linear(3, 2)
        self.modes, self.keys = [], []

    def embed(self, batch, encoder=None):
        self.modes.append(self.training)
        self.keys.append(sorted(batch))
        return batch["pixel_values"].flatten(1)[:, :3].double()


def test_embed_examples_order_modes_and_batches():
    x = torch.arange(7 * 1 * 2 * 2, dtype=torch.float32).reshape(7, 1, 2, 2)
    ex = Examples(x, torch.tensor([0, 1, 0, 1, 1, 0, 0]))
    for training in (False, True):
        model = Recorder().train(training)
        out = embed_examples(model, ex, Collator(), batch_size=3)
        assert out.dtype == torch.float32 and out.shape == (7, 3)
        torch.testing.assert_close(out, x.flatten(1)[:, :3])  # all 7, in order (batches of 3, 3, 1)
        assert model.modes == [False, False, False]  # eval mode inside (no dropout)
        assert model.keys == [["pixel_values"]] * 3  # labels are not passed to the model
        assert model.training is training  # the caller's mode is restored
    empty = embed_examples(Recorder(), Examples(x[:0], torch.tensor([], dtype=torch.long)), Collator(), 4)
    assert empty.shape == (0, 3)
