"""Language, speech and seq2seq models with their default configs (caches on), automatic text and
audio inputs, training calls the probe did not see, layer drop (granularity="block"), stacks, shared
layers and a model's own layer drop. Tiny configs, nothing downloaded."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers as T
from helpers import attached
from training_fixtures import single_thread  # noqa: F401  (autouse: tiny models run faster on one thread)

from droppath_surgery import (
    CallCountError,
    apply_drop_path,
    build_example_inputs,
    drop_path_report,
    find_residual_branches,
    set_drop_path_rate,
)

LAYERS = 2
TEXT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64)
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
SPEECH = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
              conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
SEQ2SEQ = dict(vocab_size=99, d_model=32, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, **IDS, decoder_start_token_id=1)

# name: (model class, config, branches per layer (encoder, decoder))
FAMILIES = {
    "Llama": (T.LlamaForCausalLM, lambda: T.LlamaConfig(**TEXT, num_key_value_heads=2), (2,)),
    "Mistral": (T.MistralForCausalLM, lambda: T.MistralConfig(**TEXT, num_key_value_heads=2), (2,)),
    "Qwen2": (T.Qwen2ForCausalLM, lambda: T.Qwen2Config(**TEXT, num_key_value_heads=2), (2,)),
    "Qwen3": (T.Qwen3ForCausalLM, lambda: T.Qwen3Config(**TEXT, num_key_value_heads=2, head_dim=8), (2,)),
    "Gemma2": (T.Gemma2ForCausalLM, lambda: T.Gemma2Config(**TEXT, num_key_value_heads=2, head_dim=8), (2,)),
    "Gemma3": (T.Gemma3ForCausalLM, lambda: T.Gemma3TextConfig(**TEXT, num_key_value_heads=2, head_dim=8), (2,)),
    "Phi3": (T.Phi3ForCausalLM, lambda: T.Phi3Config(**TEXT, num_key_value_heads=2, **IDS), (2,)),
    "GPT2": (T.GPT2LMHeadModel, lambda: T.GPT2Config(vocab_size=99, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64), (2,)),
    "GPTNeoX": (T.GPTNeoXForCausalLM, lambda: T.GPTNeoXConfig(**TEXT), (2,)),  # parallel: mlp_out + attn_out + x
    "T5": (T.T5ForConditionalGeneration, lambda: T.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64, num_layers=LAYERS,
                                                              num_heads=4), (2, 3)),
    "BART": (T.BartForConditionalGeneration, lambda: T.BartConfig(**SEQ2SEQ, max_position_embeddings=64), (2, 3)),
    "Whisper": (T.WhisperForConditionalGeneration, lambda: T.WhisperConfig(**SEQ2SEQ, num_mel_bins=8, max_source_positions=16,
                                                                          max_target_positions=32), (2, 3)),
    "BERT": (T.BertModel, lambda: T.BertConfig(**TEXT), (2,)),
    "RoBERTa": (T.RobertaModel, lambda: T.RobertaConfig(**TEXT), (2,)),
    "ModernBERT": (T.ModernBertModel, lambda: T.ModernBertConfig(**TEXT, **IDS, cls_token_id=1, sep_token_id=2), (2,)),
    "DeBERTa-v2": (T.DebertaV2Model, lambda: T.DebertaV2Config(**TEXT), (2,)),
    "Wav2Vec2": (T.Wav2Vec2Model, lambda: T.Wav2Vec2Config(**SPEECH, layerdrop=0.0), (2,)),
    "HuBERT": (T.HubertModel, lambda: T.HubertConfig(**SPEECH, layerdrop=0.0), (2,)),
    "Mamba": (T.MambaForCausalLM, lambda: T.MambaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=LAYERS, state_size=8), (1,)),
    "SigLIP2 NaFlex": (T.Siglip2VisionModel, lambda: T.Siglip2VisionConfig(
        hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64, patch_size=4, num_patches=16), (2,)),
}


def build(name: str) -> torch.nn.Module:
    cls, config, _ = FAMILIES[name]
    torch.manual_seed(0)
    return cls(config()).eval()


def outputs_and_caches(out) -> list[torch.Tensor]:
    """Every tensor a model output holds, the caches' keys and values included (read independently
    of the engine: through the output's values and the caches' layers)."""
    found = []
    for value in (out.values() if hasattr(out, "values") else [out]):
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, tuple):
            found += [v for v in value if isinstance(v, torch.Tensor)]
        else:
            for cache in (value, getattr(value, "self_attention_cache", None), getattr(value, "cross_attention_cache", None)):
                for layer in getattr(cache, "layers", None) or ():
                    found += [t for t in vars(layer).values() if isinstance(t, torch.Tensor)]
    return found


def training_inputs(model: torch.nn.Module, batch: int = 6) -> dict:
    """What a training loop passes: the automatic inputs grown to ``batch`` samples, with a padding
    mask of another pattern than the probe's where the model takes one."""
    _, kwargs = build_example_inputs(model)
    grown = {k: torch.cat([v] * (batch // v.shape[0])) for k, v in kwargs.items()}
    for key in ("attention_mask", "decoder_attention_mask"):
        if key in grown:
            grown[key] = torch.ones_like(grown[key])
            grown[key][1::2, -2:] = 0  # every other sample padded at the end
    return grown


def loss_of(out) -> torch.Tensor:
    tensors = [t for t in outputs_and_caches(out) if t.is_floating_point() and t.requires_grad]
    return sum(t.float().mean() for t in tensors)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_default_config_patches_verifies_with_caches_and_trains_masked_and_skipped(name):
    model = build(name)
    args, kwargs = build_example_inputs(model)
    with torch.no_grad():
        before = outputs_and_caches(model(*args, **kwargs))
    report = apply_drop_path(model, 0.1)
    per_layer = FAMILIES[name][2]
    assert len(report.sites) == sum(per_layer) * LAYERS, report
    assert report.verified is True
    if len(per_layer) == 2:  # encoder and decoder: two stacks, each ramping to the top rate
        assert {s.stack for s in report.sites} == {0, 1}
        assert max(s.rate for s in report.sites if s.stack == 0) == max(s.rate for s in report.sites if s.stack == 1) == 0.1
    with torch.no_grad():
        after = outputs_and_caches(model(*args, **kwargs))
    assert len(before) == len(after) > 0 and all(torch.equal(a, b) for a, b in zip(before, after))  # caches included
    for skip in (False, True):
        apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=skip, min_skip_rate=0.0)
        model.train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = loss_of(model(**training_inputs(model)))  # a padding mask the probe did not see
        loss.backward()
        assert torch.isfinite(loss)
        model.zero_grad(set_to_none=True)
        model.eval()


def test_automatic_inputs_pad_masks_left_for_decoders_and_carry_token_types_and_decoder_inputs():
    _, llama = build_example_inputs(build("Llama"))
    assert llama["attention_mask"][1, 0] == 0 and llama["attention_mask"][1, -1] == 1 and llama["attention_mask"][0].all()
    _, bert = build_example_inputs(build("BERT"))
    assert bert["attention_mask"][1, 0] == 1 and bert["attention_mask"][1, -1] == 0  # encoders: right padding
    assert set(bert["token_type_ids"].unique().tolist()) == {0, 1}
    _, t5 = build_example_inputs(build("T5"))
    assert {"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"} <= set(t5)
    _, whisper = build_example_inputs(build("Whisper"))
    assert whisper["input_features"].shape == (2, 8, 32)
    _, wav = build_example_inputs(build("Wav2Vec2"))
    assert wav["input_values"].ndim == 2
    _, naflex = build_example_inputs(build("SigLIP2 NaFlex"))
    assert naflex["pixel_attention_mask"][1].sum() < naflex["pixel_attention_mask"][0].sum()
    assert naflex["spatial_shapes"].tolist() == [[4, 4], [3, 4]]


def test_skip_subsets_batch_tensors_the_probe_did_not_see_with_one_warning():
    model = build("Llama")
    apply_drop_path(model, 0.5, schedule="uniform", skip_dropped=True, min_skip_rate=0.0,
                    example_inputs={"input_ids": torch.randint(3, 99, (2, 6))})
    model.train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            inputs = training_inputs(model)
            loss_of(model(**inputs, position_ids=torch.arange(12).expand(6, 12))).backward()
    messages = [str(w.message) for w in caught if "skip_dropped" in str(w.message)]
    assert len(messages) == 1 and "kwargs['attention_mask']" in messages[0] and "check did not cover" in messages[0]
    assert "held no batch in the traced call" in messages[0]


def _dropped(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [(o == 0).flatten(1).all(1) for o in outputs]


def test_block_granularity_shares_one_decision_across_a_blocks_branches():
    model = build("Llama")
    report = apply_drop_path(model, 0.5, schedule="uniform", granularity="block")
    seen: dict[int, list[torch.Tensor]] = {}
    for drop in attached(model):
        block = drop.patch.site.branches[0].block
        drop.register_forward_hook(lambda m, i, o, b=block: seen.setdefault(b, []).append(o))
    model.train()
    ids = torch.randint(3, 99, (64, 8))
    model(input_ids=ids)
    assert len(seen) == LAYERS and len(report.sites) == 2 * LAYERS
    for outputs in seen.values():
        attn, mlp = _dropped(outputs)
        assert torch.equal(attn, mlp) and 10 < attn.sum() < 54  # one decision for both branches
    # A branch-granularity patch decides per branch: over several passes the two differ somewhere.
    apply_drop_path(model, 0.5, schedule="uniform")
    seen.clear()
    for drop in attached(model):
        drop.register_forward_hook(lambda m, i, o, b=drop.patch.site.branches[0].block: seen.setdefault(b, []).append(o))
    model(input_ids=ids)
    assert any(not torch.equal(*_dropped(outputs)) for outputs in seen.values())


def _layer_io(model):
    io = []
    for layer in model.model.layers:
        layer.register_forward_hook(
            lambda m, a, kw, o: io.append((kw.get("hidden_states", a[0] if a else None), o[0] if isinstance(o, tuple) else o)),
            with_kwargs=True,
        )
    return io


def test_block_skip_leaves_a_dropped_samples_layer_output_equal_to_its_input_bit_for_bit():
    model = build("Llama")
    report = apply_drop_path(model, 0.5, schedule="uniform", granularity="block", skip_dropped=True, min_skip_rate=0.0)
    assert all(s.compute == "skip" for s in report.sites), report
    io = _layer_io(model)
    model.train()
    model(input_ids=torch.randint(3, 99, (16, 8)))
    for x, y in io:
        same = (x == y).flatten(1).all(1)
        assert same.sum() == 8  # exactly B (1 - p) = 8 computed, the other 8 pass the layer unchanged, bitwise


def test_batch_mode_block_granularity_is_layerdrop_whole_batch_or_nothing():
    model = build("Llama")
    apply_drop_path(model, 0.5, schedule="uniform", granularity="block", mode="batch")
    io = _layer_io(model)
    model.train()
    ids = torch.randint(3, 99, (8, 8))
    for _ in range(10):
        model(input_ids=ids)
    same = [int((x == y).flatten(1).all(1).sum()) for x, y in io]
    assert set(same) == {0, 8}  # a layer is skipped for the whole batch, or runs for all of it
    assert 4 <= same.count(8) <= 16  # 20 layer calls at p = 0.5: far from all or none


def test_block_decisions_survive_gradient_checkpointing_recomputation():
    from torch.utils.checkpoint import checkpoint

    model = build("Llama")
    apply_drop_path(model, 0.5, schedule="uniform", granularity="block")
    model.train()
    ids = torch.randint(3, 99, (16, 8))
    embeds = model.model.embed_tokens(ids).detach()

    def run(checkpointed: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(5)
        x = embeds.clone().requires_grad_(True)
        pos = model.model.rotary_emb(x, torch.arange(8).expand(16, 8))
        for drop in attached(model):
            drop.reset_calls()  # the model's own forward pre-hook does this
        for layer in model.model.layers:
            call = lambda h, layer=layer: layer(h, position_embeddings=pos)  # noqa: E731
            x = checkpoint(call, x, use_reentrant=False) if checkpointed else call(x)
        x.sum().backward()
        return x.detach(), [p.grad.clone() for p in model.model.layers.parameters()]

    plain, grads = run(False)
    model.zero_grad()
    again, grads_again = run(True)
    assert torch.equal(plain, again) and all(torch.allclose(a, b) for a, b in zip(grads, grads_again))


def test_stacks_ramp_on_their_own_unless_joint():
    model = build("T5")
    report = find_residual_branches(model, rate=0.3, schedule="linear")
    encoder = [s.rate for s in report.sites if s.path.startswith("encoder")]
    decoder = [s.rate for s in report.sites if s.path.startswith("decoder")]
    assert encoder[0] == decoder[0] == 0.0 and encoder[-1] == decoder[-1] == 0.3
    joint = find_residual_branches(model, rate=0.3, schedule="linear", per_stack=False)
    assert [s.rate for s in joint.sites][-1] == 0.3 and [s.rate for s in joint.sites if s.stack == 1][0] == 0.2
    clip = T.CLIPModel(T.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=40),
        vision_config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
                           patch_size=8)))
    apply_drop_path(clip, 0.2)
    towers = {}
    for s in drop_path_report(clip).sites:
        towers.setdefault(s.path.split(".")[0], []).append(s.rate)
    assert towers["vision_model"] == [0.0, 0.0, 0.1, 0.1, 0.2, 0.2] and towers["text_model"] == [0.0, 0.0, 0.2, 0.2]
    set_drop_path_rate(clip, 0.4)  # the model keeps per-stack ramps
    assert [s.rate for s in drop_path_report(clip).sites if s.path.startswith("text_model")][-1] == 0.4


def test_a_hybrid_decoder_mixing_layer_classes_ramps_over_its_layers():
    # Jamba's layers = ModuleList(Mamba, attention, Mamba, attention): one stack, not one repeated composite
    # (as it was taken: one unit, "linear" gave every branch 0 and only the all-zero warning said so).
    cfg = T.JambaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                        expert_layer_offset=1, num_experts=2, mamba_d_state=8, mamba_dt_rank=4, use_mamba_kernels=False,
                        use_cache=False)
    model = T.JambaModel(cfg).eval()
    assert len({type(layer) for layer in model.layers}) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "every branch rate 0" warning
        report = apply_drop_path(model, 0.3)
    assert report.num_blocks == 4
    assert [(s.block, s.block_path) for s in report.sites] == [(i, f"layers.{i}") for i in range(4) for _ in range(2)]
    assert [s.rate for s in report.sites] == pytest.approx([i * 0.1 for i in range(4) for _ in range(2)])


