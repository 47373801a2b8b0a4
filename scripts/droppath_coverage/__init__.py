"""Regenerate ``docs/coverage.md``: what droppath-surgery finds on every timm model family, a zoo
of Hugging Face transformers built from small configs, and torchvision models, against where each
library places drop path itself.

    python scripts/coverage.py                      # full table -> docs/coverage.md (about 6 min, 2 cores)
    python scripts/coverage.py --subset --out -     # the CI subset, printed
    python scripts/coverage.py --only timm:resnet hf:Swin --out -

Everything runs on random weights (``pretrained=False``, Hugging Face models from small configs);
nothing is downloaded. One model failing never stops the table: each runs under a time limit and
any exception becomes a row with its reason. Modules: ``catalog`` (models, conventions, CI subset,
explanations), ``oracles`` (native slots), ``judge`` (comparison, ``Row``), ``runner`` (rows, time
limits, command line), ``render`` (markdown).

How a row is judged
-------------------
For each model the engine runs exactly as a user would call it: ``apply_drop_path(model, RATE,
schedule=...)`` on the model built *without* drop path (timm ``create_model(name)``), timed (that is
"patch s"). Only the public API of droppath_surgery is used, and nothing of its block rules. Then:

* **eval unchanged**: ``report.verified`` is True *and* an independent check here: the eval output
  before patching and after it are bitwise equal (same seed before each forward).
* **native branches**: where the library places drop path itself, read off a second build of the
  same model *with* drop path (timm ``create_model(name, drop_path_rate=RATE)``; HF config
  ``drop_path_rate=RATE``; torchvision ``stochastic_depth_prob=RATE``). Its *slots* are the modules
  whose class name contains ``DropPath`` / ``StochasticDepth``, plus every attribute of one of their
  names that holds ``nn.Identity`` or ``None`` instead (the slots of blocks whose rate is 0: timm
  builds ``Identity``, ResNet ``None``). A slot belongs to its *holder*, the module whose attribute it
  is (timm's block with ``self.drop_path1``, LowFormer's ``stages.2.1.attn`` with ``drop_path``, HF's
  layer with ``self.drop_path``, torchvision's block with ``stochastic_depth``): that is the library's
  own statement of placement. A slot call is a branch when, in one eval forward of that build
  (``None`` slots set to a counting ``Identity``), its output is added to another tensor while its
  holder's call runs (followed through scaling and slicing by parameters, and through scalings by
  tensors made from parameters and buffers only, such as PoolFormer v1's ``scale.view(1, -1, 1, 1)``);
  calls that are never (ByobNet blocks without shortcut, ResNeSt, whose ``x = self.drop_path(x)`` after
  ``shortcut = x`` is unused or feeds the shortcut's downsample: an eval slot returns its input object, so the
  oracle follows a copy of it, RDNet) and slots forward never uses
  (EfficientNet blocks without skip) are not branches. A slot called for two branches (HF Dinov2, torchvision Swin) is two.
* **site parity**: every engine site must be claimed exactly once, and every expected branch matched:
    - each call of a slot that is a module in the model under test (``Identity``, a DropPath) is
      carried by an engine site: in one eval forward of the patched model, the site's output is the
      very tensor the slot outputs (the site replaced it, or hooks the module whose output flows
      through it);
    - the other expected branches are matched by count per holder: ``None`` slots (timm ResNet-style
      blocks at rate 0, where the engine has to hook a module such as ``bn3``), and for Hugging Face /
      torchvision the branches of the architecture's block class that the library does not drop (HF
      Swin's MLP branch; all of them for models without drop path: HF ViT, CLIP, BERT, torchvision
      ResNet / ViT; per block counts in ``catalog``, read off each library's source). The engine sites
      that no slot claimed go to the innermost holder whose path prefixes theirs (``holder.``; a hook
      on the holder itself drops a branch of the module around it); each holder must get exactly its
      count, and a site in no holder is extra.
* **rate parity**: with the named schedule that implements the family's convention
  (``TIMM_CONVENTION`` / the ``convention`` of each HF / torchvision entry, see ``CONVENTIONS``), the
  rate of the site carrying each slot equals the slot's native rate (``drop_prob`` / ``p``; 0 for
  ``Identity`` / ``None``) to 1e-6, and the rates of each holder's count-matched sites equal the
  native rates of its count-matched branches (sorted; a branch the library does not drop takes the
  rate of its holder's slots). A convention that no entry of ``droppath_surgery.SCHEDULES`` implements
  (checked by value, n = 1..40) fails rate parity with that reason. Models with no native drop path
  have no rate oracle (``n/a``).
* **site and rate parity with ``schedule="timm"``** (timm rows): the model is patched again with
  ``apply_drop_path(model, RATE, schedule="timm")``, whose rates come from a meta-device build at
  ``drop_path_rate=1`` scaled by ``RATE`` and which leaves out branches timm has no slot for, and
  judged as above against the real build at ``RATE``. This checks how the schedule maps timm's
  slots to the engine's branches and that timm's conventions are linear in the rate; it is not an
  independent derivation of the convention (the schedule reads it from timm).
* **skip** (every row the engine patched): ``apply_drop_path(model, RATE, skip_dropped=True,
  min_skip_rate=0)``: the branches whose compute is skipped for dropped samples out of all, the
  reasons the others mask (from ``report.notes``), and one training forward and backward at rate
  0.5 (uniform) on the example inputs, which must give a finite loss. Informative, not part of parity.

A family is "at parity" when site parity, rate parity (or ``n/a``) and eval unchanged all hold;
"at parity, `timm`" the same with the ``schedule="timm"`` rate parity.
"""
