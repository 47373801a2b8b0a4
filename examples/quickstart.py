"""Quickstart: add drop path to a timm ViT and a Hugging Face ViT, train a step, change the rate, undo;
then the same with skip_dropped=True, where dropped samples skip the branch compute.

    python examples/quickstart.py               # random weights, nothing downloaded
    python examples/quickstart.py --pretrained  # real checkpoints (needs the network)
"""

from __future__ import annotations

import argparse

import timm
import torch
import transformers

from droppath_surgery import apply_drop_path, drop_path_report, remove_drop_path, set_drop_path_rate


def timm_vit(pretrained: bool) -> torch.nn.Module:
    # With the network: timm.create_model("vit_small_patch16_224.augreg_in21k_ft_in1k", pretrained=True)
    return timm.create_model("vit_small_patch16_224", pretrained=pretrained, num_classes=10)


def hf_vit(pretrained: bool) -> torch.nn.Module:
    if pretrained:  # with the network
        return transformers.ViTForImageClassification.from_pretrained(
            "google/vit-base-patch16-224-in21k", num_labels=10
        )
    config = transformers.ViTConfig(
        hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, num_labels=10
    )
    return transformers.ViTForImageClassification(config)


def train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.train()
    out = model(images)
    logits = out.logits if hasattr(out, "logits") else out
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", action="store_true", help="load real weights (needs the network)")
    parser.add_argument("--rate", type=float, default=0.1, help="drop rate of the deepest block")
    args = parser.parse_args()
    torch.manual_seed(0)
    images, labels = torch.randn(4, 3, 224, 224), torch.randint(0, 10, (4,))

    for name, build in (("timm", timm_vit), ("Hugging Face", hf_vit)):
        model = build(args.pretrained)
        report = apply_drop_path(model, args.rate)  # linear schedule, eval output verified bitwise
        print(f"== {name} ==")
        print(report)
        print(f"training step loss: {train_step(model, images, labels):.4f}")
        set_drop_path_rate(model, 2 * args.rate, schedule="uniform")  # cheap; no forward pass
        print(f"after set_drop_path_rate: {sorted({s.rate for s in drop_path_report(model).sites})}")
        print(f"removed {remove_drop_path(model)} DropPath modules; the original modules are back\n")

    # Large rates (0.3-0.5, ViT-L/H): run each branch only on the samples that keep it.
    model = timm_vit(args.pretrained)
    report = apply_drop_path(model, 0.4, schedule="uniform", skip_dropped=True)
    skipping = sum(s.compute == "skip" for s in report.sites)
    print(f"== timm, skip_dropped=True: {skipping}/{len(report.sites)} branches skip the dropped samples ==")
    print(f"training step loss: {train_step(model, images, labels):.4f}")
    print(f"removed {remove_drop_path(model)} DropPath modules; the original modules are back")


if __name__ == "__main__":
    main()
