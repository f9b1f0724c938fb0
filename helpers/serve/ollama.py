"""Ollama Modelfiles for the course's GGUF exports, so a learner can run the tuned model locally.

A Modelfile tells Ollama which GGUF to load, how to turn chat messages into the prompt the
model was trained on (a Go template), where a turn ends (stop strings) and default sampling
parameters. The course trains two chat formats, ChatML (Qwen, the tiny model) and Gemma 3's;
:func:`template_kind` tells them apart from a tokenizer's chat template.

    >>> from helpers.serve.ollama import modelfile
    >>> print(modelfile("tuned-q4_k_m.gguf", template_kind="chatml").splitlines()[0])
    FROM ./tuned-q4_k_m.gguf

Then, in the Modelfile's folder: ``ollama create tuned -f Modelfile`` and ``ollama run tuned``.

Some chat templates add a system prompt of their own when a conversation has none (Qwen2.5's:
"You are Qwen, created by Alibaba Cloud. ..."); training, llama.cpp and vLLM all render it.
:func:`default_system` finds that text, and the Modelfile sets it as ``SYSTEM``, which Ollama
puts first exactly when a request brings no system message, so Ollama renders the same prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Ollama Go templates over .Messages, rendering what helpers.models.CHATML_TEMPLATE and
# GEMMA_TEMPLATE render with add_generation_prompt=True. Ollama puts a Modelfile SYSTEM (or a
# request's system message) into .Messages as a "system" message, and adds BOS itself.
CHATML_GO_TEMPLATE = (
    "{{ range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)

# Gemma has no system role: the system text goes in front of the first user turn, as in
# Gemma 3's own template; assistant turns are "model" turns. No {{- }} trimming: it would eat
# the newlines after <end_of_turn>.
GEMMA_GO_TEMPLATE = (
    '{{ $system := "" }}{{ range .Messages }}'
    '{{ if eq .Role "system" }}{{ $system = .Content }}'
    '{{ else if eq .Role "assistant" }}<start_of_turn>model\n'
    "{{ .Content }}<end_of_turn>\n"
    "{{ else }}<start_of_turn>user\n"
    '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>\n'
    "{{ end }}{{ end }}<start_of_turn>model\n"
)

TEMPLATES = {"chatml": CHATML_GO_TEMPLATE, "gemma": GEMMA_GO_TEMPLATE}
# Where a turn ends; generation must stop there (the ChatML start marker too, as a safety net).
STOP_STRINGS = {"chatml": ("<|im_end|>", "<|im_start|>"), "gemma": ("<end_of_turn>",)}
# The turn markers that identify each format in a Hugging Face chat template.
_MARKERS = {"chatml": "<|im_start|>", "gemma": "<start_of_turn>"}
DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0}  # greedy, as the course evaluates
# Stand-ins for a conversation's texts while probing a chat template (default_system).
_PROBE_SYSTEM, _PROBE_USER = "SYSTEM-PROBE-5c1d", "USER-PROBE-5c1d"


def template_kind(chat_template: str) -> str:
    """'chatml' or 'gemma': the chat format a tokenizer's chat template (a Jinja string) renders."""
    if not isinstance(chat_template, str) or not chat_template.strip():
        raise ValueError(
            "Expected the tokenizer's chat template as a string, got "
            f"{type(chat_template).__name__}. Pass tokenizer.chat_template; if it is None, set "
            "one first (helpers.models.CHATML_TEMPLATE or GEMMA_TEMPLATE)."
        )
    found = [kind for kind, marker in _MARKERS.items() if marker in chat_template]
    if len(found) == 1:
        return found[0]
    known = ", ".join(f"{kind!r} ({marker})" for kind, marker in _MARKERS.items())
    what = "markers of both" if found else "none of the turn markers of"
    raise ValueError(
        f"Unknown chat template: it contains {what} the formats this course knows: {known}. "
        "Pass template_kind= explicitly if you know the format, or write the Modelfile's "
        "TEMPLATE by hand (Ollama docs: 'Modelfile' -> 'TEMPLATE')."
    )


