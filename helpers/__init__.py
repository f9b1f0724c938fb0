"""helpers: the code behind the notebooks of LLM 微调实战, one small module per stage.

    >>> from helpers.profiles import active_profile
    >>> profile = active_profile()  # COURSE_PROFILE overrides automatic detection

Modules: ``env`` (machine, hub, caches, disk), ``vram`` (memory estimates), ``profiles``,
``models`` (tiny builder, offline Gemma, hub loading), ``course`` (headless course runs).
"""

__version__ = "0.1.0"
