"""What an experiment kind gets: the loaded model, the text sets, evaluation against the unmodified model,
and places to put plots and artifacts."""

from __future__ import annotations

import time
from functools import cached_property
from pathlib import Path

import numpy as np

from omni_jax.atomic import raise_if_interrupted
from omni_jax.experiments import evaluate as ev
from omni_jax.experiments.evalset import DEFAULT_CALIBRATION, DEFAULT_EVAL, EvalSet, load_set
from omni_jax.models.decoder import StackOptions


RANDOM_WEIGHTS_LABEL = "RANDOM WEIGHTS (demo checkpoint): these numbers only show the machinery works"


class RunContext:
    """``out_dir``: where the run writes (``OUT.partial``); ``final_dir``: where its results end up (``OUT``),
    for paths recorded in the rows (``final_path``)."""

    def __init__(self, spec: dict, cfg, params: dict, checkpoint: Path, tokenizer, out_dir: Path,
                 progress_enabled: bool = True, final_dir: Path | None = None):
        self.spec, self.cfg, self.params, self.checkpoint = spec, cfg, params, Path(checkpoint)
        self.tokenizer, self.out_dir = tokenizer, Path(out_dir)
        self.final_dir = self.out_dir if final_dir is None else Path(final_dir)
        self.random_weights = bool(spec.get("random_weights", False))
        self.seed = int(spec["seed"])
        self.dtype = spec["dtype"]
        self.progress_enabled = progress_enabled
        self.rows: list[dict] = []

    # ------------------------------------------------------------------ plumbing
    def progress(self, iterable, desc: str = "", total=None):
        """The items of ``iterable`` (with a bar on stderr when enabled); stops between items once a SIGINT /
        SIGTERM arrived, even one whose exception Python swallowed."""
        if self.progress_enabled:
            import sys

            from tqdm import tqdm

            iterable = tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
        for item in iterable:
            raise_if_interrupted()
            yield item

    def save_figure(self, fig, name: str) -> Path:
        """plots/NAME.png; a run on random weights gets a red label on the figure saying so."""
        import matplotlib.pyplot as plt

        if self.random_weights:
            fig.text(0.5, 1.0, RANDOM_WEIGHTS_LABEL, ha="center", va="bottom", color="red", fontsize=9,
                     fontweight="bold", transform=fig.transFigure)
        path = self.out_dir / "plots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path

    def artifact_dir(self, name: str) -> Path:
        path = self.out_dir / "artifacts" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def final_path(self, path: Path) -> Path:
        """Where ``path`` (under ``out_dir``) will be once the results directory is complete."""
        return self.final_dir / Path(path).relative_to(self.out_dir)

    # ------------------------------------------------------------------ data
    @cached_property
    def _eval_set(self) -> EvalSet:
        e = self.spec["eval"]
        return load_set(self.tokenizer, e["path"], DEFAULT_EVAL, e["max_examples"], e["max_tokens"])

    def thinker_eval(self) -> EvalSet:
        return self._eval_set

    @cached_property
    def _calibration(self) -> EvalSet:
        c = self.spec["calibration"]
        return load_set(self.tokenizer, c["path"], DEFAULT_CALIBRATION, c["max_examples"], c["max_tokens"])

    def calibration(self) -> EvalSet:
        return self._calibration

    @property
    def batch_size(self) -> int:
        return int(self.spec["eval"]["batch_size"])

    # ------------------------------------------------------------------ evaluation
    @property
    def text_params(self) -> dict:
        return self.params["thinker"]["text"]

    @property
    def text_cfg(self):
        return self.cfg.thinker.text

    @cached_property
    def reference(self) -> ev.Reference:
        return ev.reference_logprobs(self.text_params, self.text_cfg, self.thinker_eval(), self.batch_size,
                                     self.progress)

    def evaluate_thinker(self, text_params=None, text_cfg=None, opts: StackOptions | None = None,
                         keep_counts: bool = False) -> dict:
        """Metrics of a (modified) Thinker text model against the unmodified one (see ``evaluate.py``)."""
        text_params = self.text_params if text_params is None else text_params
        text_cfg = self.text_cfg if text_cfg is None else text_cfg
        opts = opts or StackOptions.uniform(text_cfg)
        n_decode = int(self.spec["eval"].get("decode_tokens", 0))
        decode = (lambda: self.decode_ms_per_token(text_params, text_cfg, opts, n_decode)) if n_decode else None
        m = ev.evaluate_text_model(text_params, text_cfg, opts, self.thinker_eval(), self.reference,
                                   self.batch_size, decode, self.progress)
        counts = m.pop("_router_counts")
        if keep_counts:
            m["router_counts"] = counts
        return m

    def router_counts(self, text_params=None, text_cfg=None, eval_set: EvalSet | None = None,
                      opts: StackOptions | None = None) -> np.ndarray:
        text_params = self.text_params if text_params is None else text_params
        text_cfg = self.text_cfg if text_cfg is None else text_cfg
        opts = opts or StackOptions.uniform(text_cfg)
        return ev.router_counts(text_params, text_cfg, opts, eval_set or self.thinker_eval(), self.batch_size,
                                self.progress)

    def decode_ms_per_token(self, text_params, text_cfg, opts: StackOptions, n_tokens: int) -> float:
        """Greedy decode of ``n_tokens`` from the first eval text's first 16 tokens: median ms per jitted step."""
        from omni_jax.experiments.surgery import with_thinker_text
        from omni_jax.generation.sampling import SamplingConfig
        from omni_jax.generation.thinker_engine import ThinkerEngine
        from omni_jax.models.prompt import PreparedPrompt, pad_left
        from omni_jax.positions import text_positions

        es = self.thinker_eval()
        row = es.input_ids[0][: int(es.attention_mask[0].sum())][:16].tolist()
        ids, mask = pad_left([row], 0)
        prompt = PreparedPrompt(ids, mask, text_positions(mask), np.zeros(1, np.float32))
        engine = ThinkerEngine(with_thinker_text(self.cfg, text_cfg), text_params, opts)
        stamps = []
        for _ in engine.stream(prompt, n_tokens + 2, SamplingConfig.greedy(), eos_ids=set()):
            stamps.append(time.perf_counter())
        steps = np.diff(stamps)[1:]  # the first step includes compilation
        return float(1e3 * np.median(steps)) if len(steps) else float("nan")
