"""Knowledge distillation of the Thinker's text model into a smaller student (fewer layers, fewer experts).

    student_params, student_cfg, info = make_student(teacher_text, text_cfg, num_layers=2, num_experts=4)
    trainer = DistillTrainer(teacher_text, text_cfg, student_params, student_cfg, ids, mask,
                             DistillConfig(steps=40), checkpoint_dir=out / "student")
    history = trainer.run(resume=True)

Loss (per target token, masked over padding, averaged over the real targets of the batch)::

    loss = alpha_ce · CE(student, targets) + alpha_kl · s · KL(softmax(teacher/T) ‖ softmax(student/T))

with T the temperature and s = T² when ``kl_t2_scale`` (default; Hinton et al. 2015: the gradients of the
softened KL scale as 1/T², so multiplying by T² keeps the KL term's gradient magnitude comparable to the
CE term's as T changes), else s = 1.

Modes:
- ``off_policy``: teacher-forced on the given token sequences; CE targets are the next tokens of the data.
- ``on_policy``: the student samples ``gen_tokens`` continuations of the first ``prompt_len`` tokens of each
  example (a jitted sampler with a KV cache, below); the teacher's logits on those sequences are the KL
  targets, and the CE targets are the teacher's argmax tokens at each position (``on_policy_ce_target =
  "teacher"``; "sampled" would train on the student's own samples, which only reinforces them). Only the
  generated positions (up to and including a first EOS) are targets.

Training is deterministic and resumable: the data order is a seeded permutation per epoch, a function of the
step alone; the sampling key is carried and checkpointed; checkpoints (Orbax ``CheckpointManager``) hold the
student params, the optimizer state, the step, the key and the loss history, so a run resumed from its last
checkpoint reproduces the uninterrupted run's loss curve. The student is trained in fp32; the teacher runs in
whatever dtype its params have.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omni_jax.errors import UsageError
from omni_jax.config import TextConfig
from omni_jax.experiments.surgery import evenly_spaced_layers, keep_experts, keep_layers
from omni_jax.generation.sampling import SamplingConfig
from omni_jax.generation.thinker_steps import decode_loop, thinker_prefill
from omni_jax.models import thinker_text
from omni_jax.models.decoder import StackOptions
from omni_jax.positions import text_positions

MODES = ("off_policy", "on_policy")


class DistillError(UsageError):
    """A distillation setting that cannot work (bad mode, empty data, too few layers for the Talker, ...)."""


class ResumeMismatchError(DistillError):
    """The checkpoint directory holds a run with different settings than the ones asked for."""


# ------------------------------------------------------------------------------------------------ config


@functools.partial(jax.tree_util.register_dataclass, data_fields=["alpha_ce", "alpha_kl", "temperature",
                                                                  "kl_t2_scale"], meta_fields=[])
@dataclass(frozen=True)
class LossConfig:
    """Loss weights; a pytree of scalars, so changing them does not recompile the train step."""

    alpha_ce: float = 0.7
    alpha_kl: float = 0.3
    temperature: float = 2.0
    kl_t2_scale: bool = True  # multiply the KL term by T² (see module docstring)


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 40
    batch_size: int = 4
    lr: float = 1e-3
    schedule: str = "constant"  # "constant" | "cosine" (cosine decay to lr·final_lr_ratio after warmup)
    warmup_steps: int = 0
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    loss: LossConfig = LossConfig()
    mode: str = "off_policy"  # "off_policy" | "on_policy"
    prompt_len: int = 8  # on-policy: prompt tokens taken from each example
    gen_tokens: int = 16  # on-policy: tokens the student samples per prompt
    sample_temperature: float = 1.0  # on-policy: the student's sampling temperature (0 = greedy)
    on_policy_ce_target: str = "teacher"  # "teacher" (teacher argmax) | "sampled" (the student's own tokens)
    eos_ids: tuple[int, ...] = ()  # on-policy: targets after a first EOS are masked
    save_every: int = 10
    max_to_keep: int = 2
    seed: int = 0
    backend: str = "auto"  # MoE dispatch for student and teacher ("dense" is fastest for tiny models)

    def __post_init__(self):
        if self.mode not in MODES:
            raise DistillError(f"mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.schedule not in ("constant", "cosine"):
            raise DistillError(f"schedule {self.schedule!r}: choose constant or cosine")
        if self.on_policy_ce_target not in ("teacher", "sampled"):
            raise DistillError(f"on_policy_ce_target {self.on_policy_ce_target!r}: choose teacher or sampled")
        if self.steps < 1 or self.batch_size < 1 or self.save_every < 1:
            raise DistillError("steps, batch_size and save_every must be >= 1")
        if self.sample_temperature < 0:
            raise DistillError(f"sample_temperature must be >= 0, got {self.sample_temperature}")
        if self.loss.temperature <= 0:
            raise DistillError(f"temperature must be > 0, got {self.loss.temperature}")

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        """From a flat dict (a TOML table): loss knobs alpha_ce/alpha_kl/temperature/kl_t2_scale at top level."""
        d = dict(d)
        loss_keys = {f.name for f in dataclasses.fields(LossConfig)}
        loss = LossConfig(**{k: d.pop(k) for k in list(d) if k in loss_keys})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DistillError(f"unknown distillation setting {unknown[0]!r}")
        if "eos_ids" in d:
            d["eos_ids"] = tuple(int(i) for i in d["eos_ids"])
        return cls(loss=loss, **d)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(d.pop("loss"))
        d["eos_ids"] = list(d["eos_ids"])
        return d


# ------------------------------------------------------------------------------------------------ student


def make_student(teacher_text_params: dict, text_cfg: TextConfig, num_layers: int, num_experts: int,
                 expert_choice: str = "first", counts: np.ndarray | None = None):
    """A student initialised from the teacher: ``num_layers`` evenly spaced layers (first and last kept),
    and in each ``num_experts`` experts — the first ones, or the most used ones by ``counts`` [L, E] (teacher
    router usage, e.g. ``ctx.router_counts``). Returns (fp32 params, student TextConfig, info dict)."""
    layers = evenly_spaced_layers(text_cfg.num_layers, num_layers)
    if len(layers) != num_layers:
        raise DistillError(f"cannot spread {num_layers} distinct layers over {text_cfg.num_layers}")
    params, cfg = keep_layers(teacher_text_params, text_cfg, layers)
    if expert_choice == "first":
        keep = np.tile(np.arange(num_experts), (num_layers, 1))
    elif expert_choice == "usage":
        if counts is None:
            raise DistillError("expert_choice='usage' needs the teacher's router counts [L, E]")
        counts = np.asarray(counts)
        if counts.shape != (text_cfg.num_layers, text_cfg.num_experts):
            raise DistillError(f"router counts have shape {counts.shape}, expected "
                               f"{(text_cfg.num_layers, text_cfg.num_experts)}")
        # most used first; ties broken by the lower index (stable sort)
        keep = np.argsort(-counts[layers], axis=1, kind="stable")[:, :num_experts]
    else:
        raise DistillError(f"expert_choice {expert_choice!r}: choose first or usage")
    params, cfg = keep_experts(params, cfg, keep)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    info = dict(layers=list(layers), experts=np.sort(keep, axis=1).tolist())
    return params, cfg, info


# ------------------------------------------------------------------------------------------------ loss


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def distill_loss(student_logits: jax.Array, teacher_logits: jax.Array, targets: jax.Array, mask: jax.Array,
                 alpha_ce: float = 0.7, alpha_kl: float = 0.3, temperature: float = 2.0, kl_t2_scale: bool = True):
    """student/teacher logits [B, L, V] already aligned with targets [B, L] (logit at t predicts targets[t]);
    mask [B, L] (1 = a real target). Computed in fp32. Returns (total, dict(total, ce, kl)); ``kl`` is the
    unscaled KL(teacher_T ‖ student_T) per target token, the total uses ``T² · kl`` when ``kl_t2_scale``."""
    s = student_logits.astype(jnp.float32)
    t = teacher_logits.astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    log_p = jax.nn.log_softmax(s, axis=-1)
    ce = -jnp.take_along_axis(log_p, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    log_q_t = jax.nn.log_softmax(t / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(s / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_q_t) * (log_q_t - log_p_t), axis=-1)
    ce, kl = _masked_mean(ce, mask), _masked_mean(kl, mask)
    scale = jnp.where(kl_t2_scale, jnp.square(temperature), 1.0)  # works for Python and traced flags
    total = alpha_ce * ce + alpha_kl * scale * kl
    return total, dict(total=total, ce=ce, kl=kl)


# ------------------------------------------------------------------------------------------------ forwards


def logits_of(params: dict, cfg: TextConfig, opts: StackOptions, input_ids: jax.Array, attention_mask: jax.Array):
    emb = thinker_text.embed_tokens(params, input_ids)
    out = thinker_text.text_forward(params, cfg, opts, emb, text_positions(attention_mask), attention_mask)
    return out["logits"]


@functools.partial(jax.jit, static_argnames=("cfg", "opts"))
def teacher_logits_fn(params: dict, cfg: TextConfig, opts: StackOptions, input_ids, attention_mask):
    """The teacher's logits [B, L, V] in fp32 (the teacher runs in its params' dtype)."""
    return logits_of(params, cfg, opts, input_ids, attention_mask).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "opts", "optimizer"))
def train_step(student_params: dict, opt_state, batch: dict, teacher_logits: jax.Array, *, cfg: TextConfig,
               opts: StackOptions, optimizer: optax.GradientTransformation, loss_cfg: LossConfig):
    """One optimizer step. batch: input_ids [B, L], attention_mask [B, L], target_mask [B, L] (1 where the
    token at t is a target, predicted from t-1), ce_targets [B, L-1] (the CE label for the logit at t).
    teacher_logits [B, L, V]; loss_cfg: traced (new weights reuse the compiled step).
    Returns (params, opt_state, metrics dict incl. grad_norm)."""

    def loss_fn(p):
        logits = logits_of(p, cfg, opts, batch["input_ids"], batch["attention_mask"])
        return distill_loss(logits[:, :-1], teacher_logits[:, :-1], batch["ce_targets"],
                            batch["target_mask"][:, 1:], loss_cfg.alpha_ce, loss_cfg.alpha_kl,
                            loss_cfg.temperature, loss_cfg.kl_t2_scale)

    (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(student_params)
    updates, opt_state = optimizer.update(grads, opt_state, student_params)
    student_params = optax.apply_updates(student_params, updates)
    return student_params, opt_state, dict(parts, grad_norm=optax.global_norm(grads))


def make_optimizer(config: DistillConfig) -> optax.GradientTransformation:
    """clip_by_global_norm (when grad_clip > 0) then AdamW with a constant or warmup + cosine learning rate.
    The same settings give the same object, so ``train_step`` (which takes it as a static argument) is
    compiled once per model, not once per trainer."""
    decay_steps = max(config.steps, 1) if config.schedule == "cosine" else 0
    return _optimizer(config.lr, config.schedule, config.warmup_steps, decay_steps, config.final_lr_ratio,
                      config.weight_decay, config.grad_clip)


@functools.lru_cache(maxsize=32)
def _optimizer(lr, schedule, warmup_steps, decay_steps, final_lr_ratio, weight_decay, grad_clip):
    if schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, decay_steps, end_value=lr * final_lr_ratio)
    elif warmup_steps:
        lr = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
                                  [warmup_steps])
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    return optax.chain(*parts, optax.adamw(lr, weight_decay=weight_decay))


# ------------------------------------------------------------------------------------------------ sampling


@functools.partial(jax.jit, static_argnames=("cfg", "opts", "gen_tokens", "sampling"))
def sample_continuations(params: dict, cfg: TextConfig, opts: StackOptions, prompt_ids: jax.Array,
                         prompt_mask: jax.Array, key: jax.Array, *, gen_tokens: int, sampling: SamplingConfig):
    """The student's continuations of LEFT-padded prompts [B, P]: the generation's prefill into a KV cache of
    P + gen_tokens slots and its decode loop (no EOS: every row gets ``gen_tokens`` tokens).
    Returns generated ids [B, gen_tokens]."""
    b, p = prompt_ids.shape
    state, _ = thinker_prefill(params, cfg, opts, sampling, p + gen_tokens, prompt_ids, prompt_mask,
                               text_positions(prompt_mask), jnp.zeros((b,), jnp.float32), key)
    tokens, _, _ = decode_loop(params, cfg, opts, sampling, state, gen_tokens)
    return tokens.T


def left_pad_prompts(input_ids: np.ndarray, attention_mask: np.ndarray, prompt_len: int):
    """The first ``prompt_len`` real tokens of each right-padded row, left-padded: (ids, mask) [B, P]."""
    b = input_ids.shape[0]
    ids = np.zeros((b, prompt_len), np.int32)
    mask = np.zeros((b, prompt_len), np.int32)
    for i in range(b):
        n = int(min(attention_mask[i].sum(), prompt_len))
        if n:
            ids[i, prompt_len - n:] = input_ids[i, :n]
            mask[i, prompt_len - n:] = 1
    return ids, mask


def target_mask_after_eos(generated: np.ndarray, eos_ids: Iterable[int]) -> np.ndarray:
    """[B, G] generated ids -> [B, G] 1 up to and including the first EOS, 0 after it."""
    eos = np.isin(generated, list(eos_ids)) if eos_ids else np.zeros(generated.shape, bool)
    after = np.cumsum(eos, axis=1) - eos  # EOS seen strictly before this position
    return (after == 0).astype(np.int32)


# ------------------------------------------------------------------------------------------------ data order


def batch_indices(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    """Example indexes of (0-based) ``step``: epochs of a seeded permutation, a function of the step alone.
    With fewer examples than the batch, a permutation is repeated within the batch."""
    if n < 1:
        raise DistillError("no training examples")
    per_epoch = max(1, n // batch)
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch:
        perm = np.resize(perm, batch)
    return perm[j * batch:(j + 1) * batch]


# ------------------------------------------------------------------------------------------------ trainer


def _state_target(params, opt_state, key_data):
    return {"params": params, "opt_state": opt_state, "rng": key_data}


class DistillTrainer:
    """Distil ``teacher`` into ``student`` on token sequences ``input_ids`` / ``attention_mask`` [N, L]
    (right-padded). ``checkpoint_dir`` (optional): Orbax checkpoints every ``save_every`` steps and at the end.
    ``routing``: the teacher's RoutingConfig (or one per layer; default: the model's own top-k routing)."""

    def __init__(self, teacher_params: dict, teacher_cfg: TextConfig, student_params: dict, student_cfg: TextConfig,
                 input_ids: np.ndarray, attention_mask: np.ndarray, config: DistillConfig,
                 checkpoint_dir: str | Path | None = None, routing=None):
        self.teacher_params, self.teacher_cfg = teacher_params, teacher_cfg
        self.student_cfg = student_cfg
        # committed to the device, as restored checkpoints are: a resumed run then reuses the compiled step
        self.params = jax.device_put(jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), student_params),
                                     jax.devices()[0])
        self.input_ids = np.asarray(input_ids, np.int32)
        self.attention_mask = np.asarray(attention_mask, np.int32)
        if self.input_ids.ndim != 2 or self.input_ids.shape != self.attention_mask.shape or not len(self.input_ids):
            raise DistillError(f"training ids {self.input_ids.shape} / mask {self.attention_mask.shape}: "
                               "need matching non-empty [N, L]")
        if config.mode == "off_policy" and self.input_ids.shape[1] < 2:
            raise DistillError("off-policy training needs sequences of at least 2 tokens")
        self.config = config
        self.optimizer = make_optimizer(config)
        self.opt_state = jax.device_put(self.optimizer.init(self.params), jax.devices()[0])
        self.key = jax.random.key(config.seed)
        self.step = 0
        self.history: list[dict] = []
        self.teacher_opts = StackOptions.uniform(teacher_cfg, routing, backend=config.backend)
        self.student_opts = StackOptions.uniform(student_cfg, backend=config.backend)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir).absolute()
        self._manager = None
        self.last_batch: dict | None = None  # host copy of the last batch trained on (inspection, tests)

    # -- checkpoints

    @property
    def manager(self):
        if self._manager is None and self.checkpoint_dir is not None:
            import orbax.checkpoint as ocp

            options = ocp.CheckpointManagerOptions(max_to_keep=self.config.max_to_keep, create=True,
                                                   enable_async_checkpointing=False)
            self._manager = ocp.CheckpointManager(self.checkpoint_dir, options=options)
        return self._manager

    def _fingerprint(self) -> dict:
        d = self.config.to_dict()
        for k in ("steps", "save_every", "max_to_keep"):  # may change between a run and its resumption
            if not (k == "steps" and self.config.schedule == "cosine"):  # (the cosine decay depends on steps)
                d.pop(k)
        d["student"] = dict(num_layers=self.student_cfg.num_layers, num_experts=self.student_cfg.num_experts)
        d["data"] = list(self.input_ids.shape)
        return d

    def save(self) -> None:
        import orbax.checkpoint as ocp

        state = _state_target(self.params, self.opt_state, np.asarray(jax.random.key_data(self.key)))
        meta = dict(step=self.step, history=self.history, settings=self._fingerprint())
        self.manager.save(self.step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return None
        return self.manager.latest_step()

    def restore(self, step: int | None = None) -> int:
        """Load the latest (or given) checkpoint into the trainer; returns its step."""
        import orbax.checkpoint as ocp

        step = self.latest_step() if step is None else step
        if step is None:
            raise DistillError(f"{self.checkpoint_dir}: no checkpoint to resume from")
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        want = json.loads(json.dumps(self._fingerprint()))
        if meta.get("settings") != want:
            diff = sorted(k for k in set(want) | set(meta.get("settings", {}))
                          if want.get(k) != meta.get("settings", {}).get(k))
            raise ResumeMismatchError(f"{self.checkpoint_dir}: checkpoint at step {step} was made with other "
                                      f"settings ({', '.join(diff)}); use another directory or resume=False")
        target = _state_target(self.params, self.opt_state, np.asarray(jax.random.key_data(self.key)))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
        self.params, self.opt_state = state["params"], state["opt_state"]
        self.key = jax.random.wrap_key_data(jnp.asarray(state["rng"], jnp.uint32))
        self.step = int(meta["step"])
        self.history = list(meta["history"])
        return self.step

    def close(self) -> None:
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    # -- batches

    def make_batch(self, step: int) -> tuple[dict, jax.Array]:
        """(device batch, teacher logits) for ``step``; on-policy batches consume the trainer's key."""
        c = self.config
        idx = batch_indices(step, len(self.input_ids), c.batch_size, c.seed)
        ids, mask = self.input_ids[idx], self.attention_mask[idx]
        if c.mode == "off_policy":
            target_mask = mask.copy()
        else:
            p_ids, p_mask = left_pad_prompts(ids, mask, c.prompt_len)
            self.key, sub = jax.random.split(self.key)
            sampling = (SamplingConfig.greedy() if c.sample_temperature == 0
                        else SamplingConfig(do_sample=True, temperature=c.sample_temperature))
            gen = np.asarray(sample_continuations(self.params, self.student_cfg, self.student_opts,
                                                  jnp.asarray(p_ids), jnp.asarray(p_mask), sub,
                                                  gen_tokens=c.gen_tokens, sampling=sampling))
            ids = np.concatenate([p_ids, gen], axis=1)
            mask = np.concatenate([p_mask, np.ones_like(gen)], axis=1)
            target_mask = np.concatenate([np.zeros_like(p_mask), target_mask_after_eos(gen, c.eos_ids)], axis=1)
        ids_d, mask_d = jnp.asarray(ids), jnp.asarray(mask)
        t_logits = teacher_logits_fn(self.teacher_params, self.teacher_cfg, self.teacher_opts, ids_d, mask_d)
        if c.mode == "on_policy" and c.on_policy_ce_target == "teacher":
            ce_targets = jnp.argmax(t_logits[:, :-1], axis=-1).astype(jnp.int32)
        else:
            ce_targets = ids_d[:, 1:]
        self.last_batch = dict(input_ids=ids, attention_mask=mask, target_mask=target_mask)
        batch = dict(input_ids=ids_d, attention_mask=mask_d, target_mask=jnp.asarray(target_mask),
                     ce_targets=ce_targets)
        return batch, t_logits

    # -- loop

    def run(self, resume: bool = True, stop_after: int | None = None,
            progress: Callable[[Iterable, str, int], Iterable] | None = None) -> list[dict]:
        """Train up to ``config.steps`` steps (continuing from the latest checkpoint when ``resume``);
        ``stop_after``: stop once this many steps are done, without a final checkpoint (an interruption).
        Returns the loss history: one dict per step (step, loss, ce, kl, grad_norm)."""
        c = self.config
        if resume and self.latest_step() is not None:
            self.restore()
        elif not resume and self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            self.close()  # start over: remove the step directories of an earlier run (nothing else)
            for child in self.checkpoint_dir.iterdir():
                if child.is_dir() and child.name[:1].isdigit():
                    shutil.rmtree(child)
        end = c.steps if stop_after is None else min(c.steps, stop_after)
        steps = range(self.step, end)
        if progress is not None:
            steps = progress(steps, f"distill {c.mode}", len(steps))
        for _ in steps:
            batch, t_logits = self.make_batch(self.step)
            self.params, self.opt_state, m = train_step(self.params, self.opt_state, batch, t_logits,
                                                        cfg=self.student_cfg, opts=self.student_opts,
                                                        optimizer=self.optimizer, loss_cfg=c.loss)
            self.step += 1
            m = {k: float(v) for k, v in m.items()}
            self.history.append(dict(step=self.step, loss=m["total"], ce=m["ce"], kl=m["kl"],
                                     grad_norm=m["grad_norm"]))
            if not np.isfinite(m["total"]):
                raise DistillError(f"loss became {m['total']} at step {self.step}")
            if self.checkpoint_dir is not None and (self.step % c.save_every == 0 or self.step == c.steps):
                self.save()
        return self.history


