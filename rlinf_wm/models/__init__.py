"""Tokenizer, DiT, samplers, reward model and policies: plain torch, no Ray or Hydra."""
