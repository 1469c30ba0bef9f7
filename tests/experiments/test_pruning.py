"""Expert pruning on the tiny checkpoint (8 experts, top-2, 4 thinker layers): usage counts, selection,
sliced == masked, keep-all is the identity, and the written HF / Orbax checkpoints load everywhere.

Tolerances: sliced vs masked logits in fp32 with the default (auto) dispatch: 2e-5 max abs on logits of
magnitude ~8 (measured: 0.0 on CPU; the two may differ only in the softmax's summation order over 8 vs 6
entries and in the dispatch's tiling, so a backend that tiles by expert count may leave ~1e-6). Against
transformers (eager attention, fp32): 1e-4 max abs, the bound tests/models/test_thinker_text.py justifies for
the unpruned model (HF's own sdpa-vs-eager noise is 5.9e-5 there); measured 5.8e-5. A broken keep mask
(wrong experts kept) moves the logits by ~8.7, checked by hand; the sliced-vs-unpruned gap (> 1e-2) is asserted.
"""

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from omni_jax.config import OmniConfig
from omni_jax.experiments import pruning
from omni_jax.experiments.pruning import PruningError
from omni_jax.weights.export import ExportError
from omni_jax.experiments.evaluate import text_positions
from omni_jax.models import thinker_text
from omni_jax.models.common import pure_params
from omni_jax.models.decoder import StackOptions
from omni_jax.weights import load_checkpoint, load_flat_params

KEEP = 6  # of 8: 0.75, the tiny analogue of 96 of 128
TALKER_KEEP = 4


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    cfg, m = load_checkpoint(tiny_ckpt)
    return cfg, jax.tree.map(np.asarray, pure_params(m))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 151000, size=(3, 11)).astype(np.int32)
    mask = np.ones((3, 11), np.int32)
    mask[1, 7:] = 0  # right padding (the experiments' eval sets are right-padded)
    ids[1, 7:] = 151643
    return ids, mask


@partial(jax.jit, static_argnums=(1, 2))
def _forward(text_params, text_cfg, opts, ids, pos, mask):
    out = thinker_text.text_forward(text_params, text_cfg, opts, thinker_text.embed_tokens(text_params, ids), pos,
                                    mask)
    return out["logits"], out["stats"].counts


def forward(text_params, text_cfg, ids, mask, opts=None):
    """(logits, router counts [L, E]); one compilation per (config, options), shared across tests."""
    opts = StackOptions.uniform(text_cfg) if opts is None else opts
    lg, counts = _forward(text_params, text_cfg, opts, jnp.asarray(ids), text_positions(jnp.asarray(mask)),
                          jnp.asarray(mask))
    return np.asarray(lg), np.asarray(counts)


def logits(text_params, text_cfg, ids, mask, opts=None):
    return forward(text_params, text_cfg, ids, mask, opts)[0]


@pytest.fixture(scope="module")
def usage(model, batch):
    cfg, params = model
    return pruning.usage_counts(params["thinker"]["text"], cfg.thinker.text, *batch, batch_size=2)


@pytest.fixture(scope="module")
def pruned(model, usage):
    cfg, params = model
    keep = pruning.select_experts(usage, KEEP, cfg.thinker.text.top_k)
    talker_keep = np.stack([np.arange(1, 8, 2)] * cfg.talker.text.num_layers)  # any fixed choice
    p, c = pruning.prune_thinker(params, cfg, keep, talker_keep)
    return p, c, keep, talker_keep


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_ckpt, pruned):
    p, c, keep, talker_keep = pruned
    out = tmp_path_factory.mktemp("pruned") / "ckpt"
    dirs = pruning.save_pruned(p, c, tiny_ckpt, out, kept={"thinker": keep, "talker": talker_keep})
    return dirs


def test_usage_counts_every_real_token(model, batch, usage):
    cfg, params = model
    ids, mask = batch
    tc = cfg.thinker.text
    assert usage.shape == (tc.num_layers, tc.num_experts) and usage.dtype == np.int64
    # each real token is routed to top_k experts in every layer; padding (and the last batch's filler row) is not
    np.testing.assert_array_equal(usage.sum(axis=1), mask.sum() * tc.top_k)
    # batching (2 + 1 padded row) does not change the counts: same as one forward of all rows
    _, whole = forward(params["thinker"]["text"], tc, ids, mask)
    np.testing.assert_array_equal(usage, whole)


