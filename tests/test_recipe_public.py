"""`-c lvmae_public`: the public LV-MAE code's setup loads, builds, and masks as that code does."""

import dataclasses
from pathlib import Path

import torch

from lvmae.config import load_config
from lvmae.masking import build_masks, similarity_to_previous
from lvmae.models import LVMAE
from lvmae.train.schedule import peak_lr

ROOT = Path(__file__).resolve().parents[1]


def test_public_recipe_loads_from_name_and_configs_file():
    cfg = load_config(["lvmae_public"])
    assert load_config([ROOT / "configs" / "lvmae_public.yaml"]) == cfg
    m = cfg.model
    assert (m.width, m.depth, m.heads, m.decoder_width, m.decoder_depth, m.decoder_heads) == (1024, 32, 8, 512, 8, 16)
    assert m.rope.kind == "sincos" and m.loss == "mse" and m.l2_normalize_input and not m.norm_target
    assert (cfg.masking.strategy, cfg.masking.ratio) == ("semantic_keep_distinct", 0.7)
    assert (cfg.data.min_len, cfg.data.max_len) == (2, 256)
    assert cfg.deepspeed.precision == "fp16" and cfg.optim.grad_clip == 0.0 and cfg.optim.betas == [0.9, 0.95]
    paper = load_config(["paper"])
    assert paper.model.rope.kind == "hope" and paper.masking.strategy == "random"
    assert cfg.train.steps == paper.train.steps and cfg.optim.warmup_steps == paper.optim.warmup_steps


def test_public_recipe_lr_at_its_batch_of_128():
    cfg = load_config(["lvmae_public"])
    assert cfg.optim.lr is None and peak_lr(cfg.optim.base_lr, cfg.deepspeed.micro_batch * 8) == 5e-4


def test_public_recipe_builds_at_full_width_and_trains_a_step_shrunk():
    cfg = load_config(["lvmae_public"], ["model.in_dim=1024"])
    wide = LVMAE(dataclasses.replace(cfg.model, depth=1, decoder_depth=1), with_decoder=False)  # 1 of 32 blocks
    assert isinstance(wide.embed.proj[0], torch.nn.Identity)  # input width = model width: no projection
    assert 12e6 < sum(p.numel() for p in wide.encoder.parameters()) < 13e6  # a 1024-wide block, MLP x4
    small = dataclasses.replace(cfg.model, in_dim=32, width=32, heads=8, depth=1, decoder_width=16,
                                decoder_depth=1, decoder_heads=4)
    torch.manual_seed(0)
    model = LVMAE(small)
    x, valid = torch.randn(2, 10, 32), torch.ones(2, 10, dtype=torch.bool)
    x[:, 5] = x[:, 4]  # segment 5 repeats segment 4: the least distinct, so it is masked
    masks = build_masks(x, valid, cfg.masking, generator=torch.Generator().manual_seed(0))
    assert bool(masks.mask[0, 5])
    distinct = similarity_to_previous(x).argsort(dim=1)[:, :3]  # 30% kept: the least similar to their predecessor
    assert torch.equal(masks.ids_keep.sort(dim=1).values, distinct.sort(dim=1).values)
    loss = model(x, valid, masks)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