def test_a_layer_run_at_several_depths_gets_a_rate_per_call():
    model = T.AlbertModel(T.AlbertConfig(**{**TEXT, "num_hidden_layers": 4}, embedding_size=16))
    report = apply_drop_path(model, 0.3)
    assert report.num_blocks == 4 and len(report.sites) == 8 and report.num_modules == 2
    assert [s.rate for s in report.sites] == [0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3]
    model.train()
    drop = attached(model)[0]
    calls = []
    handle = drop.register_forward_pre_hook(lambda m, a: calls.append(m._call))
    model(input_ids=torch.randint(3, 99, (4, 6)))
    handle.remove()
    assert [drop.rate_of(c) for c in calls] == [0.0, 0.1, 0.2, 0.3]
    with pytest.raises(CallCountError, match="called again"):
        drop(torch.randn(4, 6, 32))  # a fifth call in the same pass
    model(input_ids=torch.randint(3, 99, (4, 6)))  # the next pass counts afresh


def test_native_layer_drop_is_reported_and_warned_about_and_a_zero_schedule_too():
    model = T.Wav2Vec2Model(T.Wav2Vec2Config(**SPEECH))  # wav2vec2's default layerdrop is 0.1
    with pytest.warns(UserWarning, match=r"config.layerdrop=0.1.*set model.config.layerdrop = 0.0"):
        report = apply_drop_path(model, 0.1)
    assert any("layer drop is on" in n for n in report.notes)
    single = T.BertModel(T.BertConfig(**{**TEXT, "num_hidden_layers": 1}))
    with pytest.warns(UserWarning, match="gives every branch rate 0.*schedule='uniform'"):
        apply_drop_path(single, 0.2)
    assert {s.rate for s in apply_drop_path(single, 0.2, schedule="uniform").sites} == {0.2}