def train(teacher_params: dict, teacher_cfg: TextConfig, student_params: dict, student_cfg: TextConfig,
          input_ids: np.ndarray, attention_mask: np.ndarray, config: DistillConfig,
          checkpoint_dir: str | Path | None = None, resume: bool = True, progress=None):
    """Run a DistillTrainer to completion: (trained student params, loss history)."""
    trainer = DistillTrainer(teacher_params, teacher_cfg, student_params, student_cfg, input_ids, attention_mask,
                             config, checkpoint_dir)
    try:
        history = trainer.run(resume=resume, progress=progress)
    finally:
        trainer.close()
    return trainer.params, history


# ------------------------------------------------------------------------------------------------ outputs


def plot_loss_curves(histories: dict[str, list[dict]], title: str = "distillation"):
    """A matplotlib Figure: total / CE / KL per step, one line per run."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("loss", "ce", "kl"), ("total loss", "CE (T=1)", "KL(teacher‖student) at T")):
        for name, hist in histories.items():
            if hist:
                ax.plot([h["step"] for h in hist], [h[key] for h in hist], label=name)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_student(teacher_dir: str | Path, out_dir: str | Path, teacher_params: dict, student_text_params: dict,
                 student_cfg: TextConfig, formats: Iterable[str] = ("hf",), dtype: str | None = None,
                 keep_talker: bool | None = None, note: dict | None = None) -> dict:
    """Write the student as a loadable checkpoint: ``out_dir/hf`` (config.json + safetensors + the teacher's
    tokenizer/preprocessor files) and/or ``out_dir/orbax``, through ``weights.export``. The Thinker's text
    model is the student; vision/audio/talker/code2wav are the teacher's, unchanged. config.json is the
    teacher's with ``num_hidden_layers`` / ``num_experts`` of thinker_config.text_config changed.

    The Talker reads the Thinker's layer ``accept_hidden_layer - 1``: a student with fewer layers cannot drive
    it. ``keep_talker=None`` keeps it when the student is deep enough and otherwise writes a thinker-only
    checkpoint; ``True`` with too shallow a student raises DistillError; ``False`` always drops it.
    (Even when kept, the Talker was trained on the TEACHER's layer: speech driven by a student is untested.)
    dtype: float32 | bfloat16 | float16 (default: the student's, fp32).
    Returns dict(paths={format: dir}, has_talker)."""
    from omni_jax.config import OmniConfig
    from omni_jax.experiments.pruning import PRUNING_RECORD
    from omni_jax.experiments.surgery import with_thinker_text
    from omni_jax.weights.export import export_checkpoint

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    config = json.loads((teacher_dir / "config.json").read_text())
    cfg = OmniConfig.from_hf(config)
    has_talker = cfg.has_talker
    if has_talker:
        deep_enough = student_cfg.num_layers >= cfg.talker.accept_hidden_layer
        if keep_talker and not deep_enough:
            raise DistillError(f"the Talker taps Thinker layer {cfg.talker.accept_hidden_layer - 1}; a student "
                               f"with {student_cfg.num_layers} layers cannot drive it (save with keep_talker=False)")
        has_talker = deep_enough if keep_talker is None else bool(keep_talker)
    text = config.setdefault("thinker_config", {}).setdefault("text_config", {})
    text["num_hidden_layers"] = student_cfg.num_layers
    for key in [k for k in ("num_experts", "num_local_experts") if k in text] or ["num_experts"]:
        text[key] = student_cfg.num_experts
    if not has_talker:
        for key in ("talker_config", "code2wav_config"):
            config.pop(key, None)
        config["enable_audio_output"] = False
    new_cfg = OmniConfig.from_hf(config)
    if new_cfg != with_thinker_text(new_cfg, student_cfg):
        raise DistillError("the student's config differs from the teacher's in more than layers / experts")
    params = {k: v for k, v in teacher_params.items() if has_talker or k not in ("talker", "code2wav")}
    params["thinker"] = dict(params["thinker"], text=student_text_params)
    record = dict(format="omni_jax.distillation.v1", distilled_from=str(teacher_dir.absolute()), **(note or {}))
    paths = export_checkpoint(params, new_cfg, out_dir, formats, config_json=config, aux_dir=teacher_dir,
                              skip_aux=(PRUNING_RECORD,), extra_files={PRUNING_RECORD: json.dumps(record, indent=1)},
                              dtype=dtype, source={"from": str(teacher_dir)})
    return dict(paths=paths, has_talker=has_talker)
