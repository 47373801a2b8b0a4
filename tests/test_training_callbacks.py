"""Trainer callbacks: the rates each training step really ran with, under Hugging Face Trainer (also
resumed from a checkpoint) and PyTorch Lightning (an optional extra: skipped when not installed)."""

import pytest
import torch
import transformers as T
from helpers import attached
from torch import nn
from training_fixtures import single_thread  # noqa: F401  (autouse: one CPU thread)

from droppath_surgery import ScheduleError, apply_drop_path
from droppath_surgery.training import Early, Late, LinearWarmup


def hf_vit():
    torch.manual_seed(0)
    config = T.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=16, patch_size=8, num_labels=3,
    )
    return T.ViTForImageClassification(config)


def rate_log(model: nn.Module) -> list[float]:
    """The top rate each training forward ran with (the deepest block's rate, read as the model runs)."""
    seen: list[float] = []
    deepest = attached(model)[-1]
    model.register_forward_pre_hook(lambda m, args: seen.append(round(deepest.rate, 6)) if m.training else None)
    return seen


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def hf_trainer(model, tmp_path, callbacks, **overrides):
    args = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=6,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no",
        dataloader_num_workers=0, seed=0,
    )
    args.update(overrides)
    return T.Trainer(model=model, args=T.TrainingArguments(**args), train_dataset=Images(), callbacks=callbacks)


def hf_callback(*args, **kwargs):
    from droppath_surgery.callbacks import DropPathTrainerCallback

    return DropPathTrainerCallback(*args, **kwargs)


def test_hf_trainer_callback_sets_the_rate_before_each_step(tmp_path):
    model = hf_vit()
    apply_drop_path(model, 0.1)
    seen = rate_log(model)
    callback = hf_callback(LinearWarmup(0.3, warmup=4))
    hf_trainer(model, tmp_path, [callback]).train()
    assert seen == [0.0, 0.075, 0.15, 0.225, 0.3, 0.3]
    assert callback.scheduler.t == 5 and callback.scheduler.unit == "step"


def test_hf_trainer_callback_per_epoch(tmp_path):
    model = hf_vit()
    apply_drop_path(model, 0.1)
    seen = rate_log(model)
    trainer = hf_trainer(model, tmp_path, [hf_callback(Late(0.3, start=1), unit="epoch")], max_steps=-1, num_train_epochs=3)
    trainer.train()
    assert seen == [0.0, 0.0, 0.3, 0.3, 0.3, 0.3]  # 2 steps per epoch


def test_hf_trainer_resumed_from_a_checkpoint_continues_the_schedule(tmp_path):
    schedule = Early(0.2, until=4)
    model = hf_vit()
    apply_drop_path(model, 0.1)
    seen = rate_log(model)
    hf_trainer(model, tmp_path, [hf_callback(schedule)], save_strategy="steps", save_steps=3).train()
    assert seen == [0.2, 0.2, 0.2, 0.2, 0.0, 0.0]

    fresh = hf_vit()
    apply_drop_path(fresh, 0.1)
    resumed = rate_log(fresh)
    trainer = hf_trainer(fresh, tmp_path, [hf_callback(schedule)], save_strategy="no")
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert resumed == seen[3:]


def test_callback_arguments_are_checked_at_construction():
    with pytest.raises(ScheduleError, match="unit must be 'step'"):
        hf_callback(Early(0.1, until=3), unit="iteration")
    with pytest.raises(ScheduleError, match="per_layer must be"):
        hf_callback(0.1, per_layer="cubic")


def test_missing_library_attribute_is_an_attribute_error():
    import droppath_surgery.callbacks as callbacks

    with pytest.raises(AttributeError):
        callbacks.DropPathKerasCallback  # noqa: B018


def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        pl = pytest.importorskip(
            "pytorch_lightning",
            reason="PyTorch Lightning is an optional extra (pip install 'droppath-surgery[lightning]'); not installed",
        )
    return pl


def test_lightning_callback_sets_the_rate_before_each_step():
    pl = _lightning()
    from droppath_surgery.callbacks import DropPathLightningCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = hf_vit()

        def training_step(self, batch, batch_idx):
            return self.net(**batch).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    module = Module()
    apply_drop_path(module.net, 0.1)
    seen = rate_log(module.net)
    callback = DropPathLightningCallback(LinearWarmup(0.3, warmup=4))
    trainer = pl.Trainer(
        max_steps=6, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )
    trainer.fit(module, torch.utils.data.DataLoader(Images(), batch_size=4))
    assert seen == [0.0, 0.075, 0.15, 0.225, 0.3, 0.3]
    assert callback.scheduler.model is module
