"""One evaluation harness: TruthfulQA, MAUVE, rep-n/diversity/coherence."""
