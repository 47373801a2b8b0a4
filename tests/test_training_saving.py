"""Saving and loading: state_dicts cross between patched and unpatched models; deepcopy and whole-model
torch.save / torch.load keep the drop path, its rates and its undo."""

import copy
import io

import pytest
import torch
from helpers import TinyTransformer, attached, bitwise_equal, eval_output, hook_count
from training_fixtures import hf_vit, single_thread, timm_vit  # noqa: F401  (single_thread: autouse)

from droppath_surgery import apply_drop_path, drop_path_report, is_patched, remove_drop_path, set_drop_path_rate
from droppath_surgery.training import sync_drop_path_masks

# (factory, input, expected site kinds)
MODELS = {
    "timm_vit": (timm_vit, lambda: torch.randn(2, 3, 32, 32), {"replace"}),
    "hf_vit": (hf_vit, lambda: torch.randn(2, 3, 32, 32), {"replace"}),
    "tiny_hooks": (TinyTransformer, lambda: torch.randn(2, 5, 8), {"hook"}),
}


def patch(model, x, rate=0.3):
    kwargs = {} if not isinstance(model, TinyTransformer) else {"example_inputs": x}
    return apply_drop_path(model, rate, **kwargs)


def out(model, x):
    o = eval_output(model, x)
    return o.logits if hasattr(o, "logits") else o


def train_out(model, x, seed=5):
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        o = model(x)
    return o.logits if hasattr(o, "logits") else o


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dicts_load_both_ways_with_identical_eval_outputs(name):
    make, inputs, kinds = MODELS[name]
    x = inputs()
    torch.manual_seed(0)
    patched = make()
    report = patch(patched, x)
    assert {s.kind for s in report.sites} == kinds
    torch.manual_seed(1)
    plain = make()  # other random weights
    assert not bitwise_equal(out(patched, x), out(plain, x))
    assert set(patched.state_dict()) == set(plain.state_dict())  # drop path adds no entry
    plain.load_state_dict(patched.state_dict(), strict=True)
    assert bitwise_equal(out(patched, x), out(plain, x))

    torch.manual_seed(2)
    other = make()
    patched.load_state_dict(other.state_dict(), strict=True)
    assert bitwise_equal(out(patched, x), out(other, x))
    assert is_patched(patched) and [d.rate for d in attached(patched)][-1] == pytest.approx(0.3)


@pytest.mark.parametrize("name", list(MODELS))
def test_deepcopy_keeps_drop_path_independently(name):
    make, inputs, _ = MODELS[name]
    x = inputs()
    model = make()
    patch(model, x)
    twin = copy.deepcopy(model)
    assert bitwise_equal(out(model, x), out(twin, x))
    torch.testing.assert_close(train_out(model, x), train_out(twin, x), rtol=0, atol=0)
    assert not torch.allclose(train_out(twin, x, seed=5), train_out(twin, x, seed=6))  # it drops
    set_drop_path_rate(twin, 0.9)  # the copy has its own DropPath modules and buffers
    assert drop_path_report(model).sites[-1].rate == pytest.approx(0.3)
    assert drop_path_report(twin).sites[-1].rate == pytest.approx(0.9)
    hooks = hook_count(model)
    n = len(attached(twin))
    assert remove_drop_path(twin) == n and not is_patched(twin)
    assert hook_count(model) == hooks and is_patched(model)
    assert bitwise_equal(out(model, x), out(twin, x))


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_save_and_load_of_the_whole_model(name):
    make, inputs, _ = MODELS[name]
    x = inputs()
    model = make()
    patch(model, x)
    set_drop_path_rate(model, 0.4, schedule="uniform")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(model)
    assert [s.rate for s in drop_path_report(loaded).sites] == [s.rate for s in drop_path_report(model).sites]
    assert drop_path_report(loaded).sites == drop_path_report(model).sites
    assert bitwise_equal(out(model, x), out(loaded, x))
    # Same masks from the same seed: the loaded model drops exactly like the original.
    torch.testing.assert_close(train_out(model, x), train_out(loaded, x), rtol=0, atol=0)
    for d in attached(loaded):
        assert d.keep_prob.dtype == torch.float32 and d.keep_prob.item() == pytest.approx(0.6)
        assert d.sync_group is None
    set_drop_path_rate(loaded, 0.1)
    n = len(attached(loaded))
    assert remove_drop_path(loaded) == n and not is_patched(loaded)
    assert hook_count(loaded) == hook_count(make())
    assert bitwise_equal(out(model, x), out(loaded, x))


def test_a_module_pickled_before_sync_group_existed_loads_with_per_rank_masks():
    model = TinyTransformer()
    patch(model, torch.randn(2, 5, 8))
    for d in attached(model):
        del d.__dict__["sync_group"]  # as pickled by droppath-surgery 0.1.0
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert all(d.sync_group is None for d in attached(loaded))
    loaded.train()(torch.randn(4, 5, 8))


def test_sync_setting_survives_deepcopy_and_can_be_turned_off():
    model = TinyTransformer()
    patch(model, torch.randn(2, 5, 8))
    for d in attached(model):
        d.sync_group = "0"
    twin = copy.deepcopy(model)
    assert {d.sync_group for d in attached(twin)} == {"0"}
    assert sync_drop_path_masks(twin, enabled=False) == len(attached(twin))
    assert {d.sync_group for d in attached(twin)} == {None}
