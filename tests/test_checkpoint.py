"""Every checkpoint layout of DESIGN.md §4 loads, infers its config and round-trips through fuse."""

from __future__ import annotations

import pytest
import torch

from ecbconvert import checkpoint
from ecbconvert.arch import PlainSR, fuse
from ecbconvert.config import ModelConfig, config_yaml_text
from ecbconvert.errors import InputError

from .conftest import LAYOUTS, layout_state, random_model, write_checkpoint

CFGS = [ModelConfig(2, 8, 2), ModelConfig(1, 4, 3, colors=3), ModelConfig(0, 6, 4, act_type="relu")]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: c.name)
def test_every_layout_loads_with_its_config(tmp_path, layout, cfg):
    model = random_model(cfg)
    path = write_checkpoint(tmp_path / "m.pth", model, layout)
    loaded = checkpoint.load(path)
    assert loaded.config == cfg
    assert not loaded.fused
    expected = {"paper": "paper", "cuda_saved": "paper", "dataparallel": "paper", "legacy": "legacy",
                "basicsr_params": "basicsr:params", "basicsr_ema": "basicsr:params_ema"}[layout]
    assert loaded.layout == expected
    x = torch.rand(1, cfg.colors, 5, 6, dtype=torch.float64) * 255
    assert torch.allclose(loaded.build(torch.float64)(x), model.float().double()(x), rtol=1e-6)


def test_basicsr_params_key_choice(tmp_path, small_cfg):
    model = random_model(small_cfg)
    path = tmp_path / "b.pth"
    torch.save(layout_state(model, "basicsr_ema"), path)
    path.with_suffix(".yml").write_text(config_yaml_text(small_cfg))
    ema = checkpoint.load(path)
    plain = checkpoint.load(path, params_key="params")
    assert ema.layout == "basicsr:params_ema" and plain.layout == "basicsr:params"
    assert float(plain.state_dict["backbone.0.conv3x3.weight"].abs().sum()) == 0.0
    # BasicSR trains on [0, 1] unless told otherwise: the YAML here says 255, so that wins.
    assert ema.config.value_range == 255.0


def test_basicsr_value_range_defaults_to_one_without_config(tmp_path, small_cfg):
    path = tmp_path / "b.pth"
    torch.save(layout_state(random_model(small_cfg), "basicsr_params"), path)
    loaded = checkpoint.load(path, with_idt=False)
    assert loaded.config.value_range == 1.0
    assert any("value range 1" in n for n in loaded.notes)


def test_paper_yaml_config_supplies_act_and_idt(tmp_path):
    cfg = ModelConfig(2, 6, 2, act_type="relu", with_idt=True)
    path = tmp_path / "relu.pt"
    torch.save(layout_state(random_model(cfg), "paper"), path)
    with pytest.raises(InputError, match="--act"):
        checkpoint.load(path)
    yml = tmp_path / "train_config.yml"
    yml.write_text("model: ecbsr\nscale: 2\ncolors: 1\nm_ecbsr: 2\nc_ecbsr: 6\nidt_ecbsr: 1\n"
                   "act_type: 'relu'\nlr: 0.0005\nbatch_size: 16\n")
    loaded = checkpoint.load(path, config=yml)
    assert loaded.config == cfg
    # flags override the config
    assert checkpoint.load(path, config=yml, act="linear", with_idt=False).config.act_type == "linear"


def test_yaml_contradicting_weights_is_refused(tmp_path, small_ckpt):
    yml = tmp_path / "bad.yml"
    yml.write_text("m_ecbsr: 7\nc_ecbsr: 8\nact_type: prelu\nidt_ecbsr: 0\n")
    with pytest.raises(InputError, match="m_ecbsr|module_nums"):
        checkpoint.load(small_ckpt, config=yml)


def test_with_idt_must_be_given(tmp_path, small_cfg):
    path = tmp_path / "noyaml.pt"
    torch.save(layout_state(random_model(small_cfg), "paper"), path)
    with pytest.raises(InputError, match="--with-idt"):
        checkpoint.load(path)
    assert checkpoint.load(path, with_idt=False).config.with_idt is False


@pytest.mark.parametrize("layout", ["ecbconvert", "plain"])
def test_fused_files_round_trip(tmp_path, small_ckpt, layout):
    src = checkpoint.load(small_ckpt)
    out = tmp_path / f"fused_{layout}.pt"
    checkpoint.save_fused(out, src.config, src.fused_state_dict(), source=src, layout=layout)
    back = checkpoint.load(out)
    assert back.fused
    assert back.layout == ("ecbconvert" if layout == "ecbconvert" else "plain")
    if layout == "ecbconvert":
        assert back.provenance["source_sha256"] == src.sha256
        assert back.config == src.config
    # The paper's own PlainSR keys: loads with strict=True.
    plain = PlainSR(src.config)
    plain.load_state_dict(torch.load(out, weights_only=True) if layout == "plain"
                          else torch.load(out, weights_only=True)["state_dict"], strict=True)
    x = torch.rand(1, 1, 9, 9) * 255
    with torch.no_grad():
        ref = fuse(src.build(torch.float64))(x.double())
        got = plain.double()(x.double())
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-6


def test_tensors_saved_on_cuda_layout_load_on_cpu(tmp_path, small_cfg):
    """map_location='cpu' is what makes CUDA-saved files load here; check it is what we ask for."""
    import inspect

    src = inspect.getsource(checkpoint._torch_load)
    assert 'map_location="cpu"' in src and "weights_only=True" in src


def test_nan_weights_name_the_tensor(tmp_path, small_cfg):
    sd = layout_state(random_model(small_cfg), "paper")
    sd["backbone.1.conv1x1_sbx.scale"][0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    path.with_suffix(".yml").write_text(config_yaml_text(small_cfg))
    with pytest.raises(InputError, match=r"backbone\.1\.conv1x1_sbx\.scale.*NaN"):
        checkpoint.load(path)


def test_keys_of_another_model_are_listed(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(InputError, match="backbone"):
        checkpoint.load(path)


def test_missing_branch_key_is_named(tmp_path, small_cfg):
    sd = layout_state(random_model(small_cfg), "paper")
    del sd["backbone.2.conv1x1_lpl.bias"]
    path = tmp_path / "missing.pt"
    torch.save(sd, path)
    path.with_suffix(".yml").write_text(config_yaml_text(small_cfg))
    with pytest.raises(InputError, match=r"missing keys backbone\.2\.conv1x1_lpl\.bias"):
        checkpoint.load(path)


def test_contradicting_shapes_are_named(tmp_path, small_cfg):
    sd = layout_state(random_model(small_cfg), "paper")
    sd["backbone.1.conv3x3.weight"] = torch.zeros(8, 5, 3, 3)
    path = tmp_path / "shapes.pt"
    torch.save(sd, path)
    path.with_suffix(".yml").write_text(config_yaml_text(small_cfg))
    with pytest.raises(InputError, match=r"backbone\.1\.conv3x3\.weight has shape"):
        checkpoint.load(path)


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"backbone.0.conv3x3.weight": Evil()}, path)
    with pytest.raises(InputError, match="run code"):
        checkpoint.load(path)
    assert not marker.exists()
