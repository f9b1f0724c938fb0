"""Serving LoRA adapters straight from transformers + peft: versions hot-loaded on one base.

Notebook 06 serves a merged GGUF file. Notebook 07 serves *versions* of the adapter (round 1,
round 2, a canary beside the stable one), so it keeps the base model loaded once and loads
each adapter beside it by name, the way vLLM's multi-LoRA serving does on a GPU
(``--lora-modules``, or its runtime ``/v1/load_lora_adapter``). A new version is served without
a restart and without merging or converting anything:

    >>> backend = PeftBackend(base_model, tokenizer)
    >>> tuned = backend.load_version("r1", "outputs/adapters/cpu-demo")  # a Backend for r1
    >>> start_server({"r1": tuned}, registry=..., load_version=backend.load_version)

Every answer reports its confidence: the mean log-probability of the tokens it chose
(``ChatResult.mean_logprob``), which 07 watches for drift and uses to mine bad cases.
Decoding is a plain token loop with the KV cache (not ``generate``) so that text streams out,
the deadline and a departed client stop it at the next token, and each token's probability is
at hand; at temperature 0 it is greedy, like the evaluation in 04.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from helpers.serve.backend import ChatResult, RequestError, _stop_prefix_len


class PeftBackend:
    """One base model and any number of LoRA adapters on it; one generation at a time."""

    def __init__(self, model, tokenizer, max_context: int | None = None):
        self.model = model  # a PreTrainedModel, or a PeftModel that already holds adapters
        self.tokenizer = tokenizer
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", 2048)
        self._lock = threading.Lock()  # one model, one generation at a time, whatever version
        eos = model.generation_config.eos_token_id
        self.stop_ids = set([eos] if isinstance(eos, int) else list(eos or []))
        if tokenizer.eos_token_id is not None:
            self.stop_ids.add(tokenizer.eos_token_id)

    def load_version(self, version: str, adapter_dir: str | Path) -> AdapterView:
        """Load the adapter in ``adapter_dir`` under the name ``version``; a Backend serving it.

        The signature is the one the server's ``load_version`` hook expects: it calls this the
        first time a version is asked for, so a registered version is served without a restart.
        """
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"No adapter in {adapter_dir} (adapter_config.json is missing): train it first "
                "(notebook 03, or 07's round 2) or register the folder the adapter was saved to."
            )
        with self._lock:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(
                    self.model, adapter_dir, adapter_name=_adapter_name(version)
                )
            elif _adapter_name(version) not in self.model.peft_config:
                self.model.load_adapter(adapter_dir, adapter_name=_adapter_name(version))
            self.model.eval()
        return AdapterView(self, version)

    def base(self) -> AdapterView:
        """A Backend serving the base model (every adapter disabled)."""
        return AdapterView(self, None)

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            ids = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        except Exception as exc:  # the template's raise_exception(...), e.g. roles must alternate
            raise RequestError(f"The model's chat template refused these messages: {exc}") from exc
        if len(ids) >= self.max_context:
            raise RequestError(
                f"The prompt has {len(ids)} tokens but the model holds {self.max_context}: "
                "shorten the conversation.",
                "context_length_exceeded",
            )
        return list(ids)

    def stream(self, version, messages, *, max_tokens, temperature, top_p, stop, deadline):
        """Text deltas, then a ChatResult with the mean log-probability of the chosen tokens."""
        import contextlib

        import torch

        prompt = self._prompt_ids(messages)
        max_tokens = min(max_tokens, self.max_context - len(prompt))
        with self._lock:
            if version is None:
                adapters = getattr(self.model, "disable_adapter", contextlib.nullcontext)()
            else:
                self.model.set_adapter(_adapter_name(version))
                adapters = contextlib.nullcontext()
            with adapters, torch.inference_mode():
                yield from self._decode(
                    prompt, max_tokens, temperature, top_p, [s for s in stop if s], deadline
                )

    def _decode(self, prompt, max_tokens, temperature, top_p, stops, deadline):
        import torch

        device = self.model.device
        ids = torch.tensor([prompt], device=device)
        cache, out, logprobs = None, [], []
        sent, text, finish = 0, "", "length"
        for _ in range(max_tokens):
            result = self.model(input_ids=ids, cache=cache, use_cache=True)  # transformers 5
            cache = result.cache
            logp = torch.log_softmax(result.logits[0, -1].float(), dim=-1)
            token = _choose(logp, temperature, top_p)
            if token in self.stop_ids:
                finish = "stop"
                break
            out.append(token)
            logprobs.append(float(logp[token]))
            ids = torch.tensor([[token]], device=device)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                break
            # hold back half a character (U+FFFD until its next token) and a possible stop start
            safe = len(text.rstrip("\ufffd")) - _stop_prefix_len(text, stops)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
            if deadline is not None and time.monotonic() >= deadline:
                finish = "timeout"
                break
        if len(text) > sent:
            yield text[sent:]
        mean = sum(logprobs) / len(logprobs) if logprobs else None
        yield ChatResult(finish, len(prompt), len(out), mean)


def _adapter_name(version: str) -> str:
    """peft's name for a version: torch module names cannot hold '.' (ft:Qwen2.5-…:… names do)."""
    return version.replace(".", "_")


def _choose(logp, temperature: float, top_p: float) -> int:
    """Greedy at temperature 0; otherwise sample from the tempered, nucleus-cut distribution."""
    import torch

    if temperature == 0:
        return int(logp.argmax())
    probs = torch.softmax(logp / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1))


class AdapterView:
    """The Backend the server calls for one version (``None``: the base model)."""

    def __init__(self, owner: PeftBackend, version: str | None):
        self.owner, self.version = owner, version

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        deadline: float,
    ) -> Iterator[str | ChatResult]:
        return self.owner.stream(
            self.version,
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            stop=stop,
            deadline=deadline,
        )

    def close(self) -> None:
        """Nothing to free per version: the base model belongs to the notebook."""

    def __repr__(self) -> str:
        return f"AdapterView({self.version or 'base'})"
