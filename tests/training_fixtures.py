"""Shared by tests/test_training_*.py: one CPU thread, and the tiny timm / HF ViTs they train.

Their models are tiny, so a second thread buys nothing, and on a machine shared with other jobs two
threads per process oversubscribe the cores: measured here, the training tests took 195 s with two
threads and 51 s with one under the same load. Import the fixture into a test module to use it.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def timm_vit():
    """A 2-block timm ViT on 32x32 inputs, 4 classes."""
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=4)


def hf_vit():
    """A 2-layer Hugging Face ViT classifier on 32x32 inputs, 4 labels."""
    import transformers as T

    config = T.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=4,
    )
    return T.ViTForImageClassification(config)
