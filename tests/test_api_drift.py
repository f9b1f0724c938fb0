"""API drift: every keyword argument the course passes to TRL / transformers / peft still exists.

Course notebooks break first when a library renames an argument (TRL 1.x and transformers 5.x
renamed many). This test reads the source of the helpers, the notebooks and bench/gpu_smoke.py
(which runs only on a GPU machine), finds calls to the libraries' config classes, trainers and
``generate``, and checks each keyword against the installed versions' signatures.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
from pathlib import Path

import peft
import pytest
import transformers
import trl

from helpers import models
from helpers.profiles import PROFILES

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = (transformers, peft, trl)
SCANNED = ("bench/gpu_smoke.py",)  # scripts scanned as well: the GPU smoke test runs nowhere else
COURSE_SUBCLASSES = {"CourseSFTTrainer": trl.SFTTrainer}
# Keywords that older tutorials use and the installed versions renamed or removed.
RENAMED = {
    "torch_dtype": "dtype (transformers 5)",
    "max_seq_length": "max_length (TRL SFTConfig)",
    "evaluation_strategy": "eval_strategy (transformers TrainingArguments)",
    "tokenizer": "processing_class (Trainer / SFTTrainer)",
    "max_prompt_length": "max_length (TRL 1.x DPOConfig: one limit for prompt + answer)",
    "max_completion_length": "max_length (TRL 1.x DPOConfig: one limit for prompt + answer)",
    "rpo_alpha": 'loss_type=["sigmoid", "sft"] (TRL 1.x DPOConfig)',
    "ref_adapter_name": 'nothing: TRL 1.x names the reference adapter "ref" itself',
}
TRAINER_NAMES = {"from_pretrained", "SFTTrainer", "Trainer", "SFTConfig", "DPOConfig", "DPOTrainer"}


def _python_line(line: str) -> str:
    """A notebook line as Python: an IPython magic or shell escape becomes ``pass``, indented.

    Blank lines stay blank: a ``pass`` at column 0 would end the indented block around it.
    """
    body = line.lstrip()
    return line[: len(line) - len(body)] + "pass" if body.startswith(("!", "%")) else line


def _sources() -> list[tuple[str, str]]:
    """(label, python source) for every helper module, notebook code cell and SCANNED script."""
    paths = [*sorted(REPO.glob("helpers/**/*.py")), *(REPO / p for p in SCANNED)]
    found = [(str(p.relative_to(REPO)), p.read_text()) for p in paths]
    for path in sorted(REPO.glob("notebooks/**/*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                code = "\n".join(_python_line(ln) for ln in lines)
                found.append((f"{path.relative_to(REPO)} cell {i}", code))
    return found


def _allowed_keywords(obj) -> set[str] | None:
    """Explicit keyword names of a class or function, or None if it cannot be checked.

    Dataclass fields and explicit ``__init__`` parameters both count (transformers'
    BitsAndBytesConfig is a dataclass with a hand-written ``__init__``).
    """
    names = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return names or None
    return names | {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _library_callable(name: str):
    """A config class, arguments class, trainer or callback of the libraries, by name.

    The course's own subclasses are checked against what they extend (their constructor is
    the library's): ``CourseSFTTrainer`` is TRL's ``SFTTrainer``.
    """
    if name in COURSE_SUBCLASSES:
        return COURSE_SUBCLASSES[name]
    if not name.endswith(("Config", "Arguments", "Trainer", "Callback")):
        return None
    for library in LIBRARIES:
        obj = getattr(library, name, None)
        if obj is not None:
            return obj
    return None


def _generate_keywords() -> set[str]:
    """What ``model.generate`` accepts: its parameters plus every GenerationConfig field."""
    params = _allowed_keywords(transformers.GenerationMixin.generate) or set()
    fields = set(transformers.GenerationConfig().to_dict())
    return params | fields | {"input_ids", "attention_mask", "pad_token_id", "eos_token_id"}


def _llama_cpp_generate_keywords() -> set[str]:
    """What llama-cpp-python's ``Llama.generate`` accepts (the course calls it as llm.generate)."""
    import llama_cpp

    return _allowed_keywords(llama_cpp.Llama.generate) or set()


def _calls():
    for label, source in _sources():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                receiver = getattr(getattr(func, "value", None), "attr", None)
                if name == "generate" and receiver == "llm":  # a llama_cpp.Llama, not transformers
                    name = "Llama.generate"
                keywords = [k.arg for k in node.keywords if k.arg is not None]
                if name and keywords:
                    yield label, node.lineno, name, keywords