def default_system(chat_template: str) -> str | None:
    """The system prompt ``chat_template`` adds to a conversation that has none, else None.

    It renders one user turn with a probe system message and without one, in transformers'
    sandboxed renderer (the one training used); the text that takes the probe's place is it.
    """
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(messages: list[dict[str, str]]) -> str:
        return render_jinja_template([messages], chat_template=chat_template)[0][0]

    user = [{"role": "user", "content": _PROBE_USER}]
    without = render(user)
    try:
        with_system = render([{"role": "system", "content": _PROBE_SYSTEM}, *user])
    except jinja2.TemplateError:  # a template without a system role may refuse one
        return None
    before, found, after = with_system.partition(_PROBE_SYSTEM)
    if not found or len(without) < len(before) + len(after):
        return None
    if not (without.startswith(before) and without.endswith(after)):
        return None  # no system turn without a system message (ChatML, Gemma)
    return without[len(before) : len(without) - len(after)] or None


def _check_kind(kind: str) -> str:
    """The kind, or a ValueError naming the known kinds."""
    if kind not in TEMPLATES:
        raise ValueError(
            f"template_kind={kind!r} is not one of {sorted(TEMPLATES)}; "
            "template_kind(tokenizer.chat_template) tells which one a model uses."
        )
    return kind


def _param_value(value: Any) -> str:
    """A PARAMETER value as Ollama reads it: strings quoted, booleans lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    raise TypeError(f"PARAMETER values must be str, int, float or bool, got {value!r}")


def _from_ref(gguf_path: str | os.PathLike, modelfile_dir: str | os.PathLike | None) -> str:
    """The FROM path of the GGUF, relative to the folder the Modelfile is written to."""
    gguf = Path(gguf_path)
    if gguf.suffix.lower() != ".gguf":
        raise ValueError(
            f"{gguf} is not a .gguf file. Ollama imports GGUF files: export one first "
            "(helpers.quantize) and pass its path."
        )
    if modelfile_dir is None:
        return f"./{gguf.name}"
    rel = Path(os.path.relpath(gguf.resolve(), Path(modelfile_dir).resolve())).as_posix()
    return rel if rel.startswith("../") else f"./{rel}"


def modelfile(
    gguf_path: str | os.PathLike,
    *,
    template_kind: str,
    chat_template: str | None = None,
    system: str | None = None,
    params: Mapping[str, Any] | None = None,
    modelfile_dir: str | os.PathLike | None = None,
) -> str:
    """The text of an Ollama Modelfile for ``gguf_path`` (FROM relative to ``modelfile_dir``).

    Without ``system``, the SYSTEM is ``chat_template``'s own default (:func:`default_system`).
    """
    kind = _check_kind(template_kind)
    merged: dict[str, Any] = {**DEFAULT_PARAMS, **(params or {})}
    if "stop" in merged:
        raise ValueError(
            f"params may not set 'stop': the {kind} format stops at {STOP_STRINGS[kind]}, "
            "which the Modelfile always sets."
        )
    comment = None
    if system is None and chat_template is not None:
        system = default_system(chat_template)
        comment = "# What the chat template adds to a conversation without a system message"
    lines = [f"FROM {_from_ref(gguf_path, modelfile_dir)}", ""]
    lines.append(f'TEMPLATE """{TEMPLATES[kind]}"""')
    lines.append("")
    lines += [f"PARAMETER stop {_param_value(stop)}" for stop in STOP_STRINGS[kind]]
    lines += [f"PARAMETER {key} {_param_value(value)}" for key, value in merged.items()]
    if system is not None:
        if '"""' in system:
            raise ValueError('The system prompt may not contain """ (it ends a Modelfile block).')
        lines += ["", *([comment] if comment else []), f'SYSTEM """{system}"""']
    return "\n".join(lines) + "\n"


def write_modelfile(
    gguf_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, **kw: Any
) -> Path:
    """Writes ``<out_dir>/Modelfile`` (default: next to the GGUF) for ``gguf_path``; its path.

    The chat template comes from the GGUF file unless ``chat_template=`` is given.
    """
    gguf = Path(gguf_path)
    if not gguf.is_file():
        raise FileNotFoundError(
            f"No GGUF file at {gguf}. Export the model first (helpers.quantize) and pass the "
            "path of the .gguf file it wrote."
        )
    if "chat_template" not in kw:
        from helpers.quantize import gguf_info

        kw["chat_template"] = gguf_info(gguf)["chat_template"]
    folder = Path(out_dir) if out_dir is not None else gguf.parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Modelfile"
    path.write_text(modelfile(gguf, modelfile_dir=folder, **kw), encoding="utf-8")
    return path
