"""torch.compile: whole training steps with no graph break, no recompiles when rates change, and
compiled models that are never silently left unpatched.

Backend "aot_eager" traces forward and backward exactly as inductor would see them (graph breaks and
guards are decided by dynamo and AOTAutograd, not by the backend) and draws random numbers with the
global generator in program order, so compiled and eager runs from one seed draw the same masks.
"""

import pytest
import torch
import torch._dynamo
from helpers import TinyTransformer
from torch._dynamo.testing import CompileCounterWithBackend
from training_fixtures import hf_vit, single_thread, timm_vit  # noqa: F401  (single_thread: autouse)

from droppath_surgery import (
    DropPath,
    UnsupportedModelError,
    apply_drop_path,
    drop_path_report,
    remove_drop_path,
    set_drop_path_rate,
)
from droppath_surgery.training import DropPathScheduler, Late


def logits_of(out):
    return out.logits if hasattr(out, "logits") else out


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("make", [timm_vit, hf_vit], ids=["timm_vit", "hf_vit"])
def test_whole_training_step_compiles_as_one_graph_and_matches_eager(make):
    # forward, backward (torch.autograd.grad, traced with trace_autograd_ops) and an SGD update in
    # one fullgraph=True function: any graph break raises. torch.optim's own step() contains
    # deliberate graph breaks (torch._dynamo.graph_break() in _use_grad_for_differentiable), so the
    # update is written with torch._foreach_add_, as a fused optimizer would be.
    torch.manual_seed(0)
    model = make()
    apply_drop_path(model, 0.5, schedule="uniform")
    twin = make()
    twin.load_state_dict(model.state_dict())
    apply_drop_path(twin, 0.5, schedule="uniform")
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))

    def step_fn(m):
        params = [p for p in m.parameters() if p.requires_grad]

        def step(x, y):
            loss = torch.nn.functional.cross_entropy(logits_of(m(x)), y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                torch._foreach_add_(params, grads, alpha=-0.1)
            return loss.detach()

        return step

    counter = CompileCounterWithBackend("aot_eager")
    model.train(), twin.train()
    compiled = torch.compile(step_fn(model), backend=counter, fullgraph=True)
    eager = step_fn(twin)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        for i in range(3):
            torch.manual_seed(100 + i)
            loss_c = compiled(x, y)
            torch.manual_seed(100 + i)
            loss_e = eager(x, y)
            torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 1 and counter.op_count > 0
    assert dict(torch._dynamo.utils.counters["graph_break"]) == {}
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # The compiled step really dropped: with masks from other seeds the losses differ.
    torch.manual_seed(7)
    other = eager(x, y)
    torch.manual_seed(8)
    assert not torch.equal(other, eager(x, y))


@pytest.mark.parametrize("make", [timm_vit, hf_vit], ids=["timm_vit", "hf_vit"])
def test_hundred_rate_changes_cause_no_recompile_and_take_effect_at_once(make):
    torch.manual_seed(0)
    model = make()
    apply_drop_path(model, 0.1)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    model.train()
    rates = torch.linspace(0.01, 1.0, 100).tolist()
    differs_from_half_rate = 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i, rate in enumerate(rates):
            set_drop_path_rate(model, rate)
            torch.manual_seed(i)
            out = logits_of(compiled(x))
            torch.nn.functional.cross_entropy(out, y).backward()
            # The eager model with the same masks (same seed), weights and rate: the compiled graph
            # must have read the new rate at once, not at some later recompile.
            with torch.no_grad():
                torch.manual_seed(i)
                torch.testing.assert_close(out.detach(), logits_of(model(x)), rtol=1e-5, atol=1e-5)
                if i % 4 == 0:  # teeth: the rate matters for these masks and this input
                    set_drop_path_rate(model, rate / 2)
                    torch.manual_seed(i)
                    differs_from_half_rate += not torch.allclose(out, logits_of(model(x)), rtol=1e-5, atol=1e-5)
                    set_drop_path_rate(model, rate)
            optimizer.step()
            optimizer.zero_grad()
    assert counter.frame_count == 1
    assert differs_from_half_rate > 15  # of 25 checks: the rate matters for this input
    assert drop_path_report(model).sites[-1].rate == pytest.approx(1.0)


def test_crossing_rate_zero_recompiles_once_per_direction():
    model = timm_vit()
    apply_drop_path(model, 0.2)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True).train()
    x = torch.randn(2, 3, 32, 32)
    for rate in [0.2, 0.0, 0.3, 0.0, 0.4, 0.1]:
        set_drop_path_rate(model, rate)
        compiled(x)
    assert counter.frame_count == 2  # one graph with drop path, one without; both stay cached


