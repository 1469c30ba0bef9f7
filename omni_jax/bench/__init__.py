"""Side-by-side benchmarks against the HF reference: ``python -m omni_jax.bench NAME [--json]``.

Each benchmark is a module ``omni_jax.bench.<name>`` (dashes in NAME become underscores) with
``main(argv) -> dict``; it prints a table and, with ``--json``, a last line holding one JSON object.
"""
