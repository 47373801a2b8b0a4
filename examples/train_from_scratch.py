"""Train a small ViT from random weights on scikit-learn's digits, without and with drop path, and plot both.

This is training from scratch, not fine-tuning: the model starts from random weights (for
fine-tuning pretrained weights see ``finetune_minilm.py``). It shows the whole workflow: build a
model, patch it with drop path, inspect the report, train with a rate schedule over time, and remove
drop path again (the eval output is bitwise the same before and after removal). The data ships
inside scikit-learn (1,797 8x8 digit images, upsampled), so nothing is downloaded.

    pip install -e '.[examples]'
    python examples/train_from_scratch.py                 # about 2.5-4 minutes on a 2-core CPU
    python examples/train_from_scratch.py --rate 0.2 --schedule warmup --epochs 40
    python examples/train_from_scratch.py --seed 1        # another seed: data split, init, batches

Writes a PNG with train/validation loss and accuracy per epoch for both runs (``--out``) and prints
a table of the final figures.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from droppath_surgery import apply_drop_path, remove_drop_path
from droppath_surgery.training import Constant, DropPathScheduler, Late, LinearWarmup


@dataclass
class History:
    name: str
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0


def load_digits_tensors(image_size: int, train_size: int, seed: int):
    """scikit-learn's digits as (N, 3, S, S) float tensors, split into train and validation sets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_val = train_test_split(
        torch.arange(len(y)).numpy(), train_size=train_size, stratify=y.numpy(), random_state=seed
    )
    return (x[idx_train], y[idx_train]), (x[idx_val], y[idx_val])


def build_model(image_size: int, quick: bool) -> nn.Module:
    """A small ViT with random weights (depth 6, width 64, 8x8 patches; depth 2, width 32 with --quick)."""
    import timm

    depth, dim = (2, 32) if quick else (6, 64)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=image_size, patch_size=8,
        embed_dim=dim, depth=depth, num_heads=2, mlp_ratio=4.0, num_classes=10,
    )


def time_schedule(name: str, rate: float, steps_per_epoch: int, epochs: int):
    total = steps_per_epoch * epochs
    return {
        "constant": Constant(rate),
        "warmup": LinearWarmup(rate, warmup=total // 5),
        "late": Late(rate, start=total // 2),
    }[name]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i : i + batch])
            loss += F.cross_entropy(logits, y[i : i + batch], reduction="sum").item()
            correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return loss / len(x), correct / len(x)


def train(model: nn.Module, name: str, data, args, scheduler_factory=None) -> History:
    (x_train, y_train), (x_val, y_val) = data
    history = History(name)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=steps_per_epoch * args.epochs, pct_start=0.05
    )
    drop_scheduler = scheduler_factory(steps_per_epoch) if scheduler_factory else None
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        seen, loss_sum, correct = 0, 0.0, 0
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if args.shift:  # optional augmentation: random shifts of up to --shift pixels
                dx, dy = torch.randint(-args.shift, args.shift + 1, (2,), generator=generator).tolist()
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_schedule.step()
            if drop_scheduler is not None:
                drop_scheduler.step()  # the drop rate for the next step
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        val_loss, val_acc = evaluate(model, x_val, y_val)
        history.train_loss.append(loss_sum / seen)
        history.train_acc.append(correct / seen)
        history.val_loss.append(val_loss)
        history.val_acc.append(val_acc)
        rate = f", drop rate {drop_scheduler.rate:.3f}" if drop_scheduler is not None else ""
        print(
            f"  [{name}] epoch {epoch + 1:3d}/{args.epochs}: train loss {history.train_loss[-1]:.4f} "
            f"acc {history.train_acc[-1]:.3f} | val loss {val_loss:.4f} acc {val_acc:.3f}{rate}"
        )
    history.seconds = time.perf_counter() - start
    return history


def plot(histories: list[History], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for h, color in zip(histories, colors):
        epochs = range(1, len(h.train_loss) + 1)
        axes[0].plot(epochs, h.train_loss, "--", color=color, label=f"{h.name} train")
        axes[0].plot(epochs, h.val_loss, "-", color=color, label=f"{h.name} val")
        axes[1].plot(epochs, h.train_acc, "--", color=color, label=f"{h.name} train")
        axes[1].plot(epochs, h.val_acc, "-", color=color, label=f"{h.name} val")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(histories: list[History]) -> str:
    rows = [("run", "train loss", "train acc", "val loss", "val acc", "best val acc", "seconds")]
    for h in histories:
        rows.append(
            (h.name, f"{h.train_loss[-1]:.4f}", f"{h.train_acc[-1]:.3f}", f"{h.val_loss[-1]:.4f}",
             f"{h.val_acc[-1]:.3f}", f"{max(h.val_acc):.3f}", f"{h.seconds:.0f}")
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[History]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=0.2, help="drop rate of the deepest block (default 0.2)")
    parser.add_argument("--schedule", choices=["constant", "warmup", "late"], default="constant",
                        help="rate over training time (default constant)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train-size", type=int, default=1000, help="training images; the rest validate (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift", type=int, default=0, help="augment with random shifts of up to this many pixels")
    parser.add_argument("--out", default="train_from_scratch.png", help="where to save the plot")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: faster than 2 for this tiny model, and on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny model, 1 epoch)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.train_size = 1, 100
    image_size = 32
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args, image_size)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, image_size: int) -> list[History]:
    torch.manual_seed(args.seed)
    data = load_digits_tensors(image_size, args.train_size, args.seed)
    if args.quick:
        data = (data[0], (data[1][0][:200], data[1][1][:200]))
    print(f"digits: {len(data[0][0])} train / {len(data[1][0])} validation images, {image_size}x{image_size}")
    base = build_model(image_size, args.quick)
    baseline_model, patched_model = copy.deepcopy(base), copy.deepcopy(base)  # the same start for both runs

    # 1. Patch: every residual branch gets a DropPath, rates linear over depth (timm's convention).
    report = apply_drop_path(patched_model, args.rate)
    # 2. Inspect: where drop path went, with which rate; eval output was verified bitwise unchanged.
    print(report)

    # 3. Train both, the same data order and augmentation; the rate follows a schedule over steps.
    histories = [train(baseline_model, "no drop path", data, args)]
    torch.manual_seed(args.seed)
    histories.append(
        train(
            patched_model, f"drop path {args.rate:g} ({args.schedule})", data, args,
            lambda steps: DropPathScheduler(patched_model, time_schedule(args.schedule, args.rate, steps, args.epochs)),
        )
    )

    # 4. Remove: the original modules come back; the trained weights stay; eval output is unchanged.
    x_val = data[1][0][:64]
    patched_model.eval()
    with torch.no_grad():
        before = patched_model(x_val)
    removed = remove_drop_path(patched_model)
    with torch.no_grad():
        after = patched_model(x_val)
    print(f"removed {removed} DropPath modules; eval output bitwise unchanged: {torch.equal(before, after)}")

    plot(histories, args.out, f"ViT from random weights on sklearn digits ({args.train_size} train images), without and with drop path")
    print(f"plot saved to {args.out}\n")
    print(table(histories))
    return histories


if __name__ == "__main__":
    main()
