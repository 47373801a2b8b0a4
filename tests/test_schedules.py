"""Per-block schedules: timm's exact linear convention, uniform, lists, callables, validation."""

import pytest
from timm.layers import calculate_drop_path_rates

from droppath_surgery import InvalidRateError, ScheduleError, block_rates


@pytest.mark.parametrize("n", [1, 2, 12, 24, 40])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 1.0])
def test_linear_is_timms_calculate_drop_path_rates_to_float32_rounding(n, rate):
    ours, timms = block_rates(rate, "linear", n), calculate_drop_path_rates(rate, n)
    assert len(ours) == len(timms) and all(abs(a - b) <= 1e-7 for a, b in zip(ours, timms))


def test_linear_runs_from_zero_to_exactly_the_rate_asked_for():
    for n in (2, 5, 12, 24):
        rates = block_rates(0.2, "linear", n)
        assert rates[0] == 0.0 and rates[-1] == 0.2  # not timm's float32 0.20000000298023224
        assert rates == sorted(rates)


def test_uniform():
    assert block_rates(0.3, "uniform", 4) == [0.3] * 4


def test_explicit_list_and_callable():
    assert block_rates(None, [0.0, 0.1, 0.2], 3) == [0.0, 0.1, 0.2]
    assert block_rates(None, lambda i, n: 0.5 * i / n, 4) == [0.0, 0.125, 0.25, 0.375]


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), float("inf"), "high"])
def test_named_schedule_rejects_bad_rate(rate):
    with pytest.raises(InvalidRateError, match=r"\[0, 1\]"):
        block_rates(rate, "linear", 4)


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(ScheduleError, match="'cosine'.*'linear'.*'uniform'"):
        block_rates(0.1, "cosine", 4)


def test_wrong_length_list_says_the_length_to_pass():
    with pytest.raises(ScheduleError, match="has 4 blocks.*the list has 3.*length 4"):
        block_rates(None, [0.1, 0.1, 0.1], 4)


@pytest.mark.parametrize("bad", [[0.1, float("nan")], [0.1, -0.1], [0.1, 1.5], [0.1, "x"]])
def test_list_with_invalid_entry_names_the_block(bad):
    with pytest.raises(ScheduleError, match="block 1"):
        block_rates(None, bad, 2)


def test_callable_returning_invalid_rate():
    with pytest.raises(ScheduleError, match="callable"):
        block_rates(None, lambda i, n: 1.5, 3)


def test_schedule_of_wrong_type():
    with pytest.raises(ScheduleError, match="must be a name"):
        block_rates(0.1, 3.0, 3)


def test_efficientnet_builder_convention():
    assert block_rates(0.2, "efficientnet", 4) == [0.0, 0.05, 0.1, 0.15]  # r * i / n, as written (not 0.15000000000000002)


@pytest.mark.parametrize("name", ["exp", "log", "sin", "sigmoid"])
def test_layerskip_shapes_follow_torchtunes_scale_types_and_reach_the_rate_at_the_last_block(name):
    import math

    def sigmoid(t):
        return 1 / (1 + math.exp(-10 * (t - 0.5)))

    # torchtune's get_scale(scale_type, scale_period=n - 1, val=i); its sigmoid is stretched to 0..1 here.
    scale = {
        "exp": lambda i, p: math.exp(i * math.log(2) / p) - 1,
        "log": lambda i, p: math.log(i + 1) / math.log(p + 1),
        "sin": lambda i, p: math.sin(0.5 * math.pi * i / p),
        "sigmoid": lambda i, p: (sigmoid(i / p) - sigmoid(0)) / (sigmoid(1) - sigmoid(0)),
    }[name]
    for n in (2, 5, 12):
        rates = block_rates(0.4, name, n)
        assert rates == pytest.approx([0.4 * scale(i, n - 1) for i in range(n)], abs=1e-12)
        assert rates[0] == 0.0 and rates[-1] == 0.4 and rates == sorted(rates)
    assert block_rates(0.4, name, 1) == [0.4]  # one block: the rate (torchtune's scale period 0)
