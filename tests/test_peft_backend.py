"""PeftBackend: adapters by name on one base, greedy like 04's evaluation, with confidence."""

import time

import pytest
import torch

from helpers.serve.backend import ChatResult, RequestError
from helpers.serve.peft_backend import PeftBackend

MESSAGES = [{"role": "user", "content": "我的订单还没到，帮我查一下"}]


def _adapter(base_dir, out, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("versions")
    dirs = {v: _adapter(tiny_dir, root / v, seed) for v, seed in (("r1", 1), ("r2", 2))}
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    return PeftBackend(model, tokenizer), dirs


def _answer(view, **kw):
    params = {"max_tokens": 12, "temperature": 0.0, "top_p": 1.0, "stop": [], "deadline": None}
    items = list(view.chat(MESSAGES, **{**params, **kw}))
    result = items[-1]
    assert isinstance(result, ChatResult)
    return "".join(items[:-1]), result


def test_versions_answer_like_generate_and_report_confidence(served):
    from peft import PeftModel

    from helpers.evaluation import generate_batch

    backend, dirs = served
    views = {v: backend.load_version(v, d) for v, d in dirs.items()}
    texts = {}
    for version, view in views.items():
        text, result = _answer(view)
        backend.model.set_adapter(version)
        expected = generate_batch(backend.model, backend.tokenizer, [MESSAGES], 12, progress=False)
        assert text == expected[0]  # the token loop is greedy exactly as 04 evaluates
        assert result.completion_tokens > 0 and result.mean_logprob < 0
        texts[version] = text
    assert texts["r1"] != texts["r2"]  # two versions really are two adapters
    base_text, _ = _answer(backend.base())
    assert isinstance(backend.model, PeftModel)
    with backend.model.disable_adapter():
        expected = generate_batch(backend.model, backend.tokenizer, [MESSAGES], 12, progress=False)
    assert base_text == expected[0]
    assert _answer(views["r1"])[0] == texts["r1"]  # switching back and forth is stateless


def test_stops_deadline_and_errors(served, tmp_path):
    backend, dirs = served
    view = backend.load_version("r1", dirs["r1"])
    full, _ = _answer(view)
    stop = full[3:5]
    cut, result = _answer(view, stop=[stop])
    assert result.finish_reason == "stop" and cut == full[: full.find(stop)]
    _, late = _answer(view, deadline=time.monotonic() - 1)
    assert late.finish_reason == "timeout" and late.completion_tokens == 1
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        backend.load_version("missing", tmp_path)
    with pytest.raises(RequestError, match="tokens"):
        too_long = [{"role": "user", "content": "很长 " * 5000}]
        list(view.chat(too_long, max_tokens=4, temperature=0, top_p=1, stop=[], deadline=None))


def test_sampling_respects_top_p():
    from helpers.serve.peft_backend import _choose

    logp = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    picks = {_choose(logp, 1.0, 0.5) for _ in range(50)}
    assert picks == {0}  # the nucleus holding 50% is the top token alone
    assert _choose(logp, 0.0, 1.0) == 0
