import pytest
import torch

from mmalign.adapters import CausalLMAdapter, LoraSettings
from mmalign.adapters.causal_lm import completion_logps
from mmalign.data import DataError, validate_record

from ..conftest import arithmetic_pairs

A = {"role": "assistant", "content": "hello there"}
B = {"role": "assistant", "content": "no"}
U = {"role": "user", "content": "hi"}


def records(n=4):
    return [validate_record(r, "mem", i) for i, r in enumerate(arithmetic_pairs(n, seed=1))]


def unpadded_logp(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logp = model(ids).logits.float().log_softmax(-1)[0]
    return sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion))


def test_score_is_summed_completion_logprob_with_prompt_and_padding_masked(tiny_lm_dir):
    adapter = CausalLMAdapter(pretrained=str(tiny_lm_dir))
    conv = validate_record({"prompt": [U], "chosen": [A], "rejected": [B]}, "mem", 9)
    encoded = [adapter.encode(r) for r in records(3) + [conv]]
    batch = adapter.collate(encoded)
    assert batch["input_ids"].shape[0] == 8  # [chosen; rejected]
    with torch.no_grad():
        scores = adapter.score(batch)
        for i, e in enumerate(encoded):
            assert scores[i].item() == pytest.approx(unpadded_logp(adapter.model, e["prompt"], e["chosen"]), abs=1e-4)
            assert scores[4 + i].item() == pytest.approx(unpadded_logp(adapter.model, e["prompt"], e["rejected"]), abs=1e-4)
    assert batch["num_tokens"].tolist() == [len(e["chosen"]) for e in encoded] + [len(e["rejected"]) for e in encoded]


def test_completion_logps_half_precision_path_matches_fp32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    expected = (logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0] * mask).sum(-1)
    torch.testing.assert_close(completion_logps(logits, targets, mask), expected)
    torch.testing.assert_close(completion_logps(logits.bfloat16(), targets, mask), expected, rtol=0.05, atol=0.1)


def test_plain_text_gets_eos_and_chat_goes_through_template(tiny_lm_dir):
    adapter = CausalLMAdapter(pretrained=str(tiny_lm_dir))
    tok = adapter.tokenizer
    enc = adapter.encode(records(1)[0])
    assert enc["chosen"][-1] == tok.eos_token_id and enc["rejected"][-1] == tok.eos_token_id
    conv = adapter.encode(validate_record({"prompt": [U], "chosen": [A], "rejected": [B]}, "mem", 1))
    prompt_text = tok.decode(conv["prompt"])
    assert prompt_text.startswith("<|bos|><|user|>hi") and prompt_text.endswith("<|assistant|>")
    assert tok.decode(conv["chosen"]) == "hello there<|eos|>"


def test_truncation_keeps_prompt_end_and_fails_clearly_without_room(tiny_lm_dir):
    adapter = CausalLMAdapter(pretrained=str(tiny_lm_dir), max_length=12, max_prompt_length=5)
    rec = validate_record({"prompt": "one two three four five six seven", "chosen": "a b c d e f g h i j",
                           "rejected": "x"}, "f.jsonl", 4)
    full_prompt = adapter.tokenizer(rec.prompt)["input_ids"]
    enc = adapter.encode(rec)
    assert enc["prompt"] == full_prompt[-5:]
    assert len(enc["prompt"]) + len(enc["chosen"]) == 12
    tight = CausalLMAdapter(pretrained=str(tiny_lm_dir), max_length=5, max_prompt_length=None)
    with pytest.raises(DataError, match="f.jsonl:4.*no room for the completion within max_length=5"):
        tight.encode(rec)


def test_lora_reference_is_the_base_model_with_adapters_disabled(tiny_lm_dir):
    adapter = CausalLMAdapter(pretrained=str(tiny_lm_dir), lora=LoraSettings(r=4))
    batch = adapter.collate([adapter.encode(r) for r in records()])
    with torch.no_grad():
        before = adapter.score(batch)
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
        after = adapter.score(batch)
        with adapter.reference():
            ref = adapter.score(batch)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(ref, before)
    assert adapter.ref_model is None  # no second copy in memory
    assert all("lora_" in k for k in adapter.trainable_state_dict())


def test_full_finetuning_keeps_a_frozen_copy(tiny_lm_dir):
    adapter = CausalLMAdapter(pretrained=str(tiny_lm_dir))
    assert all(not p.requires_grad for p in adapter.ref_model.parameters())
    batch = adapter.collate([adapter.encode(r) for r in records()])
    with torch.no_grad():
        for p in adapter.model.parameters():
            p.mul_(1.1)
        with adapter.reference():
            ref = adapter.score(batch)
        policy = adapter.score(batch)
    fresh = CausalLMAdapter(pretrained=str(tiny_lm_dir), reference_copy=False)
    assert fresh.ref_model is None and not fresh.has_reference
    with torch.no_grad():
        torch.testing.assert_close(ref, fresh.score(batch))
    assert not torch.allclose(policy, ref)
    with pytest.raises(RuntimeError, match="no reference model"):
        with fresh.reference():
            pass


def test_gradient_checkpointing_gives_the_same_gradients(tiny_lm_dir):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same LoRA init in both runs
        adapter = CausalLMAdapter(pretrained=str(tiny_lm_dir), lora=LoraSettings(r=4), gradient_checkpointing=checkpointing)
        torch.manual_seed(0)
        for name, p in adapter.model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
        adapter.model.train()
        batch = adapter.collate([adapter.encode(r) for r in records()])
        adapter.score(batch).sum().backward()
        grads.append({k: p.grad.clone() for k, p in adapter.model.named_parameters() if p.requires_grad})
    assert adapter._base_model().is_gradient_checkpointing
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-6)


def test_bf16_weights_and_autocast_score(tiny_lm_dir):
    adapter = CausalLMAdapter(pretrained=str(tiny_lm_dir), lora=LoraSettings(r=4), torch_dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in adapter.model.parameters() if p.requires_grad)
    assert any(p.dtype == torch.bfloat16 for p in adapter.model.parameters() if not p.requires_grad)
    batch = adapter.collate([adapter.encode(r) for r in records()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = adapter.score(batch)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    scores.sum().backward()
    assert all(p.grad is not None for p in adapter.model.parameters() if p.requires_grad)


def test_model_from_config_and_bad_arguments(tiny_lm_dir):
    adapter = CausalLMAdapter(config={"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "vocab_size": 320},
                              tokenizer=str(tiny_lm_dir))
    batch = adapter.collate([adapter.encode(r) for r in records(2)])
    assert adapter.score(batch).shape == (4,)
    with pytest.raises(ValueError, match="exactly one of"):
        CausalLMAdapter(pretrained=str(tiny_lm_dir), config={"model_type": "gpt2"})
