"""crossct.config: the spec that travels with the weights round-trips and refuses what it does not know."""

from __future__ import annotations

import json

import pytest

from crossct.config import (
    OUTPUT_CHANNELS,
    ModelConfig,
    ModelSpec,
    NormalizeConfig,
    PostprocessConfig,
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
