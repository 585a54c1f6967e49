"""The analytic FLOPs formula against matmul FLOPs counted by torch on real passes.

``FlopCounterMode`` counts every mm/addmm/bmm the model dispatches (forward and, when run
inside it, backward). With the explicit ``math`` attention backend the attention products
are bmm's too, so the formula must agree exactly, not just roughly.
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lvmae.config import MaskingConfig
from lvmae.masking import build_masks
from lvmae.models import LVMAE, ModelConfig
from lvmae.models.flops import (
    FlopCount,
    forward_flops,
    mfu,
    model_flops,
    peak_tflops,
    reference_flops,
    stack_flops,
)
from lvmae.models.reference import ReferenceLVMAE

BASE = dict(in_dim=24, width=32, depth=2, heads=4, decoder_width=16, decoder_depth=1, decoder_heads=2,
            attention="math")
CONFIGS = {
    "concat_projected": ModelConfig(**BASE),
    "identity_embed": ModelConfig(**{**BASE, "in_dim": 32}),
    "tokens_fusion": ModelConfig(**{**BASE, "modality_dims": [16, 8], "modality_fusion": "tokens", "mlp_ratio": 3.0}),
}


def _batch(cfg: ModelConfig, lengths: list[int], ratio: float = 0.5):
    g = torch.Generator().manual_seed(0)
    n = max(lengths)
    x = torch.randn(len(lengths), n, cfg.in_dim, generator=g)
    valid = torch.arange(n) < torch.tensor(lengths)[:, None]
    return x, valid, build_masks(x, valid, MaskingConfig(ratio=ratio), g)


def _counted(model: torch.nn.Module, x, valid, masks, backward: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        out = model(x, valid, masks, 1.0)
        if backward:
            out["loss"].backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("lengths", [[10, 10, 10], [12, 7, 3]])
def test_fast_path_flops_match_counted(name, lengths):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = LVMAE(cfg).train()
    x, valid, masks = _batch(cfg, lengths)
    b, k = masks.ids_keep.shape
    executed = forward_flops(cfg, [k] * b, [valid.shape[1]] * b)  # the fast path pads to K visible
    assert _counted(model, x, valid, masks, backward=False) == pytest.approx(executed.forward, rel=1e-9)
    assert _counted(model, x, valid, masks, backward=True) == pytest.approx(executed.train_step, rel=1e-9)
    if name == "concat_projected":
        assert executed.embed > 0 and executed.train_step < 3 * executed.forward
    if name == "identity_embed":
        assert executed.embed == 0


@pytest.mark.parametrize("name", ["concat_projected", "tokens_fusion"])
def test_reference_flops_match_counted(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    ref = ReferenceLVMAE(cfg).train()
    x, valid, masks = _batch(cfg, [12, 9, 4])
    counted = _counted(ref, x, valid, masks, backward=True)
    assert counted == pytest.approx(reference_flops(cfg, 3, 12).train_step, rel=1e-9)


def test_model_flops_count_real_tokens_only():
    cfg = CONFIGS["concat_projected"]
    x, valid, masks = _batch(cfg, [12, 7, 3])
    keep = masks.keep_valid.sum(1).tolist()
    n_valid = valid.sum(1).tolist()
    useful = model_flops(cfg, n_valid, keep)
    alone = [model_flops(cfg, [v], [k]).forward for v, k in zip(n_valid, keep)]
    assert useful.forward == pytest.approx(sum(alone))
    padded = forward_flops(cfg, [masks.ids_keep.shape[1]] * 3, [12] * 3)
    assert useful.forward < padded.forward < reference_flops(cfg, 3, 12).forward


def test_paper_size_reproduces_the_documented_figures():
    """Width 1024 x 32, decoder 512 x 8, 16 x 256 segments at 50 % masking: the reference
    executes ~11 TFLOP per step, so 153 ms/step is ~9 % of an ~800 TFLOP/s peak (docs/performance.md)."""
    paper = ModelConfig(in_dim=1024, width=1024, depth=32, heads=16, decoder_width=512, decoder_depth=8,
                        decoder_heads=16)
    ref = reference_flops(paper, 16, 256).train_step
    assert 10.5e12 < ref < 11.5e12
    assert mfu(ref, 0.153, 800e12) == pytest.approx(0.09, abs=0.005)
    useful = model_flops(paper, [256] * 16, [128] * 16).train_step
    assert 0.5 < useful / ref < 0.55  # the encoder dominates and sees half the tokens


def test_stack_formula_and_helpers():
    # 1 block, n=2, C=4, H=8: 8*2*16 + 4*2*4*8 + 4*4*4 = 256 + 256 + 64
    assert stack_flops(2, 4, 1, mlp_ratio=2.0) == 576
    assert FlopCount(embed=1, encoder=2).train_step == 3 * 3 - 1
    assert peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert peak_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert peak_tflops(None) is None and peak_tflops("Some CPU") is None
    assert mfu(1e12, 0.5, 4e12) == pytest.approx(0.5) and mfu(1e12, 0.5, None) is None
    with pytest.raises(ValueError, match="counts"):
        forward_flops(CONFIGS["concat_projected"], [1, 2], [3])
    assert dataclasses.asdict(FlopCount()).keys() <= FlopCount().as_dict().keys()