def test_the_scan_sees_the_course_code():
    names = {name for _, _, name, _ in _calls()}
    assert "generate" in names  # helpers.models.generate_reply
    assert "from_pretrained" in names
    # 03 builds these in plain view; helpers.sft adds the early-stopping callback
    assert {"LoraConfig", "SFTConfig", "CourseSFTTrainer", "EarlyStoppingCallback"} <= names
    assert {"DPOConfig", "DPOTrainer"} <= names  # 10 builds them in plain view, helpers.dpo too
    labels = {label for label, _, _, _ in _calls()}
    assert set(SCANNED) <= labels


def test_keywords_passed_to_library_classes_exist():
    generate_ok = _generate_keywords()
    llama_generate_ok = _llama_cpp_generate_keywords()
    problems = []
    for label, line, name, keywords in _calls():
        if name == "generate":
            allowed = generate_ok
        elif name == "Llama.generate":
            allowed = llama_generate_ok
        else:
            target = _library_callable(name)
            allowed = _allowed_keywords(target) if target is not None else None
        if allowed is None:
            continue
        problems += [f"{label}:{line} {name}({k}=...)" for k in keywords if k not in allowed]
    assert not problems, "unknown keyword arguments:\n" + "\n".join(problems)


def test_no_renamed_keywords_anywhere():
    found = [
        f"{label}:{line} {name}({k}=...) -> use {RENAMED[k]}"
        for label, line, name, keywords in _calls()
        for k in keywords
        if k in RENAMED and name in TRAINER_NAMES
    ]
    assert not found, "\n".join(found)


def test_kwargs_dicts_the_helpers_build_match_the_classes():
    bnb_allowed = _allowed_keywords(transformers.BitsAndBytesConfig)
    for profile in PROFILES.values():
        assert set(models.bnb_config_kwargs(profile)) <= bnb_allowed
    assert set(models.TINY_CONFIG) <= _allowed_keywords(transformers.Qwen2Config)


@pytest.mark.parametrize("bad", ["max_seq_length", "evaluation_strategy"])
def test_the_checker_catches_a_renamed_argument(bad):
    """The checker itself must be able to fail: old names are rejected by the signatures."""
    allowed = _allowed_keywords(trl.SFTConfig)
    assert bad not in allowed and "max_length" in allowed


@pytest.mark.parametrize("bad", ["max_prompt_length", "max_completion_length", "rpo_alpha"])
def test_the_checker_catches_a_removed_dpo_argument(bad):
    """Older DPO tutorials pass these; TRL 1.x's DPOConfig has none of them."""
    allowed = _allowed_keywords(trl.DPOConfig)
    assert bad not in allowed and {"max_length", "beta", "loss_type"} <= allowed


def test_what_helpers_dpo_relies_on_in_dpo_trainer_still_exists():
    """helpers.dpo: a PeftModel and no ref_model give a frozen "ref" copy of the adapter (the
    reference without a second base model), and reward_history reads these logged metrics."""
    source = inspect.getsource(trl.DPOTrainer)
    assert 'model.add_adapter("ref", default_config)' in source
    assert 'adapter_name="ref" if "ref" in' in source  # the reference forward uses it
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert f'"{key}"' in source, key
    assert {"ipo", "sft", "sigmoid"} <= set(inspect.getsource(trl.DPOConfig).split("'"))


def test_the_hooks_course_sft_trainer_overrides_still_exist():
    """helpers/sft_trainer.py overrides compute_loss and reads TRL's config and metrics."""
    params = ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]
    assert list(inspect.signature(trl.SFTTrainer.compute_loss).parameters) == params
    fields = {f.name for f in dataclasses.fields(trl.SFTConfig)}
    assert {"average_tokens_across_devices", "loss_type", "padding_free"} <= fields
    assert "nll" in inspect.getsource(trl.SFTConfig)  # the loss the course path reproduces
    source = inspect.getsource(trl.SFTTrainer.compute_loss)
    for name in ("entropy", "mean_token_accuracy", "_total_train_tokens", "num_items_in_batch"):
        assert name in source, name  # CourseSFTTrainer logs these as TRL does


