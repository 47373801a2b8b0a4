"""Every bad input is a DropPathError that states the rule, the value and the fix, and leaves the
model exactly as it was: state_dict, module objects, hooks, flags, RNG and eval output."""

import pytest
import torch
from helpers import ModelSnapshot, TinyTransformer, bitwise_equal, eval_output

from droppath_surgery import (
    BatchDimError,
    DropPath,
    DropPathError,
    InvalidArgumentError,
    SkipError,
    apply_drop_path,
    drop_path,
    drop_path_report,
    find_residual_branches,
)

# (options, error class, what the message must contain: the rule, the value as given, the fix)
BAD_OPTIONS = [
    (dict(mode="sample"), InvalidArgumentError, ["mode must be one of 'row', 'batch'", "'sample'", "drops per sample"]),
    (dict(skip_dropped=True, kept_count="all"), InvalidArgumentError, ["kept_count must be one of 'fixed', 'random'", "'all'"]),
    (dict(filter_fn=3), InvalidArgumentError, ["filter_fn must be a callable (module, fqn) -> bool", "got 3", "or None"]),
    (dict(skip_dropped=1), InvalidArgumentError, ["skip_dropped must be True or False", "got 1", "pass skip_dropped=True or False"]),
    (dict(verify="yes"), InvalidArgumentError, ["verify must be True or False", "got 'yes'", "pass verify=True or False"]),
    (dict(scale_by_keep="no"), InvalidArgumentError, ["scale_by_keep must be True or False", "got 'no'"]),
    (dict(batch_dim="0"), BatchDimError, ["batch_dim must be an int", "got '0'", "pass e.g. batch_dim=0"]),
    (dict(batch_dim=1.0), BatchDimError, ["batch_dim must be an int", "got 1.0 of type float", "pass e.g. batch_dim=0"]),
    (dict(batch_dim=5), BatchDimError, ["batch_dim=5 is out of range", "3 dimensions", "pass the dimension that indexes samples"]),
    (dict(skip_dropped=True, mode="batch"), InvalidArgumentError, ["needs per-sample decisions", "mode='batch'", "Use mode='row'"]),
]


@pytest.mark.parametrize("options, error, words", BAD_OPTIONS, ids=[str(o) for o, _, _ in BAD_OPTIONS])
@pytest.mark.parametrize("patched_before", [False, True], ids=["plain", "patched"])
def test_bad_options_raise_a_drop_path_error_and_change_nothing(options, error, words, patched_before):
    model, x = TinyTransformer(depth=2), torch.randn(2, 5, 8)
    if patched_before:  # a failed re-apply keeps the previous patch exactly
        apply_drop_path(model, 0.2, example_inputs=x)
        report_before = str(drop_path_report(model))
    snap = ModelSnapshot(model)
    out_before = eval_output(model, x)
    with pytest.raises(error) as caught:
        apply_drop_path(model, 0.1, example_inputs=x, **options)
    assert isinstance(caught.value, DropPathError)
    message = str(caught.value)
    for word in words:
        assert word in message, (word, message)
    snap.assert_same()
    assert bitwise_equal(out_before, eval_output(model, x))
    if patched_before:
        assert str(drop_path_report(model)) == report_before


def test_find_residual_branches_checks_its_options_too():
    model = TinyTransformer(depth=2)
    with pytest.raises(BatchDimError, match="batch_dim must be an int"):
        find_residual_branches(model, torch.randn(2, 5, 8), batch_dim="1")
    with pytest.raises(InvalidArgumentError, match="filter_fn must be a callable"):
        find_residual_branches(model, torch.randn(2, 5, 8), filter_fn="blocks")


def test_the_op_rejects_a_batch_dim_the_tensor_does_not_have_and_non_float_tensors():
    drop = DropPath(0.3, batch_dim=5).train()
    with pytest.raises(BatchDimError, match=r"batch_dim=5 is out of range for the branch output of shape \(4, 3\)"):
        drop(torch.randn(4, 3))
    with pytest.raises(BatchDimError, match="batch_dim must be an int"):
        DropPath(0.3, batch_dim="0")
    with pytest.raises(InvalidArgumentError, match=r"needs a floating-point tensor, got dtype torch.int64"):
        DropPath(0.3).train()(torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match="needs a floating-point tensor"):
        drop_path(torch.ones(4, 3, dtype=torch.long), 0.3, training=True)
    with pytest.raises(InvalidArgumentError, match="mode must be one of"):
        DropPath(0.3, mode="sample")
    with pytest.raises(InvalidArgumentError, match="scale_by_keep must be True or False"):
        DropPath(0.3, scale_by_keep="no")
    # In eval mode the op is the identity and looks at nothing.
    x = torch.ones(4, 3, dtype=torch.long)
    assert DropPath(0.3, batch_dim=5).eval()(x) is x


def test_every_error_class_is_a_drop_path_error_and_a_builtin_one():
    import droppath_surgery.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, DropPathError)
        if cls is not DropPathError:
            assert issubclass(cls, (ValueError, TypeError, RuntimeError)), name
    assert issubclass(SkipError, RuntimeError)
