"""DDP and FSDP2 on CPU with gloo: 2 processes started here, a tiny timm ViT trained 3 steps.

The workers (tests/dist_workers.py) run every scenario in one launch to pay process start-up once;
each test asserts on its scenario's results.
"""

import pytest
import torch
import torch.distributed as dist
from training_fixtures import single_thread  # noqa: F401  (autouse: one CPU thread)

from droppath_surgery import apply_drop_path
from droppath_surgery.errors import DistributedError
from droppath_surgery.training import sync_drop_path_masks

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this torch build",
)

SCENARIOS = ["ddp_default", "ddp_sync", "ddp_sync_checkpointing", "ddp_skip_sync", "compiled_sync", "fsdp2_default", "fsdp2_sync", "fsdp2_skip_sync"]


@pytest.fixture(scope="module")
def results():
    from dist_workers import launch

    return launch(SCENARIOS, world=2, timeout=300)


def test_ddp_trains_with_identical_parameters_and_per_rank_masks_by_default(results):
    r = results["ddp_default"]
    assert len(r["losses"]) == 3 and all(torch.isfinite(torch.tensor(r["losses"])))
    assert r["params_same_on_all_ranks"]
    assert r["num_masks"] == 4 * 3  # 4 sites, 3 steps, each site applied once per forward
    assert 0.3 < r["drop_fraction"] < 0.7  # rate 0.5: 96 decisions per rank
    assert not r["masks_same_on_all_ranks"]  # ranks seeded differently draw their own masks


def test_ddp_with_synced_masks_draws_rank_zeros_masks_on_every_rank(results):
    r = results["ddp_sync"]
    assert r["synced_modules"] == 4
    assert r["params_same_on_all_ranks"]
    assert r["masks_same_on_all_ranks"]  # although the ranks' RNGs differ
    # Same data on both ranks and rank 0's masks everywhere: equals one process with rank 0's seed.
    assert r["max_diff_to_single_process"] < 1e-5


def test_ddp_skip_dropped_with_synced_kept_samples(results):
    """skip_dropped=True under DDP: every rank computes rank 0's kept samples (the uniform numbers are
    broadcast), and training equals one skipping process with rank 0's seed."""
    r = results["ddp_skip_sync"]
    assert r["skipping_sites"] == 4
    assert r["masks_same_on_all_ranks"] and r["params_same_on_all_ranks"]
    assert 0.3 < r["drop_fraction"] < 0.7
    assert r["max_diff_to_single_process"] < 1e-5


def test_ddp_wrapper_is_refused_with_a_fix_and_patching_its_module_works(results):
    r = results["ddp_sync"]  # patched after wrapping, through ddp.module
    assert "wrapped by DistributedDataParallel" in r["wrapper_error"]
    assert "pass wrapped.module" in r["wrapper_error"]
    assert r["synced_modules"] == 4 and r["params_same_on_all_ranks"]


def test_ddp_gradient_checkpointing_recomputes_the_synced_masks(results):
    r = results["ddp_sync_checkpointing"]
    assert r["num_masks"] > 4 * 3  # drop path ran again during the recomputation
    assert r["masks_same_on_all_ranks"] and r["params_same_on_all_ranks"]
    # Checkpointing recomputed the very masks of the forward pass (else gradients would differ).
    assert r["max_diff_to_single_process"] < 1e-5


def test_synced_masks_compile_with_fullgraph_and_no_recompile(results):
    r = results["compiled_sync"]
    assert r["frames"] == 1 and r["graph_breaks"] == 0  # the broadcast is a traced functional collective
    assert r["outputs_same_on_all_ranks"]  # same data, different seeds: same masks, same outputs
    assert r["steps_differ"]  # and the masks change from step to step


def _fsdp(results, name):
    r = results[name]
    if "skip" in r:
        pytest.skip(r["skip"])
    return r


def test_fsdp2_fully_shard_trains_a_patched_model(results):
    r = _fsdp(results, "fsdp2_default")
    assert r["sharded"].startswith("FSDP")
    assert all(torch.isfinite(torch.tensor(r["losses"])))
    assert r["params_same_on_all_ranks"]  # the gathered full parameters
    assert not r["masks_same_on_all_ranks"]


def test_fsdp2_with_synced_masks_matches_a_single_process(results):
    r = _fsdp(results, "fsdp2_sync")
    assert r["masks_same_on_all_ranks"]
    assert r["max_diff_to_single_process"] < 1e-5


def test_fsdp2_skip_dropped_with_synced_kept_samples_matches_a_single_process(results):
    """skip_dropped=True on a model sharded with fully_shard after patching: the entry hooks subset
    the unsharded blocks' inputs, and training equals one skipping process with rank 0's seed."""
    r = _fsdp(results, "fsdp2_skip_sync")
    assert r["skipping_sites"] == 4
    assert r["masks_same_on_all_ranks"] and r["params_same_on_all_ranks"]
    assert 0.3 < r["drop_fraction"] < 0.7
    assert r["max_diff_to_single_process"] < 1e-5


def test_sync_needs_an_initialized_process_group():
    from helpers import TinyTransformer

    model = TinyTransformer()
    apply_drop_path(model, 0.1, example_inputs=torch.randn(2, 3, 8))
    if dist.is_initialized():  # pragma: no cover - the test process never initializes one
        pytest.skip("a process group is initialized in the test process")
    with pytest.raises(DistributedError, match="init_process_group"):
        sync_drop_path_masks(model)
    assert sync_drop_path_masks(model, enabled=False) == 8  # turning it off needs no group