def test_what_notebook_11_relies_on_in_accelerate_deepspeed_and_the_trainer_still_exists():
    """helpers.multi_gpu reads the configs through accelerate launch's own steps and plugins;
    helpers.train_cli and 11 set these SFTConfig fields by name (``--set``, overrides)."""
    from accelerate.commands import launch
    from accelerate.utils import (
        DeepSpeedPlugin,
        FullyShardedDataParallelPlugin,
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
    )
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    for step in (launch._validate_launch_command, prepare_deepspeed_cmd_env, prepare_multi_gpu_env):
        assert list(inspect.signature(step).parameters) == ["args"], step
    assert "deepspeed_fields_from_accelerate_config" in inspect.getsource(launch.launch_command)
    finalize = inspect.signature(HfTrainerDeepSpeedConfig.trainer_config_finalize).parameters
    assert list(finalize) == ["self", "args", "model", "num_training_steps"]
    fsdp = {f.name for f in dataclasses.fields(FullyShardedDataParallelPlugin)}
    assert {"fsdp_version", "reshard_after_forward", "state_dict_type"} <= fsdp
    deepspeed = {f.name for f in dataclasses.fields(DeepSpeedPlugin)}
    assert {"zero_stage", "offload_optimizer_device", "offload_param_device"} <= deepspeed
    assert {"zero3_init_flag", "zero3_save_16bit_model", "gradient_clipping"} <= deepspeed
    fields = {f.name for f in dataclasses.fields(trl.SFTConfig)}
    by_name = {"activation_checkpointing_kwargs", "ddp_find_unused_parameters", "ddp_static_graph"}
    assert by_name | {"fsdp", "fsdp_config", "eval_on_start", "save_strategy"} <= fields
    # transformers asks DDP to search for unused parameters on a PeftModel (11, section 4)
    source = inspect.getsource(transformers.Trainer._build_accelerator_args)
    assert "isinstance(self.model, PreTrainedModel)" in source and "find_unused = True" in source


def test_what_helpers_jobs_relies_on_in_the_trainer_starlette_and_openai_still_exists():
    """train_cli's StopOnSignal/EventsFile callbacks, the upload's form limits, and the client
    calls notebook 08 and tests/test_jobs.py make."""
    import openai
    from starlette.requests import Request
    from transformers import TrainerControl, TrainerState

    control = {f.name for f in dataclasses.fields(TrainerControl)}
    assert {"should_save", "should_training_stop"} <= control
    state = {f.name for f in dataclasses.fields(TrainerState)}
    assert {"global_step", "max_steps", "num_input_tokens_seen"} <= state
    for hook in ("on_train_begin", "on_log", "on_save", "on_step_end"):
        assert hasattr(transformers.TrainerCallback, hook), hook
    assert {"max_files", "max_fields"} <= set(inspect.signature(Request.form).parameters)
    jobs = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9").fine_tuning.jobs
    for call in (jobs.create, jobs.list, jobs.retrieve, jobs.cancel, jobs.list_events):
        assert call.__name__ in dir(jobs)
    assert {"after", "limit"} <= set(inspect.signature(jobs.checkpoints.list).parameters)
    create = set(inspect.signature(jobs.create).parameters)
    assert {"method", "hyperparameters", "suffix", "seed", "metadata", "validation_file"} <= create


def test_what_the_training_page_passes_to_gradio_still_exists():
    """helpers/jobs/ui.py's ``gr.*`` components and keywords (Gradio renames between majors)."""
    import gradio as gr

    source = (REPO / "helpers" / "jobs" / "ui.py").read_text()
    checked, problems = set(), []
    for node in ast.walk(ast.parse(source)):
        func = getattr(node, "func", None)
        if not (isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "gr"):
            continue
        target = getattr(gr, func.attr, None)
        if target is None:
            problems.append(f"gr.{func.attr} is gone")
            continue
        allowed = _allowed_keywords(target) or set()
        problems += [f"gr.{func.attr}({k.arg}=...)" for k in node.keywords if k.arg not in allowed]
        checked.add(func.attr)
    assert {"Timer", "LinePlot", "File", "Slider", "Radio", "Number", "Dropdown"} <= checked
    assert not problems, "\n".join(problems)
    assert callable(gr.Timer.tick) and callable(gr.Slider.change)  # the page's events


def test_what_helpers_methods_relies_on_in_peft_and_the_trainer_still_exists():
    """09's methods: the peft config fields each method sets, the adapter switch the KL remedy
    uses as its reference, the Trainer's optimizer argument (progressive unfreezing) and the
    schedulers it draws."""
    from helpers import methods

    kinds = {
        "lora": peft.LoraConfig,
        "prefix": peft.PrefixTuningConfig,
        "prompt": peft.PromptTuningConfig,
        "ia3": peft.IA3Config,
    }
    ours = {"alpha_per_r"}  # helpers.methods turns it into lora_alpha
    for method in methods.METHODS.values():
        if method.kind in kinds:
            fields = {f.name for f in dataclasses.fields(kinds[method.kind])}
            assert set(method.options) - ours <= fields, (method.name, method.options)
    assert {"use_rslora", "use_dora", "lora_alpha", "target_modules"} <= {
        f.name for f in dataclasses.fields(peft.LoraConfig)
    }
    assert peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2).is_prompt_learning
    assert hasattr(peft.PeftModel, "disable_adapter")
    assert "optimizers" in inspect.signature(transformers.Trainer.__init__).parameters
    assert "scheduler_specific_kwargs" in inspect.signature(transformers.get_scheduler).parameters
    names = {s.value for s in transformers.SchedulerType}
    assert {"linear", "constant", "cosine", "inverse_sqrt", "polynomial"} <= names
