"""crossct.config: the spec that travels with the weights round-trips and refuses what it does not know."""

from __future__ import annotations

import json
import re
import shutil
from typing import get_args

import numpy as np
import pytest
import tifffile

from crossct.config import (
    NETWORK_ARGUMENTS,
    OUTPUT_CHANNELS,
    SWIN_UNETR_LITE,
    SWIN_UNETR_PAPER,
    UNET_PAPER,
    Architecture,
    ModelConfig,
    ModelSpec,
    NormalizeConfig,
    PostprocessConfig,
    SpecError,
    TilingConfig,
    load_spec,
    save_spec,
)


def custom_spec() -> ModelSpec:
    return ModelSpec(
        model=ModelConfig("unet", {"spatial_dims": 2, "in_channels": 3, "out_channels": 5, "channels": [4, 8],
                                   "strides": [2], "num_res_units": 1}),
        normalize=NormalizeConfig(lower_percentile=2.0, upper_percentile=98.0),
        tiling=TilingConfig(tile_size=128, overlap=0.5, blending="constant", batch_size=2),
        postprocess=PostprocessConfig(method="threshold", seed_threshold=0.3, min_size=5),
        checksums={"model.onnx": "ab" * 32},
        metadata={"note": "x", "nested": {"a": [1, 2]}},
    )


def test_roundtrip_through_json(tmp_path):
    spec = custom_spec()
    save_spec(spec, tmp_path / "model.json")
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temporary left
    loaded = load_spec(tmp_path / "model.json")
    assert loaded == spec
    assert loaded.tiling.stride == 64
    assert ModelSpec.from_dict(json.loads(json.dumps(ModelSpec().to_dict()))) == ModelSpec()


def test_defaults():
    spec = ModelSpec()
    assert spec.output_channels == OUTPUT_CHANNELS == (
        "background", "interior", "boundary", "cell_distance", "neighbor_distance")
    assert TilingConfig().stride == 192
    assert TilingConfig(tile_size=64, overlap=0.0).stride == 64


