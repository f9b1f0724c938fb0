"""helpers: the code behind the notebooks of LLM 微调实战, one small module per stage.

    >>> from helpers.profiles import active_profile
    >>> profile = active_profile()  # COURSE_PROFILE overrides automatic detection

Modules: ``env`` (machine, hub, caches, disk), ``cpu`` (what this CPU runs), ``vram`` (VRAM
estimates), ``profiles``, ``rehearsal`` (GPU profiles rehearsed on CPU), ``models`` (tiny
builder, offline Gemma, hub loading), ``chat_templates``, ``data``, ``sft``, ``evaluation``,
``quantize``, ``resources`` (disk and memory before heavy steps), ``serve``, ``course``
(headless course runs, what each notebook needs), ``exercises``.
"""

__version__ = "0.1.0"
