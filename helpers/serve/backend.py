"""Model backends for the course server: the protocol and llama.cpp's GGUF runner.

A backend turns chat messages into streamed text. :class:`LlamaCppBackend` runs a GGUF file
with llama-cpp-python and renders the chat template stored in that file inside jinja2's
immutable sandbox (the fix for CVE-2024-34359, template injection through a model file).

    >>> from helpers.serve.backend import LlamaCppBackend
    >>> backend = LlamaCppBackend("outputs/gguf/tiny/model-q4_k_m.gguf")
    >>> "".join(d for d in backend.chat(messages, max_tokens=32, temperature=0, top_p=1,
    ...                                  stop=[], deadline=None) if isinstance(d, str))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass
class ChatResult:
    """What a backend reports after its last delta: why it stopped, and token counts."""

    finish_reason: str = "stop"  # "stop", "length" (max_tokens or a full context) or "timeout"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Mean log-probability of the generated tokens (the answer's confidence), where the backend
    # computes it; None where it does not (llama.cpp without logits_all).
    mean_logprob: float | None = None


class Backend(Protocol):
    """A servable model: ``chat`` yields text deltas, then optionally one :class:`ChatResult`."""

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        deadline: float,
    ) -> Iterator[str | ChatResult]: ...


class RequestError(ValueError):
    """Raised by a backend for a request it cannot serve (e.g. a prompt longer than n_ctx): 400."""

    def __init__(self, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.code = code


def sandboxed_formatter(template: str, eos_token: str, bos_token: str, add_generation_prompt=True):
    """llama-cpp-python's Jinja2ChatFormatter: renders in jinja2's ImmutableSandboxedEnvironment."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(
        template=template,
        eos_token=eos_token,
        bos_token=bos_token,
        add_generation_prompt=add_generation_prompt,
    )


class LlamaCppBackend:
    """One GGUF file through llama-cpp-python, prompted with the chat template stored in it."""

    def __init__(self, gguf_path: str | Path, n_ctx: int = 2048, n_threads: int | None = None):
        from helpers.quantize.install import load_llama_cpp

        self.path = Path(gguf_path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"GGUF file not found: {self.path}. Export the model to GGUF first (notebook 05) "
                "and pass the file's path."
            )
        self.llm = load_llama_cpp().Llama(
            str(self.path), n_ctx=n_ctx, n_threads=n_threads, verbose=False
        )
        self._lock = threading.Lock()  # a llama.cpp context runs one generation at a time
        self._closing = threading.Event()
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(
                f"{self.path.name} has no tokenizer.chat_template. Convert the model from a "
                "directory whose tokenizer has a chat template (tokenizer.chat_template is set)."
            )
        # Llama() would also accept the template, but swaps in a built-in Python formatter when
        # it equals a known one (chatml, llama-3, ...) and falls back to llama-2 when missing;
        # building the formatter here makes the model's own template the one that renders.
        self.eos_id = self.llm.token_eos()
        self.eos_token = self._token_text(self.eos_id)
        bos_id = self.llm.metadata.get("tokenizer.ggml.bos_token_id")  # llama.cpp invents one
        self.bos_token = self._token_text(int(bos_id)) if bos_id is not None else ""
        self.formatter = sandboxed_formatter(template, self.eos_token, self.bos_token)
        self.stop_ids = {self.eos_id}
        self.stop_strings: list[str] = []
        self.end_of_turn = self._end_of_turn(template)
        if self.end_of_turn and self.end_of_turn != self.eos_token:
            ids = self.llm.tokenize(self.end_of_turn.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])
            else:
                self.stop_strings.append(self.end_of_turn)

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _end_of_turn(self, template: str) -> str:
        """What the template writes after an assistant answer, e.g. '<|im_end|>' or '<|eot_id|>'."""
        marker = "ANSWER-MARKER-7f3a"
        probe = sandboxed_formatter(template, self.eos_token, self.bos_token, False)
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
        try:
            after = probe(messages=turns).prompt.split(marker, 1)[1].split()
        except Exception:  # a template may refuse this conversation; the EOS stop still applies
            return ""
        return after[0] if after else ""

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for ``messages``, from the GGUF's template, ending with the reply cue."""
        try:
            return self.formatter(messages=messages).prompt
        except ValueError as exc:  # the template's raise_exception(...), e.g. roles must alternate
            raise RequestError(f"The model's chat template refused these messages: {exc}") from exc

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
        """Yield the answer's text as it is generated, then a ChatResult."""
        import llama_cpp

        with self._lock:
            if self._closing.is_set():
                raise RuntimeError(f"{self.path.name} was closed; load it again to serve it.")
            prompt = self.llm.tokenize(
                self.render_prompt(messages).encode(), add_bos=False, special=True
            )
            room = self.llm.n_ctx() - len(prompt)
            if room < 1:
                raise RequestError(
                    f"The prompt has {len(prompt)} tokens but the context holds "
                    f"{self.llm.n_ctx()}: shorten the conversation or load with a larger n_ctx.",
                    "context_length_exceeded",
                )
            stops = [s for s in (*stop, *self.stop_strings) if s]
            vocab = self.llm._model.vocab
            out: list[int] = []
            sent, finish, text = 0, "length", ""
            # Forget the previous request's tokens: llama-cpp-python would otherwise reuse the
            # common prefix and evaluate only the rest, in a different batch shape whose rounding
            # can flip a near-tie, so the same greedy request could get a different answer.
            self.llm.reset()
            # top_k=0 and min_p=0 switch llama.cpp's extra samplers off: OpenAI (and vLLM)
            # semantics, temperature and top_p only; temperature 0 samples greedily.
            tokens = self.llm.generate(
                prompt, temp=temperature, top_p=top_p, top_k=0, min_p=0.0, repeat_penalty=1.0
            )
            try:
                for token in tokens:
                    if token in self.stop_ids or llama_cpp.llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    out.append(token)
                    raw = self.llm.detokenize(out, prev_tokens=prompt)
                    text = raw.decode("utf-8", errors="ignore")  # an unfinished character waits
                    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        text, finish = text[:cut], "stop"
                        break
                    safe = len(text) - _stop_prefix_len(text, stops)
                    if safe > sent:
                        yield text[sent:safe]
                        sent = safe
                    if len(out) >= min(max_tokens, room) or self._closing.is_set():
                        break
                    if time.monotonic() >= deadline:
                        finish = "timeout"
                        break
            finally:
                tokens.close()
            if len(text) > sent:
                yield text[sent:]
            yield ChatResult(finish, len(prompt), len(out))

    def close(self) -> None:
        """Free the model's memory, once a running generation has stopped at its next token."""
        self._closing.set()
        with self._lock:  # freeing a context mid-generation would crash the process
            self.llm.close()


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that could begin a stop string (held back)."""
    return max(
        (n for s in stops for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), default=0
    )