def test_a_spectrogram_named_input_values_gets_config_max_length_frames_of_its_mel_bins():
    # AST takes a spectrogram as input_values and has no conv_kernel (the sweep found AttributeError here, then
    # an ExampleInputsError; tests/test_inputs_multimodal.py has the models that still get one).
    ast = T.ASTModel(T.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 max_length=32, num_mel_bins=32))
    _, kwargs = build_example_inputs(ast)
    assert kwargs["input_values"].shape == (2, 32, 32)
    report = apply_drop_path(ast, 0.1)
    assert report.verified and len(report.sites) == 4


@pytest.mark.parametrize("name", ["VideoMAE", "Timesformer", "Vivit"])
def test_video_models_get_a_clip_of_config_num_frames_images(name):
    # The sweep found these failing on 4-D pixel_values ("not enough values to unpack (expected 5, got 4)").
    patches = {"tubelet_size": [2, 16, 16]} if name == "Vivit" else {"patch_size": 16}
    config = getattr(T, f"{name}Config")(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, image_size=32, num_frames=4, **patches)
    model = getattr(T, f"{name}Model")(config)
    _, kwargs = build_example_inputs(model)
    assert kwargs["pixel_values"].shape == (2, 4, 3, 32, 32)
    report = apply_drop_path(model, 0.1)
    assert report.verified and len(report.sites) == 4


def test_a_model_that_rescales_its_own_weights_in_its_first_eval_forward_is_verified_from_there():
    # RWKV divides some weights by 2 ** (layer // rescale_every) in its first eval forward (and back in
    # train): the probe's unpatched forward does it, the note says so, and the patched model is verified
    # against the state that forward left.
    config = T.RwkvConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                          intermediate_size=64, context_length=16, rescale_every=1)
    model = T.RwkvModel(config)
    before = model.blocks[1].attention.output.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"wrote its own state during an eval forward before drop path was attached"):
        report = apply_drop_path(model, 0.1)
    assert report.verified is True and len(report.sites) == 4
    assert any("wrote its own state" in n for n in report.notes)
    assert torch.equal(model.blocks[1].attention.output.weight, before / 2)  # the model's own rescaling, once
