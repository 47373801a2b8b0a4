"""torchvision models: example inputs are built, and rates match its own StochasticDepth convention."""

import pytest
import torchvision
from helpers import bitwise_equal, eval_output
from torchvision.ops import StochasticDepth

from droppath_surgery import DropPath, apply_drop_path
from droppath_surgery import build_example_inputs as build


@pytest.mark.parametrize("name, native_rate", [("convnext_tiny", 0.1), ("swin_t", 0.2)])
def test_rates_match_torchvisions_stochastic_depth(name, native_rate):
    model = getattr(torchvision.models, name)(weights=None)
    native = {n: m.p for n, m in model.named_modules() if isinstance(m, StochasticDepth)}
    (x,), _ = build(model)
    assert x.shape == (2, 3, 224, 224)
    before = eval_output(model, x)
    report = apply_drop_path(model, native_rate)
    ours = {n: m.rate for n, m in model.named_modules() if isinstance(m, DropPath)}
    assert set(native) <= set(ours) and all(s.kind == "replace" for s in report.sites if s.path in native)
    assert {k: ours[k] for k in native} == pytest.approx(native, abs=1e-6)
    assert bitwise_equal(before, eval_output(model, x))


def test_vit_b_16_inputs_follow_its_image_size_and_both_branches_are_found():
    model = torchvision.models.vit_b_16(weights=None, image_size=64)
    (x,), _ = build(model)
    assert x.shape == (2, 3, 64, 64)
    report = apply_drop_path(model, 0.1)
    assert len(report.sites) == 24 and report.num_blocks == 12
    assert report.sites[0].path == "encoder.layers.encoder_layer_0.dropout"
    assert report.sites[1].path == "encoder.layers.encoder_layer_0.mlp.4"
    assert {s.batch_dim for s in report.sites} == {0}
