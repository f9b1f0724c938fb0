"""Chat templates: the course's own, TRL's training copies, and the form inference tools read.

TRL's assistant-only loss needs each assistant turn (content and end-of-turn token) wrapped in
``{% generation %}`` markers. The tiny and cpu-demo models get the course's templates, which have
them; hub models such as Qwen2.5-Instruct ship theirs without, and TRL 1.x keeps patched training
copies of known templates. :func:`prepare_tokenizer` installs the training form on *every*
tokenizer the course loads, so the data lesson, the template checks and the trainer all see the
same template. llama.cpp, vLLM and Ollama do not know the markers: :func:`inference_template`
strips them for export (the rendered text is identical).

    >>> from helpers.chat_templates import prepare_tokenizer
    >>> tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path))  # Qwen: TRL's copy
"""

from __future__ import annotations

import re

# ChatML, as Qwen uses it; assistant turns (content + end marker) are what TRL trains on.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Gemma's turn format (as in Gemma 3 instruct), given to the base model, which ships none.
# Gemma has no system role: a system message is prepended to the first user turn.
GEMMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' %}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set prefix = '' %}{%- set turns = messages %}{%- endif %}"
    "{%- for message in turns %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<start_of_turn>model\\n' }}"
    "{% generation %}{{- message['content'] + '<end_of_turn>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<start_of_turn>user\\n' + (prefix if loop.first else '') + message['content']"
    " + '<end_of_turn>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

# transformers' markers; TRL's has_generation_markers detects them, nothing removes them.
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def training_template(tokenizer) -> str | None:
    """The template TRL trains with: None if the tokenizer's own has markers, else TRL's copy.

    Raises ValueError with the fix when the template has no markers and TRL has no copy of it.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not template:
        raise ValueError("The tokenizer has no chat template; set tokenizer.chat_template first.")
    if has_generation_markers(template):
        return None
    try:  # TRL ships patched copies of some known templates (Qwen, Llama 3, Gemma 3, ...)
        return get_training_chat_template(tokenizer)
    except ValueError as exc:
        raise ValueError(
            "Training only on answers (assistant_only_loss) needs a chat template that wraps each "
            "assistant turn (content and end-of-turn token) in {% generation %}...{% endgeneration "
            "%}, and TRL has no patched copy of this one. Edit tokenizer.chat_template (see "
            "helpers.chat_templates.CHATML_TEMPLATE), or train on the final answer only "
            "(helpers.data's mode='last_turn')."
        ) from exc


def prepare_tokenizer(tokenizer):
    """Install the training form of the tokenizer's template (a no-op when it has markers)."""
    try:
        training = training_template(tokenizer)
    except ValueError:  # an unknown template: kept as it is; 02's checks and TRL will say so
        return tokenizer
    if training is not None:
        tokenizer.chat_template = training
    return tokenizer


def inference_template(template: str | None) -> str | None:
    """The chat template without transformers' training-only ``{% generation %}`` markers."""
    return None if template is None else _GENERATION_TAG.sub("", template)
