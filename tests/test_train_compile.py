"""train.compile: the torch engine runs a torch.compile'd wrapper of the same module."""

import dataclasses

import pytest
import torch

from lvmae.config import load_config
from lvmae.errors import ConfigError
from lvmae.masking import build_masks
from lvmae.models import LVMAE
from lvmae.train.engine import DistInfo, build_engine

TINY = ["model.in_dim=16", "model.width=16", "model.depth=1", "model.heads=2", "model.decoder_width=8",
        "model.decoder_depth=1", "model.decoder_heads=2", "deepspeed.engine=torch", "run.device=cpu"]


def _engine(compile_: bool, mode: str = "default"):
    cfg = load_config([], [*TINY, f"train.compile={str(compile_).lower()}", f"train.compile_mode={mode}"])
    torch.manual_seed(0)
    return build_engine(LVMAE(cfg.model), cfg, DistInfo(0, 1, 0, torch.device("cpu"))), cfg


def test_compile_needs_the_torch_engine():
    with pytest.raises(ConfigError, match="train.compile"):
        load_config([], ["train.compile=true", "deepspeed.engine=deepspeed"])
    with pytest.raises(ConfigError, match="train.compile_mode must be one of"):
        load_config([], ["train.compile_mode=fast"])


def test_compile_mode_reaches_torch_compile_and_graph_outputs_are_copied(monkeypatch):
    """``reduce-overhead`` is passed on; on CUDA its outputs are cloned (the next CUDA graph replay
    overwrites them, and the loop keeps losses across steps) and gradients still flow."""
    seen = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: seen.append(kw) or compile_(m, **kw))
    engine, cfg = _engine(True, "reduce-overhead")
    assert seen == [{"mode": "reduce-overhead"}] and not engine.graph_outputs  # CPU: no CUDA graphs
    _engine(True)
    assert seen[-1] == {"mode": None}
    engine.graph_outputs = True  # the CUDA branch, run on the eager module
    engine.run_model = engine.model
    g = torch.Generator().manual_seed(1)
    x, valid = torch.randn(2, 6, 16, generator=g), torch.ones(2, 6, dtype=torch.bool)
    masks = build_masks(x, valid, cfg.masking, g)
    raw = engine.model(x, valid, masks, 1.0)
    out = engine.forward(x, valid, masks, scale=1.0)
    assert out.keys() == raw.keys()
    for k in ("pred", "target"):
        assert out[k].data_ptr() != raw[k].data_ptr()
        torch.testing.assert_close(out[k], raw[k])
    engine.backward(out["loss"])
    assert all(p.grad is not None for p in engine.model.encoder.parameters())
    # gradient accumulation: the first backward's .grad (a graph output on CUDA, freed by the next
    # replay) is copied out before the next forward, and the second backward adds into the copy
    first = {n: p.grad for n, p in engine.model.named_parameters() if p.grad is not None}
    want = {n: 2 * t.clone() for n, t in first.items()}
    engine.backward(engine.forward(x, valid, masks, scale=1.0)["loss"])
    for n, p in engine.model.named_parameters():
        if n in first:
            assert p.grad.data_ptr() != first[n].data_ptr()
            torch.testing.assert_close(p.grad, want[n])


def test_compiled_engine_wraps_the_same_module():
    engine, _ = _engine(True)
    assert engine.run_model is not engine.model and isinstance(engine.run_model, torch._dynamo.OptimizedModule)
    assert engine.run_model._orig_mod is engine.model  # one set of parameters, checkpoint keys unchanged
    assert not any(k.startswith("_orig_mod") for k in engine.model.state_dict())
    plain, _ = _engine(False)
    assert plain.run_model is plain.model


@pytest.mark.slow
def test_compiled_step_matches_eager():
    losses = []
    for flag, mode in ((False, "default"), (True, "default"), (True, "reduce-overhead")):
        engine, cfg = _engine(flag, mode)
        g = torch.Generator().manual_seed(1)
        x, valid = torch.randn(4, 12, 16, generator=g), torch.ones(4, 12, dtype=torch.bool)
        masks = build_masks(x, valid, dataclasses.replace(cfg.masking), g)
        for _ in range(2):
            out = engine.forward(x, valid, masks, scale=1.0)
            engine.backward(out["loss"])
            engine.step()
        losses.append(float(out["loss"]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-4) and losses[2] == pytest.approx(losses[0], rel=1e-4)
