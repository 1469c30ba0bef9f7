"""Knowledge distillation (omni_jax/experiments/distill.py) on the tiny checkpoint.

The training tests use the tiny Thinker with its vocabulary cut to the first VOCAB ids (embedding rows and
lm_head columns sliced; the data uses only those ids): the real 152k-token head would make every step and
compile several times slower on this shared 2-core machine without testing anything more.
"""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omni_jax.experiments import distill as D
from omni_jax.models.common import pure_params
from omni_jax.weights import load_checkpoint

VOCAB = 2048
STEPS = 30


@pytest.fixture(scope="module")
def full_teacher(tiny_ckpt):
    cfg, model = load_checkpoint(tiny_ckpt)
    return cfg, pure_params(model)


@pytest.fixture(scope="module")
def teacher(full_teacher):
    cfg, params = full_teacher
    tp = params["thinker"]["text"]
    tp = dict(tp, embed=tp["embed"][:VOCAB], lm_head=tp["lm_head"][:, :VOCAB])
    return tp, dataclasses.replace(cfg.thinker.text, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (8, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[3, 10:] = 0  # right padding
    mask[5, 12:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="module")
def student(teacher):
    return D.make_student(*teacher, num_layers=1, num_experts=4)  # 1 layer: half the compile time of 2


def config(**kw):
    base = dict(steps=STEPS, lr=3e-3, batch_size=4, save_every=5, backend="dense")
    return D.DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def uninterrupted(teacher, student, data, tmp_path_factory):
    """A full STEPS-step off-policy run with checkpoints every 5 steps."""
    sp, sc, _ = student
    trainer = D.DistillTrainer(*teacher, sp, sc, *data, config(), tmp_path_factory.mktemp("ck") / "full")
    history = trainer.run(resume=False)
    trainer.close()
    return trainer, history


# ------------------------------------------------------------------------------------------------ loss


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_distill_loss_matches_hand_computation():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 5, 11)) * 3, rng.normal(size=(2, 5, 11)) * 3
    targets = rng.integers(0, 11, (2, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    temp = 2.0
    ce_tok = -np.take_along_axis(_np_log_softmax(s), targets[..., None], -1)[..., 0]
    lq, lp = _np_log_softmax(t / temp), _np_log_softmax(s / temp)
    kl_tok = (np.exp(lq) * (lq - lp)).sum(-1)
    ce, kl = (ce_tok * mask).sum() / mask.sum(), (kl_tok * mask).sum() / mask.sum()
    for t2 in (True, False):
        total, parts = D.distill_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(targets),
                                      jnp.asarray(mask), 0.7, 0.3, temp, kl_t2_scale=t2)
        want = 0.7 * ce + 0.3 * (temp ** 2 if t2 else 1.0) * kl
        np.testing.assert_allclose(float(parts["ce"]), ce, rtol=1e-5)
        np.testing.assert_allclose(float(parts["kl"]), kl, rtol=1e-5)
        np.testing.assert_allclose(float(total), want, rtol=1e-5)
    # masked positions do not count: changing them changes nothing
    s2 = s.copy()
    s2[0, 3:] = 100.0
    total2, _ = D.distill_loss(jnp.asarray(s2, jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(targets),
                               jnp.asarray(mask), 0.7, 0.3, temp)
    np.testing.assert_allclose(float(total2), 0.7 * ce + 0.3 * 4 * kl, rtol=1e-5)


def test_kl_is_zero_when_student_is_teacher():
    logits = jax.random.normal(jax.random.key(0), (2, 6, 50)) * 4
    targets = jnp.zeros((2, 6), jnp.int32)
    total, parts = D.distill_loss(logits, logits, targets, jnp.ones((2, 6)))
    assert abs(float(parts["kl"])) < 1e-6
    np.testing.assert_allclose(float(total), 0.7 * float(parts["ce"]), rtol=1e-6)


def test_bad_settings_raise():
    with pytest.raises(D.DistillError, match="mode"):
        D.DistillConfig(mode="sideways")
    with pytest.raises(D.DistillError, match="unknown distillation setting"):
        D.DistillConfig.from_dict({"stepz": 3})
    c = D.DistillConfig.from_dict({"steps": 3, "alpha_ce": 0.5, "temperature": 3.0, "eos_ids": [1]})
    assert c.loss == D.LossConfig(alpha_ce=0.5, temperature=3.0) and c.eos_ids == (1,)
    assert D.DistillConfig.from_dict(c.to_dict()) == c


# ------------------------------------------------------------------------------------------------ student


def test_make_student_layers_and_experts(teacher):
    tp, tc = teacher
    sp, sc, info = D.make_student(tp, tc, 2, 4)
    assert (sc.num_layers, sc.num_experts) == (2, 4) and info["layers"] == [0, tc.num_layers - 1]
    chex.assert_shape(sp["layers"]["mlp"]["gate_up"], (2, 4, tc.hidden_size, 2 * tc.moe_intermediate_size))
    chex.assert_type(sp["layers"]["mlp"]["router"], jnp.float32)
    np.testing.assert_array_equal(sp["layers"]["mlp"]["down"][1], np.asarray(tp["layers"]["mlp"]["down"])[-1, :4])
    counts = np.zeros((tc.num_layers, tc.num_experts), np.int64)
    counts[:, [6, 2, 5, 7]] = [40, 30, 20, 10]
    sp, sc, info = D.make_student(tp, tc, 2, 3, expert_choice="usage", counts=counts)
    assert info["experts"] == [[2, 5, 6], [2, 5, 6]]
    np.testing.assert_array_equal(sp["layers"]["mlp"]["router"][0],
                                  np.asarray(tp["layers"]["mlp"]["router"])[0][:, [2, 5, 6]])
    with pytest.raises(D.DistillError, match="router counts"):
        D.make_student(tp, tc, 2, 3, expert_choice="usage")


# ------------------------------------------------------------------------------------------------ training


def test_batch_order_is_a_seeded_permutation_per_epoch():
    first_epoch = np.concatenate([D.batch_indices(s, 8, 4, seed=3) for s in range(2)])
    assert sorted(first_epoch) == list(range(8))
    assert not np.array_equal(first_epoch, np.concatenate([D.batch_indices(s, 8, 4, 3) for s in (2, 3)]))
    np.testing.assert_array_equal(D.batch_indices(5, 8, 4, 3), D.batch_indices(5, 8, 4, 3))
    assert len(D.batch_indices(0, 3, 4, 0)) == 4  # fewer examples than the batch


def test_distillation_loss_falls(uninterrupted):
    _, history = uninterrupted
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    losses = np.array([h["loss"] for h in history])
    assert np.isfinite(losses).all()
    first, last = losses[:3].mean(), losses[-3:].mean()
    assert last < 0.7 * first, (first, last)
    ce = np.array([h["ce"] for h in history])
    assert ce[-3:].mean() < ce[:3].mean()


def test_kl_only_distillation_moves_the_student_to_the_teacher(teacher, student, data):
    """On these random-token sequences the CE term (the data's next tokens) dominates the total; with the
    KL term alone the student's distribution approaches the teacher's. (Same compiled step: the loss
    weights are traced.)"""
    sp, sc, _ = student
    c = config(steps=15, loss=D.LossConfig(alpha_ce=0.0, alpha_kl=1.0))
    history = D.train(*teacher, sp, sc, *data, c)[1]
    kl = np.array([h["kl"] for h in history])
    assert kl[-3:].mean() < 0.7 * kl[:3].mean(), kl
    np.testing.assert_allclose([h["loss"] for h in history], 4.0 * kl, rtol=1e-6)  # T² = 4


def test_resumed_run_continues_the_same_curve(teacher, student, data, uninterrupted, tmp_path):
    """Interrupted after 17 steps (last checkpoint at 15), resumed in a fresh trainer: the same loss curve as
    the uninterrupted run (same data order, RNG, restored optimizer state), to fp32 rounding."""
    sp, sc, _ = student
    ck = tmp_path / "interrupted"
    first = D.DistillTrainer(*teacher, sp, sc, *data, config(), ck)
    first.run(resume=False, stop_after=17)
    first.close()
    second = D.DistillTrainer(*teacher, sp, sc, *data, config(), ck)
    assert second.latest_step() == 15
    history = second.run(resume=True)
    second.close()
    full_trainer, full = uninterrupted
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    got, want = np.array([h["loss"] for h in history]), np.array([h["loss"] for h in full])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)  # observed: bit-identical
    for a, b in zip(jax.tree.leaves(second.params), jax.tree.leaves(full_trainer.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # resuming with other settings is refused clearly
    with pytest.raises(D.ResumeMismatchError, match="lr"):
        D.DistillTrainer(*teacher, sp, sc, *data, config(lr=1e-2), ck).run(resume=True)


def test_on_policy_trains_on_student_samples(teacher, student, data):
    """Greedy sampling here (deterministic, and the sequences keep the off-policy length 8 + 8 = 16 so the
    compiled step is reused); sampled continuations differ only in the SamplingConfig given to ``sample``."""
    sp, sc, _ = student
    c = config(mode="on_policy", steps=6, prompt_len=8, gen_tokens=8, sample_temperature=0.0)
    trainer = D.DistillTrainer(*teacher, sp, sc, *data, c)
    history = trainer.run(resume=False)
    losses = np.array([h["loss"] for h in history])
    assert len(losses) == 6 and np.isfinite(losses).all() and losses[-1] < losses[0]
    b = trainer.last_batch
    chex.assert_shape([b["input_ids"], b["attention_mask"], b["target_mask"]], (4, 16))
    # prompts: the data's first tokens; targets: exactly the generated positions
    idx = D.batch_indices(5, len(data[0]), 4, c.seed)
    np.testing.assert_array_equal(b["input_ids"][:, :8], data[0][idx, :8])
    np.testing.assert_array_equal(b["target_mask"], np.repeat([[0] * 8 + [1] * 8], 4, 0))

    # the continuations are the student's own: greedy samples = argmax of its teacher-forced logits
    batch, _ = trainer.make_batch(6)
    seq = np.asarray(batch["input_ids"])
    student_logits = D.teacher_logits_fn(trainer.params, sc, trainer.student_opts, batch["input_ids"],
                                         batch["attention_mask"])
    np.testing.assert_array_equal(seq[:, 8:], np.asarray(jnp.argmax(student_logits[:, 7:-1], -1)))
    # left padding of short prompts
    p_ids, p_mask = D.left_pad_prompts(data[0][:2], np.array([[1, 1] + [0] * 14, [1] * 16]), 4)
    np.testing.assert_array_equal(p_mask, [[0, 0, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(p_ids[0], [0, 0, *data[0][0, :2]])


def test_target_mask_stops_after_eos():
    gen = np.array([[5, 9, 5, 5], [9, 9, 1, 2], [1, 2, 3, 4]])
    np.testing.assert_array_equal(D.target_mask_after_eos(gen, [9]), [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])


# ------------------------------------------------------------------------------------------------ outputs


def test_loss_curve_figure(uninterrupted, tmp_path):
    fig = D.plot_loss_curves({"off_policy": uninterrupted[1]})
    fig.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_saved_student_loads(full_teacher, tiny_ckpt, tmp_path):
    cfg, params = full_teacher
    sp, sc, info = D.make_student(params["thinker"]["text"], cfg.thinker.text, 2, 4)
    out = D.save_student(tiny_ckpt, tmp_path / "student", params, sp, sc, note=info)
    assert out["has_talker"]  # 2 layers >= accept_hidden_layer = 2
    hf = out["paths"]["hf"]
    text = json.loads((hf / "config.json").read_text())["thinker_config"]["text_config"]
    assert (text["num_hidden_layers"], text["num_experts"]) == (2, 4)
    assert (hf / "tokenizer_config.json").is_file()
    cfg2, model2 = load_checkpoint(hf)
    assert cfg2.thinker.text == sc and cfg2.has_talker
    p2 = pure_params(model2)
    for a, b in zip(jax.tree.leaves(p2["thinker"]["text"]), jax.tree.leaves(sp)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(p2["talker"]["codec_head"]), np.asarray(params["talker"]["codec_head"]))

    # a student shallower than the Talker's tap: thinker-only checkpoint, or a clear error when asked to keep it
    sp1, sc1, _ = D.make_student(params["thinker"]["text"], cfg.thinker.text, 1, 2)
    with pytest.raises(D.DistillError, match="Talker taps"):
        D.save_student(tiny_ckpt, tmp_path / "s1", params, sp1, sc1, keep_talker=True)
    out1 = D.save_student(tiny_ckpt, tmp_path / "s1", params, sp1, sc1)
    assert not out1["has_talker"]
    assert not load_checkpoint(out1["paths"]["hf"])[0].has_talker
