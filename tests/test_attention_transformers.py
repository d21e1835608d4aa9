"""attn_implementation="sparseops" in transformers models (tiny random configs, no download): dense
pattern equals SDPA (causal decoder with GQA, bidirectional encoder, generation with a KV cache), the
block kernel is the one called, padding masks fall back to SDPA, a windowed pattern changes the result."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparseops.attention.transformers_integration as integ  # noqa: E402
from sparseops.attention.transformers_integration import register_transformers  # noqa: E402


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = integ.block_sparse_attention

    def spy(*args, **kwargs):
        seen.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(integ, "block_sparse_attention", spy)
    return seen


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_llama_dense_pattern_matches_sdpa_and_generates(calls):
    name = register_transformers("sparseops_test_dense", block_size=16)
    model = _llama()
    ids = torch.randint(0, 100, (2, 77))
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        ref = model(ids).logits
        gen_ref = model.generate(ids, max_new_tokens=4, do_sample=False)
        model.set_attn_implementation(name)
        out = model(ids).logits
        assert len(calls) == 2  # one per layer
        gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(gen, gen_ref)
    assert any(shape[2] == 1 for shape in calls)  # decode steps ran the kernel too


def test_bert_encoder_matches_sdpa_and_padding_falls_back(calls):
    name = register_transformers("sparseops_test_bert", block_size=32)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 50))
    pad = torch.ones(2, 50, dtype=torch.long)
    pad[1, 40:] = 0
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        ref, ref_pad = model(ids).last_hidden_state, model(ids, attention_mask=pad).last_hidden_state
        model.set_attn_implementation(name)
        out = model(ids).last_hidden_state
        n = len(calls)
        out_pad = model(ids, attention_mask=pad).last_hidden_state
    assert n == 2 and len(calls) == 2  # the padded call went to SDPA
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_pad, ref_pad, atol=1e-4, rtol=1e-4)


def test_window_pattern_is_applied(calls):
    name = register_transformers("sparseops_test_window", block_size=16, window=8)
    model = _llama()
    ids = torch.randint(0, 100, (1, 64))
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        ref = model(ids).logits
        model.set_attn_implementation(name)
        out = model(ids).logits
    assert calls and not torch.allclose(out[:, 20:], ref[:, 20:], atol=1e-3)
    torch.testing.assert_close(out[:, :9], ref[:, :9], atol=1e-4, rtol=1e-4)  # the window covers them fully
