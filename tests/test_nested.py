"""The one walker over nested outputs (white-box): the structures models return, rebuilt with
their own types, and the paths the report and the hooks use."""

from collections import OrderedDict, namedtuple

import torch

from droppath_surgery import nested

Pair = namedtuple("Pair", "a b")


class Output(OrderedDict):  # stands for an HF ModelOutput: a dict subclass
    pass


def sample():
    t = [torch.randn(2) for _ in range(4)]
    return t, (t[0], [t[1], {"x": t[2], "n": 3}], Pair(t[3], None))


def test_leaves_walks_tuples_lists_dicts_and_namedtuples_in_order():
    t, obj = sample()
    got = list(nested.leaves(obj))
    assert [i for i, _ in got] == [(0,), (1, 0), (1, 1, "x"), (1, 1, "n"), (2, 0), (2, 1)]
    assert [leaf is want for (_, leaf), want in zip(got, [t[0], t[1], t[2]])] == [True] * 3
    assert nested.tensors(obj) == [t[0], t[1], t[2], t[3]]
    assert nested.describe((1, 1, "x")) == "output[1][1]['x']"


def test_map_and_replace_keep_every_container_type():
    t, obj = sample()
    doubled = nested.map_tensors(obj, lambda x: x * 2)
    assert isinstance(doubled[2], Pair) and doubled[2].b is None and doubled[1][1]["n"] == 3
    assert torch.equal(doubled[1][1]["x"], t[2] * 2)
    out = Output(logits=t[0], hidden=(t[1], t[2]))
    replaced = nested.replace_at(out, ("hidden", 1), lambda x: x + 1)
    assert type(replaced) is Output and replaced["logits"] is t[0] and replaced["hidden"][0] is t[1]
    assert torch.equal(replaced["hidden"][1], t[2] + 1)
    assert out["hidden"][1] is t[2]  # the original is not modified
    assert nested.get_at(replaced, ("hidden", 0)) is t[1] and nested.get_at(replaced, ("nope",)) is None
    assert nested.replace_at(out, ("nope",), lambda x: x + 1) == out


def test_a_model_output_with_a_required_field_is_rebuilt_with_its_type():
    # xLSTM's output declares ``last_hidden_state`` without a default: OrderedDict.copy calls the class
    # with no arguments and fails; the rebuilt copy keeps the type, the fields and the attributes.
    from dataclasses import dataclass

    from transformers.utils import ModelOutput

    @dataclass
    class Required(ModelOutput):
        last_hidden_state: torch.Tensor | None
        cache: object = None

    t = torch.randn(2, 3)
    out = nested.map_tensors(Required(last_hidden_state=t, cache="state"), lambda x: x * 2)
    assert type(out) is Required and out.cache == "state" and torch.equal(out.last_hidden_state, t * 2)
    assert torch.equal(out["last_hidden_state"], t * 2) and list(out.keys()) == ["last_hidden_state", "cache"]


def test_a_model_output_keeps_its_key_order_when_a_field_was_set_after_the_others():
    # Aya Vision's image outputs get ``pooler_output`` assigned after construction: its keys run
    # last_hidden_state, hidden_states, pooler_output, while a copy rebuilds them in field order. The
    # recorded outputs must keep the model's order, or verification reads a changed structure.
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    t = torch.randn(2, 3)
    out = BaseModelOutputWithPooling(last_hidden_state=t, hidden_states=(t, t))
    out.pooler_output = t[:, 0]
    assert list(out.keys()) == ["last_hidden_state", "hidden_states", "pooler_output"]
    mapped = nested.map_tensors(out, lambda x: x + 1)
    assert list(mapped.keys()) == list(out.keys())
    assert [i for i, _ in nested.leaves(mapped)] == [i for i, _ in nested.leaves(out)]