def test_select_experts_most_used_ties_to_lower_index():
    counts = np.array([[5, 9, 9, 1, 9], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(pruning.select_experts(counts, 3), [[1, 2, 4], [0, 1, 2]])
    np.testing.assert_array_equal(pruning.select_experts(counts, 2), [[1, 2], [0, 1]])
    np.testing.assert_array_equal(pruning.select_experts(counts, 4), [[0, 1, 2, 4], [0, 1, 2, 3]])
    assert pruning.resolve_keep(0.75, 128, 8) == 96 and pruning.resolve_keep(0.5, 128, 8) == 64
    assert pruning.resolve_keep(0.75, 8, 2) == 6 and pruning.resolve_keep(64, 128, 8) == 64


@pytest.mark.parametrize("call", [
    lambda cfg, u: pruning.select_experts(u, cfg.thinker.text.top_k - 1, cfg.thinker.text.top_k),
    lambda cfg, u: pruning.select_experts(u, cfg.thinker.text.num_experts + 1, cfg.thinker.text.top_k),
    lambda cfg, u: pruning.resolve_keep(1, cfg.thinker.text.num_experts, cfg.thinker.text.top_k),
    lambda cfg, u: pruning.resolve_keep(1.5, cfg.thinker.text.num_experts, cfg.thinker.text.top_k),
    lambda cfg, u: pruning.masked_routing(cfg.thinker.text, np.zeros((cfg.thinker.text.num_layers, 1), int)),
])
def test_keep_count_out_of_range_is_a_one_line_error(model, usage, call):
    cfg, params = model
    with pytest.raises(PruningError) as e:
        call(cfg, usage)
    assert "\n" not in str(e.value) and "keep" in str(e.value)


def test_prune_below_top_k_or_above_num_experts_raises(model):
    cfg, params = model
    tc = cfg.thinker.text
    for m in (tc.top_k - 1, tc.num_experts + 1):
        keep = np.stack([np.arange(m) % tc.num_experts] * tc.num_layers)
        with pytest.raises(PruningError, match="keeping"):
            pruning.prune_thinker(params, cfg, keep)


def test_keeping_every_expert_changes_nothing(model, batch):
    """The issue's required check: a keep list (and a keep mask) of ALL experts gives identical logits."""
    cfg, params = model
    tc = cfg.thinker.text
    ids, mask = batch
    ref = logits(params["thinker"]["text"], tc, ids, mask)
    everything = np.stack([np.arange(tc.num_experts)] * tc.num_layers)
    p, c = pruning.prune_thinker(params, cfg, everything)
    assert c == cfg
    np.testing.assert_array_equal(logits(p["thinker"]["text"], c.thinker.text, ids, mask), ref)
    masked = logits(params["thinker"]["text"], tc, ids, mask, pruning.masked_options(tc, everything))
    np.testing.assert_array_equal(masked, ref)


def test_sliced_model_equals_masked_model(model, pruned, batch):
    cfg, params = model
    p, c, keep, _ = pruned
    ids, mask = batch
    valid = mask.astype(bool)
    tc = cfg.thinker.text
    assert c.thinker.text.num_experts == KEEP
    assert p["thinker"]["text"]["layers"]["mlp"]["gate_up"].shape[:2] == (tc.num_layers, KEEP)
    sliced, sliced_used = forward(p["thinker"]["text"], c.thinker.text, ids, mask)
    masked = logits(params["thinker"]["text"], tc, ids, mask, pruning.masked_options(tc, keep))
    err = np.abs(sliced - masked)[valid].max()
    assert err < 2e-5, err
    # and pruning matters here: the unpruned model is far from both
    full = logits(params["thinker"]["text"], tc, ids, mask)
    assert np.abs(full - sliced)[valid].max() > 1e-2
    # the masked model never routes to a pruned expert
    _, used = forward(params["thinker"]["text"], tc, ids, mask, pruning.masked_options(tc, keep))
    dropped = ~np.array(pruning.keep_mask(keep, tc.num_experts))
    assert used[dropped].sum() == 0 and used.sum() == mask.sum() * tc.top_k * tc.num_layers
    np.testing.assert_array_equal(used[~dropped].reshape(sliced_used.shape), sliced_used)


def test_written_dirs_are_complete_and_traceable(written, tiny_ckpt, pruned):
    _, c, keep, talker_keep = pruned
    src = json.loads((tiny_ckpt / "config.json").read_text())
    for fmt, d in written.items():
        names = {p.name for p in d.iterdir()}
        for f in ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json",
                  "preprocessor_config.json", "generation_config.json", pruning.PRUNING_RECORD):
            assert f in names, (fmt, f)
        cj = json.loads((d / "config.json").read_text())
        # the spelling of the source is kept: thinker "num_experts", talker "num_local_experts" (transformers 5.x)
        assert cj["thinker_config"]["text_config"]["num_experts"] == KEEP
        assert cj["talker_config"]["text_config"]["num_local_experts"] == TALKER_KEEP
        assert "num_local_experts" not in cj["thinker_config"]["text_config"]
        cj["thinker_config"]["text_config"]["num_experts"] = 8
        cj["talker_config"]["text_config"]["num_local_experts"] = 8
        assert cj == src  # nothing else changed
        assert OmniConfig.from_file(d) == c
        rec = pruning.read_pruning_record(d)
        assert rec["thinker"]["kept_experts"] == keep.tolist()
        assert rec["thinker"]["num_experts_original"] == 8
        assert rec["talker"]["kept_experts"] == talker_keep.tolist()
    assert not list(written["hf"].parent.parent.glob(".*tmp*"))  # no temporary directory left behind


def test_hf_dir_loads_in_transformers_with_matching_logits(written, pruned, batch):
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeForConditionalGeneration

    p, c, _, _ = pruned
    ids, mask = batch
    hf, info = Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        written["hf"], dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    hf.eval()
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert hf.config.thinker_config.text_config.num_experts == KEEP
    sd = hf.state_dict()
    assert sd["thinker.model.language_model.layers.0.mlp.gate.weight"].shape[0] == KEEP
    assert sd["talker.model.layers.0.mlp.gate.weight"].shape[0] == TALKER_KEEP
    with torch.no_grad():
        ref = hf.thinker(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                         use_cache=False).logits.float().numpy()
    ours = logits(p["thinker"]["text"], c.thinker.text, ids, mask)
    valid = mask.astype(bool)
    err = np.abs(ours - ref)[valid].max()
    assert err < 1e-4, err
    assert np.abs(ref[valid]).max() > 1.0


def test_orbax_dir_equals_hf_dir_and_params(written, pruned):
    p, c, _, _ = pruned
    from omni_jax.weights.mapping import flatten

    cfg_hf, model_hf = load_checkpoint(written["hf"])  # what the generate CLI and omni_jax.load call
    assert cfg_hf == c
    a = {k: np.asarray(v) for k, v in flatten(pure_params(model_hf)).items()}
    b = load_flat_params(written["orbax"], c)
    assert a.keys() == b.keys()
    ours = flatten(p)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        np.testing.assert_array_equal(a[k], np.asarray(ours[k], np.float32), err_msg=k)
    assert a["thinker.text.layers.mlp.router"].shape[-1] == KEEP


def test_existing_output_and_bad_format_refused(pruned, tiny_ckpt, tmp_path):
    p, c, keep, _ = pruned
    with pytest.raises(ExportError, match="already exists"):
        pruning.save_pruned(p, c, tiny_ckpt, tmp_path)
    with pytest.raises(ExportError, match="formats"):
        pruning.save_pruned(p, c, tiny_ckpt, tmp_path / "x", formats=("gguf",))
    with pytest.raises(ExportError, match="config expects"):  # params that do not fit the config
        pruning.save_pruned(p, OmniConfig.from_file(tiny_ckpt), tiny_ckpt, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_failure_while_writing_leaves_nothing(pruned, tiny_ckpt, tmp_path, monkeypatch):
    import omni_jax.weights.orbax_io as orbax_io

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(orbax_io, "write_groups", broken)
    p, c, keep, _ = pruned
    with pytest.raises(OSError, match="disk full"):  # after the HF dir was written into the temporary dir
        pruning.save_pruned(p, c, tiny_ckpt, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_generate_cli_runs_on_the_pruned_dir(written, capsys):
    """``python -m omni_jax.generate --checkpoint DIR`` (its main(), in process: the subprocess would spend
    most of its time importing JAX) on the converted pruned directory."""
    from omni_jax.generate import main

    rc = main(["--checkpoint", str(written["orbax"]), "--prompt", "Hello", "--max-new-tokens", "3",
               "--no-speech", "--greedy", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    result = json.loads(out.out.strip().splitlines()[-1])
    assert isinstance(result, dict) and result, out.out


def test_pruning_a_pruned_checkpoint_records_original_ids(written, pruned, tmp_path):
    p, c, keep, talker_keep = pruned
    again = np.stack([[5, 0, 3]] * c.thinker.text.num_layers)  # positions among the 6 kept experts
    p2, c2 = pruning.prune_thinker(p, c, again)
    d = pruning.save_pruned(p2, c2, written["hf"], tmp_path / "twice", formats=("hf",), kept={"thinker": again})
    rec = pruning.read_pruning_record(d["hf"])
    assert rec["thinker"]["kept_experts"] == np.take_along_axis(keep, np.sort(again, 1), 1).tolist()
    assert rec["thinker"]["num_experts_original"] == 8 and rec["thinker"]["num_experts_kept"] == 3
    assert rec["talker"]["kept_experts"] == talker_keep.tolist()  # carried over from the source
    assert OmniConfig.from_file(d["hf"]).thinker.text.num_experts == 3
