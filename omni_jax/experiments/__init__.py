"""Ablation experiments on the MoE: routing sweeps, expert pruning, quantization, distillation, modality routing.

One TOML file per experiment under ``experiments/``; ``python -m omni_jax.experiments run experiments/NAME``.
"""
