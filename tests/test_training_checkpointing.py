"""Gradient checkpointing recomputes the forward in backward; it must see the same drop path masks.

Each test runs one training step on two copies of a model (same weights, same seed, same batch),
one with checkpointing, one without, and requires the same loss and gradients. DropPath draws its
mask from the global RNG, which torch.utils.checkpoint saves and restores (preserve_rng_state), so
the recomputed masks are the forward's. The last test shows that the comparison has teeth: with
preserve_rng_state=False the recomputation draws new masks and the gradients differ.
"""

import copy

import pytest
import timm
import torch
import transformers as T
from helpers import TinyTransformer, attached
from torch import nn
from torch.utils.checkpoint import checkpoint
from training_fixtures import single_thread  # noqa: F401  (autouse: one CPU thread)

from droppath_surgery import DropPath, apply_drop_path

RATE = 0.5


def count_calls(model: nn.Module) -> list[int]:
    calls = [0]

    def hook(module, args, out):
        calls[0] += 1

    for d in attached(model):
        d.register_forward_hook(hook)
    return calls


def step(model, x, y, seed=123):
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same_step(plain, ckpt, x, y):
    calls_plain, calls_ckpt = count_calls(plain), count_calls(ckpt)
    loss_a, grads_a = step(plain, x, y)
    loss_b, grads_b = step(ckpt, x, y)
    # Checkpointing really recomputed the blocks (drop path ran again in backward) ...
    assert calls_ckpt[0] > calls_plain[0] > 0
    # ... and the recomputation saw the same masks: same loss, same gradients.
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7, msg=name)
    # Drop path was active: another seed gives another loss.
    loss_c, _ = step(plain, x, y, seed=321)
    assert not torch.equal(loss_a, loss_c)


def test_timm_set_grad_checkpointing():
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3, num_classes=4)
    apply_drop_path(plain, RATE, schedule="uniform")
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    assert_same_step(plain, ckpt, torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_hf_gradient_checkpointing_enable(use_reentrant):
    torch.manual_seed(0)
    config = T.ViTConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=4,
    )
    plain = T.ViTForImageClassification(config)
    apply_drop_path(plain, RATE, schedule="uniform")
    ckpt = copy.deepcopy(plain)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert ckpt.is_gradient_checkpointing
    assert_same_step(plain, ckpt, torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))


class Checkpointed(nn.Module):
    """Runs each block of a TinyTransformer under torch.utils.checkpoint."""

    def __init__(
        self, model: TinyTransformer, use_reentrant: bool, preserve_rng_state: bool = True, enabled: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        self.use_reentrant = use_reentrant
        self.preserve_rng_state = preserve_rng_state
        self.enabled = enabled

    def forward(self, x):
        m = self.model
        x = m.embed(x)
        for blk in m.blocks:
            if self.enabled:
                x = checkpoint(blk, x, use_reentrant=self.use_reentrant, preserve_rng_state=self.preserve_rng_state)
            else:
                x = blk(x)
        x = x + m.head_mlp(x)
        return m.head(x.mean(1))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_torch_utils_checkpoint(use_reentrant):
    # TinyTransformer's attention branches end in a tuple-returning module: hook-attached sites.
    torch.manual_seed(0)
    base = TinyTransformer()
    report = apply_drop_path(base, RATE, schedule="uniform", example_inputs=torch.randn(2, 5, 8))
    assert {s.kind for s in report.sites} == {"hook"}
    plain = Checkpointed(base, use_reentrant, enabled=False)
    ckpt = Checkpointed(copy.deepcopy(base), use_reentrant)
    assert_same_step(plain, ckpt, torch.randn(8, 5, 8), torch.randint(0, 3, (8,)))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_without_rng_preservation_the_gradients_differ(use_reentrant):
    torch.manual_seed(0)
    base = TinyTransformer()
    apply_drop_path(base, RATE, schedule="uniform", example_inputs=torch.randn(2, 5, 8))
    careful = Checkpointed(base, use_reentrant, preserve_rng_state=True)
    careless = Checkpointed(copy.deepcopy(base), use_reentrant, preserve_rng_state=False)
    x, y = torch.randn(8, 5, 8), torch.randint(0, 3, (8,))
    loss_a, grads_a = step(careful, x, y)
    loss_b, grads_b = step(careless, x, y)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)  # the forward is the same ...
    differ = [n for n in grads_a if not torch.allclose(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-7)]
    assert differ  # ... but the recomputation drew other masks
    assert all(isinstance(d, DropPath) for d in attached(base))