def test_unknown_top_level_key_refused(tmp_path):
    d = ModelSpec().to_dict()
    d["tilling"] = {}
    with pytest.raises(ValueError, match="tilling"):
        ModelSpec.from_dict(d)
    (tmp_path / "model.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="model.json") as info:
        load_spec(tmp_path / "model.json")
    assert "tilling" in str(info.value)


def test_unknown_section_key_refused_with_valid_keys():
    d = ModelSpec().to_dict()
    d["postprocess"]["seed_treshold"] = 0.4
    with pytest.raises(ValueError, match="seed_treshold") as info:
        ModelSpec.from_dict(d)
    assert "seed_threshold" in str(info.value)  # the valid choices are listed


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ModelConfig("resnet"), r"\['unet', 'resunet', 'unetr', 'swin_unetr'\]"),
        (lambda: TilingConfig(blending="linear"), r"\['gaussian', 'constant'\]"),
        (lambda: PostprocessConfig(method="otsu"), r"\['watershed', 'threshold'\]"),
        (lambda: TilingConfig(tile_size=8), "multiple of 16"),
        (lambda: NormalizeConfig(lower_percentile=50, upper_percentile=50), "percentiles"),
        (lambda: ModelSpec(output_channels=("a", "b")), "output_channels"),
        (lambda: ModelSpec(format_version=99), "newer"),
    ],
)
def test_invalid_values_say_what_is_valid(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("text", ["", "[1, 2]", "{not json", '{"tiling": 3}', '{"tiling": {"tile_size": "big"}}'])
def test_load_spec_bad_files_name_the_file(tmp_path, text):
    path = tmp_path / "model.json"
    path.write_text(text)
    with pytest.raises(ValueError, match="not a valid CrossCT model spec") as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.json"):
        load_spec(tmp_path / "nope.json")


def test_replace_and_frozen():
    spec = ModelSpec()
    other = spec.replace(postprocess=PostprocessConfig(method="threshold"))
    assert other.postprocess.method == "threshold" and spec.postprocess.method == "watershed"
    with pytest.raises(AttributeError):
        spec.tiling = TilingConfig()  # type: ignore[misc]


# ----------------------------------------------------------------------------- the whole file against its schema


def spec_dict() -> dict:
    return json.loads(json.dumps(ModelSpec().to_dict()))


@pytest.mark.parametrize("change, key, detail", [
    (lambda d: d.update(checksums=["model.onnx"]), "checksums", r'\["model.onnx"\] must be an object'),
    (lambda d: d.update(checksums=None), "checksums", "null must be an object"),
    (lambda d: d["checksums"].update({"model.onnx": "abc"}), "checksums", "must map to a sha256"),
    (lambda d: d["checksums"].update({"../model.onnx": "ab" * 32}), "checksums", "must be a file name"),
    (lambda d: d["model"]["kwargs"].update(dropuot=0.1), "model.kwargs", r"unknown key\(s\) \['dropuot'\]; valid: .*'dropout'"),
    (lambda d: d["model"]["kwargs"].update(channels=[16, 32.5, 64, 128, 256]), "model.kwargs.channels",
     r"item 1 \(32.5\) must be an integer"),
    (lambda d: d["model"]["kwargs"].update(strides=[2, 2]), "model.kwargs.strides", "one stride fewer than channels"),
    (lambda d: d["model"]["kwargs"].update(in_channels=1), "model.kwargs.in_channels", r"1 is not one of \[3\]"),
    (lambda d: d["model"]["kwargs"].pop("channels"), "model.kwargs", r"missing required key\(s\) \['channels'\]"),
    (lambda d: d["model"].update(arch="vnet"), "model.arch", r"is not one of \['unet', 'resunet', 'unetr', 'swin_unetr'\]"),
    (lambda d: d.pop("model"), "", r"missing required key\(s\) \['model'\]"),
    (lambda d: d["tiling"].update(overlap=0.999), "tiling.overlap", r"0.999 must be >= 0 and <= 0.9 \(tiles per pixel"),
    (lambda d: d["tiling"].update(sigma_scale=0), "tiling.sigma_scale", "0 must be > 0"),
    (lambda d: d["tiling"].update(batch_size=8.0), "tiling.batch_size", "8.0 must be an integer"),
    (lambda d: d["tiling"].update(batch_size=True), "tiling.batch_size", "true must be an integer"),
    (lambda d: d["tiling"].update(block_size=128), "tiling.block_size", "must be >= tile_size"),
    (lambda d: d["postprocess"].update(seed_threshold=float("nan")), "postprocess.seed_threshold",
     "NaN must be a finite number"),
    (lambda d: d["postprocess"].update(mask_threshold=1.0), "postprocess.mask_threshold", "must be >= 0 and < 1"),
    (lambda d: d["postprocess"].update(min_size="16"), "postprocess.min_size", '"16" must be an integer'),
    (lambda d: d["normalize"].update(upper_percentile=float("inf")), "normalize.upper_percentile", "finite"),
    (lambda d: d.update(tiling=[]), "tiling", r"must be an object \(\{...\}\), got list"),
    (lambda d: d.update(format_version=0), "format_version", "must be >= 1"),
    (lambda d: d["metadata"].update(deep=json.loads("[" * 40 + "]" * 40)), "metadata", "nested more than 32 levels"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_every_invalid_value_names_its_key(change, key, detail):
    d = spec_dict()
    change(d)
    with pytest.raises(SpecError) as info:
        ModelSpec.from_dict(d)
    assert info.value.key == key
    assert re.search(detail, info.value.detail), info.value.detail
    assert str(info.value).startswith(f"{key}: " if key else detail[:5])


def test_nesting_200000_deep_is_a_clear_error(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"metadata": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ValueError, match="nested too deeply") as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: not a valid CrossCT model spec")


def test_bad_model_json_exits_2_without_traceback(tiny_weights, tmp_path):
    from conftest import run_predict

    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    d = json.loads((weights / "model.json").read_text())
    d["tiling"]["overlap"] = 0.999
    (weights / "model.json").write_text(json.dumps(d))
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", np.zeros((32, 32), np.uint8))
    result = run_predict(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-w", str(weights)])
    assert result.returncode == 2
    assert f"{weights / 'model.json'}: not a valid CrossCT model spec: tiling.overlap: 0.999 must be" in result.stderr
    assert "Traceback" not in result.stderr


def test_every_architecture_has_its_arguments_and_a_builder():
    """Adding an architecture means its name, its arguments (config.NETWORK_ARGUMENTS) and its builder
    (nets.ARCHITECTURES); the argument names must be the constructor's own."""
    import dataclasses
    import inspect

    from crossct import nets

    assert list(NETWORK_ARGUMENTS) == list(get_args(Architecture)) == list(nets.ARCHITECTURES)
    from monai.networks.nets import SwinUNETR, UNet

    # input_pool is ours (crossct.nets.PooledInput), every other argument MONAI's.
    for arch, network, ours in (("unet", UNet, set()), ("swin_unetr", SwinUNETR, {"input_pool"})):
        accepted = set(inspect.signature(network).parameters)
        declared = {f.name for f in dataclasses.fields(NETWORK_ARGUMENTS[arch])}
        assert declared - ours <= accepted, declared - ours - accepted
    for config in (UNET_PAPER, SWIN_UNETR_PAPER, SWIN_UNETR_LITE):  # the networks shipped settings name build
        assert ModelSpec(model=config).model == config


def test_a_new_optional_field_is_one_line():
    """A field declared with its rule is checked and loaded from JSON with nothing else to write."""
    from dataclasses import dataclass

    from crossct.schema import Checked, from_dict, setting

    @dataclass(frozen=True)
    class Size(Checked):
        diameter: float = setting(30.0, gt=0, le=1000)
        tta: bool = False

    assert from_dict(Size, {"diameter": 17}) == Size(17)
    with pytest.raises(SpecError, match=r"size.diameter: 0 must be > 0 and <= 1000"):
        from_dict(Size, {"diameter": 0}, "size")
    with pytest.raises(SpecError, match="size.tta: 1 must be true or false"):
        from_dict(Size, {"tta": 1}, "size")
