"""RankGen-style encoders and their contrastive training."""