def test_scheduler_with_late_start_adds_one_graph_only():
    model = timm_vit()
    apply_drop_path(model, 0.1)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True).train()
    scheduler = DropPathScheduler(model, Late(0.3, start=3))
    x = torch.randn(2, 3, 32, 32)
    seen = []
    for _ in range(8):
        compiled(x)
        seen.append(scheduler.rate)
        scheduler.step()
    assert seen == [0.0, 0.0, 0.0, 0.3, 0.3, 0.3, 0.3, 0.3]
    assert counter.frame_count == 2


def test_apply_on_a_torch_compile_wrapper_raises_and_says_what_to_do():
    model = timm_vit()
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(UnsupportedModelError, match=r"patch the original model first, then compile"):
        apply_drop_path(compiled, 0.1)
    assert not any(isinstance(m, DropPath) for m in model.modules())
    # Patched before compiling: re-scheduling, reporting and removal reach the original model
    # through the wrapper (they only write buffers or change what compiled code guards on).
    apply_drop_path(model, 0.1)
    compiled = torch.compile(model, backend="eager")
    set_drop_path_rate(compiled, 0.2)
    assert drop_path_report(compiled).sites[-1].rate == pytest.approx(0.2)
    assert [m.rate for m in model.modules() if isinstance(m, DropPath)][-1] == pytest.approx(0.2)
    DropPathScheduler(compiled, 0.3)
    assert drop_path_report(model).sites[-1].rate == pytest.approx(0.3)
    assert remove_drop_path(compiled) == 4 and not any(isinstance(m, DropPath) for m in model.modules())


@pytest.mark.parametrize("where", ["whole model", "one block", "wrapped block"])
def test_apply_after_in_place_or_regional_compile_raises_instead_of_being_ignored(where):
    # Demonstrated failure mode: with hook-attached sites, code compiled before patching keeps
    # running without the hooks (dynamo's skip_nnmodule_hook_guards). So patching must refuse.
    model = TinyTransformer()
    x = torch.randn(4, 5, 8)
    if where == "whole model":
        model.compile(backend="eager")
    elif where == "one block":
        model.blocks[1].compile(backend="eager")
    else:
        model.blocks[1] = torch.compile(model.blocks[1], backend="eager")
    model(x)
    before = [type(m) for m in model.modules()]
    with pytest.raises(UnsupportedModelError, match="already compiled.*before compiling"):
        apply_drop_path(model, 0.1, example_inputs=x)
    assert [type(m) for m in model.modules()] == before


def test_patch_then_compile_then_remove_leaves_no_drop_path_in_the_compiled_model():
    # Removal changes registered submodules, which compiled code does guard on: it recompiles.
    model = TinyTransformer()
    x = torch.randn(4, 5, 8)
    apply_drop_path(model, 0.5, schedule="uniform", example_inputs=x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True).train()
    torch.manual_seed(3)
    with_drop = compiled(x)
    assert remove_drop_path(model) == 8
    torch.manual_seed(3)
    without = compiled(x)
    torch.manual_seed(3)
    torch.testing.assert_close(without, model(x))
    assert not torch.allclose(with_drop, without)


@pytest.mark.parametrize("skip", [False, True], ids=["masked", "skip"])
def test_block_granularity_compiles_as_one_graph_and_keeps_it(skip):
    # One decision per block, drawn by the first branch and kept on a Python object that a forward
    # pre-hook resets: dynamo traces the draw and the reset as side effects, with no graph break and
    # no recompile from one step to the next or over rate changes that keep the kept count.
    torch.manual_seed(0)
    model = timm_vit()
    apply_drop_path(model, 0.5, schedule="uniform", granularity="block", skip_dropped=skip, min_skip_rate=0.0)
    model.train()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(8, 3, 32, 32)
    for rate in (0.5, 0.45, 0.4):  # kept count ceil(8 * (1 - p)) = 4, 5, 5
        set_drop_path_rate(model, rate)
        compiled(x).sum().backward()
        compiled(x).sum().backward()
    # Masked: one graph. Skipping: one more for the new kept count 5; the rate change that keeps 5,
    # and the second step at each rate, add none.
    assert counter.frame_count == (2 if skip else 1)
    dropped = []
    for d in model.modules():
        if isinstance(d, DropPath):
            d.register_forward_hook(lambda m, i, o: dropped.append((o == 0).flatten(1).all(1)))
    torch._dynamo.reset()
    model(x)  # eager: both branches of each block drop the same samples
    assert all(torch.equal(dropped[i], dropped[i + 1]) for i in range(0, len(dropped), 2))
