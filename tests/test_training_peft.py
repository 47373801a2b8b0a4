"""Composition with PEFT LoRA: drop path before or after the adapters, eval output unchanged, LoRA's
own unload / merge_and_unload still work, and remove_drop_path works on what they return."""

import pytest
import torch
from helpers import TinyTransformer, attached, bitwise_equal, eval_output
from training_fixtures import hf_vit, single_thread, timm_vit  # noqa: F401  (single_thread: autouse)

from droppath_surgery import apply_drop_path, remove_drop_path

peft = pytest.importorskip("peft", reason="peft is not installed (pip install 'droppath-surgery[test]')")


def hf_lora_targets(model):
    # transformers 5 names ViT's projections q_proj / v_proj; 4.x called them query / value.
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return ["q_proj", "v_proj"] if "q_proj" in names else ["query", "value"]


MODELS = {
    "timm_vit": (timm_vit, lambda m: ["qkv"]),
    "hf_vit": (hf_vit, hf_lora_targets),
}


def n_sites(model) -> int:
    return sum(len(d.patch.site.branches) for d in attached(model))


def logits(out):
    return out.logits if hasattr(out, "logits") else out


def run(model, x):
    return logits(model(x))


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("name", list(MODELS))
def test_lora_and_drop_path_compose_in_either_order(name, order):
    make, targets = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x = torch.randn(4, 3, 32, 32)
    reference = eval_output(model, x)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets(model))
    if order == "before":
        apply_drop_path(model, 0.2)
        wrapped = peft.get_peft_model(model, config)
    else:
        wrapped = peft.get_peft_model(model, config)
        report = apply_drop_path(wrapped, 0.2, example_inputs=x)  # PeftModel: inputs are not guessed
        assert report.verified and all(s.path.startswith("base_model.model.") for s in report.sites)
    drops = attached(wrapped)
    assert n_sites(wrapped) == 4 and all(d.patch.site.kind == "replace" for d in drops)
    # LoRA starts as a no-op (B = 0) and drop path is the identity in eval: output unchanged, bitwise.
    assert bitwise_equal(reference, eval_output(wrapped, x))

    # Train a step: only LoRA's parameters learn, through branches that drop path covers.
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in wrapped.named_parameters() if p.requires_grad)
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    wrapped.train()
    loss = torch.nn.functional.cross_entropy(run(wrapped, x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    # The adapters sit inside the dropped branches: at rate 1 every branch is zero, so the LoRA
    # weights, which now change the eval output, cannot change the training output.
    with torch.no_grad():
        wrapped.eval()
        with_lora = run(wrapped, x)
        with wrapped.disable_adapter():
            assert not torch.allclose(with_lora, run(wrapped, x))
        wrapped.train()
        for d in drops:
            d.rate = 1.0
        dropped_all = run(wrapped, x)
        with wrapped.disable_adapter():
            torch.testing.assert_close(dropped_all, run(wrapped, x))
        for d in drops:
            d.rate = 0.2

    # LoRA's merge_and_unload returns the original class with merged weights and drop path kept.
    trained = logits(eval_output(wrapped, x))
    merged = wrapped.merge_and_unload()
    assert type(merged) is type(model)
    assert not any("lora" in n for n, _ in merged.named_modules())
    assert n_sites(merged) == 4 and attached(merged) == drops
    torch.testing.assert_close(logits(eval_output(merged, x)), trained, rtol=1e-5, atol=1e-5)
    assert remove_drop_path(merged) == len(drops)
    assert not attached(merged)
    torch.testing.assert_close(logits(eval_output(merged, x)), trained, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_unload_without_merge_gives_back_the_original_weights_with_drop_path(name):
    make, targets = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x = torch.randn(2, 3, 32, 32)
    reference = eval_output(model, x)
    drops = len(attached(model)) if apply_drop_path(model, 0.1) else 0
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=targets(model), init_lora_weights=False))
    assert not bitwise_equal(reference, eval_output(wrapped, x))  # random LoRA B: the adapters act
    base = wrapped.unload()
    assert n_sites(base) == 4
    assert bitwise_equal(reference, eval_output(base, x))
    assert remove_drop_path(base) == drops and bitwise_equal(reference, eval_output(base, x))


def test_lora_on_a_module_that_carries_a_hook_site_needs_drop_path_applied_after_the_adapters():
    # A branch that ends in a Linear gets a hook on that Linear. LoRA, added later, wraps it as
    # base_layer and adds its delta outside the hook, so that delta escaped drop path. The rule:
    # apply drop path after adding adapters (again, if it was applied before). Re-applying
    # replaces the old patch; at rate 1 every branch, LoRA delta included, is then dropped.
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8)
    model = TinyTransformer()
    report = apply_drop_path(model, 1.0, schedule="uniform", example_inputs=x)
    assert "blocks.0.mlp.2" in {s.path for s in report.sites if s.kind == "hook"}
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["mlp.2"], init_lora_weights=False))

    def all_branches_dropped() -> bool:
        base = wrapped.base_model.model
        wrapped.train()
        with torch.no_grad():
            h = base.embed(x)
            h = h + base.head_mlp(h)
            return torch.allclose(wrapped(x), base.head(h.mean(1)), atol=1e-6)

    assert not all_branches_dropped()  # applied before the adapters: the LoRA delta leaks
    apply_drop_path(wrapped, 1.0, schedule="uniform", example_inputs=x)
    assert all_branches_dropped()
    # unload() puts the bare Linear back and the hook on the LoRA module goes with it: re-apply.
    base = wrapped.unload()
    assert len(attached(base)) == 4
    apply_drop_path(base, 1.0, schedule="uniform", example_inputs=x)
    assert len(attached(base)) == 8
