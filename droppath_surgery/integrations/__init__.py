"""What the engine knows of other libraries: example inputs for timm / Hugging Face / torchvision
models (``inputs``), model wrappers (``wrappers``) and trainer callbacks (``callbacks``, imported on
first use). Per-site schedules that read a library's own rates live in ``schedules``."""
