"""deepspeed.config_file: a DeepSpeed JSON merged over the config lvmae builds; conflicts refused."""

import json
import os

import pytest
import torch

from lvmae.config import load_config
from lvmae.errors import ConfigError
from lvmae.train.engine import LAUNCH_VARS, deepspeed_config

TINY = ["model.in_dim=16", "model.width=16", "model.depth=1", "model.heads=2", "model.decoder_width=8",
        "model.decoder_depth=1", "model.decoder_heads=2", "run.device=cpu"]


def _cfg(tmp_path, user, *overrides):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(user))
    return load_config(overrides=[*TINY, f"deepspeed.config_file={path}", *overrides])


def _built(cfg, world=1):
    return deepspeed_config(cfg.deepspeed, cfg.optim, world=world, device=torch.device("cpu"))


def test_file_settings_are_merged_and_shared_keys_must_agree(tmp_path):
    user = {"zero_optimization": {"reduce_bucket_size": 12345, "offload_optimizer": {"device": "cpu"}},
            "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": "auto",
            "bf16": {"enabled": True}, "steps_per_print": 7, "comms_logger": {"enabled": True}}
    cfg = _cfg(tmp_path, user, "deepspeed.micro_batch=4", "deepspeed.grad_accum=2",
               "deepspeed.precision=bf16", "deepspeed.zero_stage=2")
    ds = _built(cfg, world=2)
    z = ds["zero_optimization"]
    assert z["stage"] == 2 and z["reduce_bucket_size"] == 12345 and z["offload_optimizer"] == {"device": "cpu"}
    assert z["contiguous_gradients"] is True  # lvmae's own defaults survive where the file is silent
    assert ds["gradient_accumulation_steps"] == 2 and ds["train_batch_size"] == 16  # "auto" -> lvmae's value
    assert ds["steps_per_print"] == 7 and ds["comms_logger"] == {"enabled": True}
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False


@pytest.mark.parametrize("user, names", [
    ({"train_micro_batch_size_per_gpu": 8}, ["train_micro_batch_size_per_gpu=8", "deepspeed.micro_batch gives 16"]),
    ({"zero_optimization": {"stage": 3}}, ["zero_optimization.stage=3", "deepspeed.zero_stage gives 0"]),
    ({"bf16": {"enabled": True}}, ["bf16.enabled=true", "deepspeed.precision gives false"]),
    ({"gradient_clipping": 0.5}, ["gradient_clipping=0.5", "optim.grad_clip gives 1.0"]),
    ({"optimizer": {"type": "Adam"}}, ["sets 'optimizer'", "optim.*"]),
])
def test_a_disagreeing_value_is_one_line_naming_both(tmp_path, user, names):
    with pytest.raises(ConfigError) as e:
        _built(_cfg(tmp_path, user))
    msg = str(e.value)
    assert "\n" not in msg and "deepspeed.config_file" in msg and all(n in msg for n in names), msg


def test_bad_files_and_the_torch_engine_are_refused(tmp_path):
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        _built(load_config(overrides=[*TINY, f"deepspeed.config_file={tmp_path / 'bad.json'}"]))
    with pytest.raises(ConfigError, match="not found"):
        _built(load_config(overrides=[*TINY, f"deepspeed.config_file={tmp_path / 'none.json'}"]))
    with pytest.raises(ConfigError, match="needs deepspeed.engine=deepspeed"):
        load_config(overrides=[*TINY, "deepspeed.engine=torch", "deepspeed.config_file=x.json"])


@pytest.fixture
def launch_env():
    saved = {k: os.environ.get(k) for k in LAUNCH_VARS}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_deepspeed_honours_the_file(tmp_path, launch_env):
    """A real DeepSpeed engine on CPU takes the file's ZeRO bucket size and trains a step."""
    from lvmae.masking import build_masks
    from lvmae.models import LVMAE
    from lvmae.train.engine import build_engine, setup_distributed

    cfg = _cfg(tmp_path, {"zero_optimization": {"reduce_bucket_size": 12345, "allgather_bucket_size": 23456}},
               "deepspeed.engine=deepspeed", "deepspeed.zero_stage=2", "deepspeed.micro_batch=2")
    torch.manual_seed(0)
    engine = build_engine(LVMAE(cfg.model), cfg, setup_distributed(cfg))
    try:
        assert engine.ds.zero_reduce_bucket_size() == 12345 and engine.ds.zero_allgather_bucket_size() == 23456
        x, valid = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
        masks = build_masks(x, valid, cfg.masking, generator=torch.Generator().manual_seed(0))
        engine.set_lr(1e-3)
        loss = engine.forward(x, valid, masks)["loss"]
        engine.backward(loss)
        engine.step()
        assert torch.isfinite(loss)
    finally:
        engine.close(barrier=False)
