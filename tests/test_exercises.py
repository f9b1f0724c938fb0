"""Exercise checks: unanswered returns False, wrong answers fail with a hint, right ones pass."""

import pytest

from helpers import exercises


def test_unanswered_exercises_are_not_failures(capsys):
    assert exercises.check_00_1(None) is False
    assert "还没有作答" in capsys.readouterr().out


def test_00_1_reference_is_the_longest_fitting_sequence():
    # With TRL's fused LM head (no full logits) activations limit the t4 plan: 8192 fits a
    # T4 (about 10.8 GB), 16384 does not (about 19.2 GB). Full logits made it 1024.
    best = exercises.t4_longest_sequence()
    assert best == 8192
    assert exercises.t4_fits(best) and not exercises.t4_fits(best * 2)
    assert exercises.check_00_1(best)
    with pytest.raises(AssertionError, match="超过了 15.0 GB"):
        exercises.check_00_1(best * 2)
    with pytest.raises(AssertionError, match="更长的也放得下"):
        exercises.check_00_1(1024)
    with pytest.raises(AssertionError, match="中选"):
        exercises.check_00_1(8000)


def test_00_2_accepts_the_renamed_folder_only():
    right = "/root/autodl-tmp/modelscope/models/Qwen/Qwen2___5-0___5B-Instruct"
    assert exercises.check_00_2(right + "/")
    with pytest.raises(AssertionError, match="___"):
        exercises.check_00_2("/root/autodl-tmp/modelscope/models/Qwen/Qwen2.5-0.5B-Instruct")


def test_01_1_wants_the_normalised_roles():
    assert exercises.check_01_1(list(exercises.SHAREGPT_MESSAGES))
    wrong = [dict(m) for m in exercises.SHAREGPT_MESSAGES]
    wrong[1]["role"] = "human"
    with pytest.raises(AssertionError, match="human→user"):
        exercises.check_01_1(wrong)


def test_01_2_counts_against_trl(tiny_dir):
    from transformers import AutoTokenizer

    from helpers.data import load_split, loss_mask

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    train = load_split("train")
    sample = {"messages": train[0]["messages"] + train[1]["messages"][1:]}
    right = sum(loss_mask(sample, tokenizer, "last_turn")[1])
    assert exercises.check_01_2(right, sample, tokenizer)
    with pytest.raises(AssertionError, match="提示"):
        exercises.check_01_2(right + 1, sample, tokenizer)


def _lora_step(model, batch, config) -> dict:
    """What 02 练习 2 asks the learner to measure: peft's count, one step's time, its loss."""
    import time

    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    trainable = peft_model.get_nb_trainable_parameters()[0]
    peft_model.train()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        loss = peft_model(**batch).loss
        loss.backward()
        times.append(time.perf_counter() - start)
        peft_model.zero_grad(set_to_none=True)
    peft_model.unload()
    model.eval()
    return {"trainable": trainable, "seconds": min(times), "loss": loss.item()}


@pytest.fixture
def lora_experiment(tiny_dir, request):
    """02 练习 2 on the tiny model (16-bit, or 4-bit through bitsandbytes' CPU path)."""
    from dataclasses import replace

    from helpers import models, sft
    from helpers.profiles import get_profile

    profile = replace(get_profile("tiny"), method=request.param)
    model, tokenizer = models.load_model(profile, path=tiny_dir)
    rows, _ = sft.training_rows(profile)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows[:4]]
    batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    def run(**overrides):
        config = sft.lora_config(profile, **overrides)
        return config, _lora_step(model, batch, config)

    return model, profile, run


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("lora_experiment", ["lora", "qlora"], indirect=True)
def test_02_2_passes_a_measured_change_of_targets(lora_experiment):
    model, profile, run = lora_experiment
    _, default = run()
    config, mine = run(target_modules=["q_proj", "v_proj"])
    assert mine["trainable"] < default["trainable"] and mine["loss"] == default["loss"]
    answer = {"config": config, "default": default, "mine": mine}
    assert exercises.check_02_2(None, model, profile) is False
    assert exercises.check_02_2(answer, model, profile)
    wrong = {**answer, "mine": {**mine, "trainable": mine["trainable"] + 1}}
    with pytest.raises(AssertionError, match="get_nb_trainable_parameters"):
        exercises.check_02_2(wrong, model, profile)
    cold = {**answer, "default": {**default, "seconds": 100 * mine["seconds"]}}
    with pytest.raises(AssertionError, match="synchronize"):  # a warm-up pass timed, say
        exercises.check_02_2(cold, model, profile)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("lora_experiment", ["lora"], indirect=True)
def test_02_2_fails_when_the_default_is_left_unchanged(lora_experiment):
    model, profile, run = lora_experiment
    config, default = run()
    _, again = run()
    with pytest.raises(AssertionError, match="和 03 默认的一样"):
        exercises.check_02_2({"config": config, "default": default, "mine": again}, model, profile)
    alpha_only, _ = run(lora_alpha=4 * profile.lora_r)  # same adapters, only scaled
    with pytest.raises(AssertionError, match="lora_alpha"):
        exercises.check_02_2(
            {"config": alpha_only, "default": default, "mine": again}, model, profile
        )
    rank, bigger = run(r=4 * profile.lora_r)  # a rank change passes too
    assert exercises.check_02_2(
        {"config": rank, "default": default, "mine": bigger}, model, profile
    )


def test_01_3_measures_a_lower_near_duplicate_threshold(capsys):
    from helpers.data import load_split

    rows = load_split("train")[:300]  # clean rows: nothing is a near-duplicate at 0.7
    measured = exercises.near_dup_extra_removed(rows, 0.5)
    assert measured["extra_removed"] > 0  # lower threshold, more rows removed
    assert exercises.check_01_3(None, None, rows) is False
    assert exercises.check_01_3(0.5, measured["extra_removed"], rows)
    assert "多删" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="默认值 0.7.*提示"):
        exercises.check_01_3(0.7, 0, rows)  # the notebook's default left unchanged
    with pytest.raises(AssertionError, match="调低"):
        exercises.check_01_3(0.9, 0, rows)
    with pytest.raises(AssertionError, match="提示"):
        exercises.check_01_3(0.5, measured["extra_removed"] + 1, rows)


def _tiny_run(tiny_dir, out, drop_end_of_turn: bool):
    """A tiny LoRA run at the tiny profile's settings; optionally no loss on the end of turn."""
    import torch

    from helpers import models, sft
    from helpers.profiles import get_profile

    profile = get_profile("tiny")
    model, tokenizer = models.load_model(profile, tiny_dir)
    rows, _ = sft.training_rows(profile)
    trainer = sft.make_trainer(model, tokenizer, rows, None, profile, out, save_strategy="no")
    if drop_end_of_turn:
        collate, eos = trainer.data_collator, model.generation_config.eos_token_id
        eos = torch.tensor(eos if isinstance(eos, list) else [eos])

        def without_end_of_turn(examples):
            batch = collate(examples)
            batch["labels"][torch.isin(batch["labels"], eos)] = -100
            return batch

        trainer.data_collator = without_end_of_turn
    sft.train(trainer)
    return trainer


def test_03_2_sees_the_end_of_turn_left_out_of_the_loss(tiny_dir, tmp_path, monkeypatch):
    from helpers import models, sft
    from helpers.profiles import get_profile

    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tiny_dir.parent))  # the check loads this base
    profile = get_profile("tiny")
    control = _tiny_run(tiny_dir, tmp_path / "control", drop_end_of_turn=False)
    sft.save_adapter(control, tmp_path / "adapter")
    tokenizer, rows = control.processing_class, sft.validation_rows(profile, 16)
    assert exercises.check_03_2(None, tmp_path / "adapter", tokenizer, rows, profile) is False
    unchanged = _tiny_run(tiny_dir, tmp_path / "same", drop_end_of_turn=False).model
    with pytest.raises(AssertionError, match="改动没有生效"):
        exercises.check_03_2(unchanged, tmp_path / "adapter", tokenizer, rows, profile)
    changed = _tiny_run(tiny_dir, tmp_path / "no-eos", drop_end_of_turn=True).model
    assert exercises.check_03_2(changed, tmp_path / "adapter", tokenizer, rows, profile)


def test_04_exercises_check_perplexity_and_first_divergence():
    import math

    from helpers.evaluation import TokenScores

    scores = TokenScores("x", [5, 6, 7], [0.5, 0.25, 1.0], [5, 9, 7], [0.5, 0.6, 1.0], [1, 2, 0])
    assert exercises.check_04_1(None, scores) is False
    assert exercises.check_04_1(2.0, scores)  # exp((ln 2 + ln 4 + 0) / 3) = 2
    with pytest.raises(AssertionError, match="困惑度"):
        exercises.check_04_1(math.exp(3 * math.log(2)), scores)  # forgot to divide by n
    assert exercises.check_04_2(1, scores)
    with pytest.raises(AssertionError):
        exercises.check_04_2(2, scores)
    same = TokenScores("y", [5], [1.0], [5], [1.0], [0.0])
    assert exercises.check_04_2(-1, same)


def test_04_3_sees_the_weakest_intent_up_sampled(tiny_dir, tmp_path):
    import random

    from helpers import evaluation, models, sft
    from helpers.data import parse_answer
    from helpers.profiles import get_profile

    profile = get_profile("tiny")
    test_rows = evaluation.eval_sets(profile)["main_test"]
    references = [profile.style_messages(r["messages"]) for r in test_rows]
    rows, _ = sft.training_rows(profile)

    def train_on(train_rows, name):
        model, tokenizer = models.load_model(profile, tiny_dir)
        trainer = sft.make_trainer(
            model, tokenizer, train_rows, None, profile, tmp_path / name, save_strategy="no"
        )
        sft.train(trainer)
        return trainer.model.eval(), tokenizer

    control, tokenizer = train_on(rows, "control")
    ids = [r["id"] for r in test_rows]
    scores = evaluation.score_tokens(control, tokenizer, references, ids=ids, progress=False)
    losses = evaluation.intent_losses(scores, test_rows)
    weakest = max(losses, key=losses.get)
    assert exercises.check_04_3(None, None, tokenizer, profile, scores) is False
    with pytest.raises(AssertionError, match="不是最弱"):
        exercises.check_04_3(min(losses, key=losses.get), control, tokenizer, profile, scores)
    rerun, _ = train_on(rows, "rerun")  # the learner's change not made
    with pytest.raises(AssertionError, match="没有明显下降"):
        exercises.check_04_3(weakest, rerun, tokenizer, profile, scores)
    intent_of = lambda r: (parse_answer(r["messages"][-1]["content"]) or {}).get("intent")  # noqa: E731
    upsampled = rows + [r for r in rows if intent_of(r) == weakest] * 2
    random.Random(0).shuffle(upsampled)
    model, _ = train_on(upsampled, "upsampled")
    assert exercises.check_04_3(weakest, model, tokenizer, profile, scores)


def test_05_exercises_check_bits_per_weight_and_variant_choice(tmp_path):
    import pandas as pd

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 1000)  # 8000 bits
    assert exercises.check_05_1(None, gguf, 1600) is False
    assert exercises.check_05_1(5.0, gguf, 1600)
    with pytest.raises(AssertionError, match="字节"):
        exercises.check_05_1(1000 / 1600, gguf, 1600)  # forgot the × 8
    table = pd.DataFrame(
        {
            "size_mb": [500, 300, 270, 150, 130],
            "field_accuracy": [0.70, 0.70, 0.60, 0.69, 0.60],
            "perplexity": [1.10, 1.20, 1.10, 1.12, 1.30],
        },
        index=["16-bit", "bnb-8bit", "bnb-4bit", "gguf-q8_0", "gguf-q4_k_m"],
    )
    assert exercises.check_05_2("gguf-q8_0", table)  # q4 too bad; bnb has no file
    with pytest.raises(AssertionError):
        exercises.check_05_2("gguf-q4_k_m", table)


def test_06_exercises_check_auth_headers_against_a_server_and_p95():
    import numpy as np

    from helpers.serve import start_server
    from helpers.serve.backend import ChatResult

    class Echo:
        def chat(self, messages, **kwargs):
            yield "ok"
            yield ChatResult(prompt_tokens=1, completion_tokens=1)

    with start_server({"tuned": Echo()}, port=0, api_key="k") as server:
        assert exercises.check_06_1(None, server.url) is False
        assert exercises.check_06_1({"Authorization": "Bearer k"}, server.url)
        with pytest.raises(AssertionError, match="401"):
            exercises.check_06_1({"Authorization": "k"}, server.url)
    latencies = [0.5, 0.1, 0.3, 0.9, 0.2]
    assert exercises.check_06_2(float(np.percentile(latencies, 95)), latencies)
    with pytest.raises(AssertionError):
        exercises.check_06_2(max(latencies), latencies)


def test_07_1_measures_the_looser_threshold_on_the_log():
    import pandas as pd

    right = '{"intent":"refund","order_id":null,"product":null,"amount":null,"sentiment":"neutral","urgency":"low"}'  # noqa: E501
    log = pd.DataFrame(
        {
            "traffic_id": ["d1-1", "d1-2", "d1-3", "d1-4", "d2-1", "d2-2", "d2-3"],
            "day": [1, 1, 1, 1, 2, 2, 2],
            "status": [200] * 7,
            "confidence": [-0.1, -0.2, -0.3, -0.4, -0.25, -0.5, -0.35],
            "output": [right, right, right, "prose", right, "prose", right],
        }
    )
    truth = {t: right for t in log["traffic_id"]} | {"d2-3": None}
    precision, n = exercises.low_confidence_precision(log, truth, 0.5)
    assert (n, precision) == (3, 2 / 3)  # below -0.25: d1-4 (wrong), d2-2 (wrong), d1-3 (right)
    assert exercises.check_07_1(None, 0.5, log, truth) is False
    assert exercises.check_07_1(precision, 0.5, log, truth)
    with pytest.raises(AssertionError, match="0.1"):
        exercises.check_07_1(precision, 0.1, log, truth)
    with pytest.raises(AssertionError, match="不对"):
        exercises.check_07_1(0.5, 0.5, log, truth)


def test_07_2_needs_an_adapter_trained_differently(tiny_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from helpers.data.course import score_answers
    from helpers.evaluation import eval_sets, generate_batch, prompt_messages
    from helpers.models import load_model
    from helpers.profiles import get_profile

    profile = get_profile("tiny")
    rows = eval_sets(profile)["main_test"]
    prompts = [prompt_messages(r, profile) for r in rows]
    config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    r2, tokenizer = load_model(profile, path=tiny_dir)
    r2 = get_peft_model(r2, config)
    r2.save_pretrained(tmp_path / "r2")
    r2_replies = generate_batch(r2, tokenizer, prompts, profile.max_new_tokens, progress=False)
    with pytest.raises(AssertionError, match="一模一样"):
        exercises.check_07_2(0.0, r2, tokenizer, profile, r2_replies, tmp_path / "r2")
    torch.manual_seed(1)
    other = get_peft_model(load_model(profile, path=tiny_dir)[0], config)
    replies = generate_batch(other, tokenizer, prompts, profile.max_new_tokens, progress=False)
    scores = score_answers(replies, [r["messages"][-1]["content"] for r in rows])
    accuracy = sum(v for k, v in scores.items() if k.startswith("field_")) / 6
    assert exercises.check_07_2(accuracy, other, tokenizer, profile, r2_replies, tmp_path / "r2")
    with pytest.raises(AssertionError, match="不一致"):
        exercises.check_07_2(accuracy + 0.5, other, tokenizer, profile, r2_replies, tmp_path / "r2")
    assert (
        exercises.check_07_2(None, other, tokenizer, profile, r2_replies, tmp_path / "r2") is False
    )


def test_09_1_checks_the_extra_parameters_of_dora(tiny_dir):
    from helpers import methods
    from helpers.models import load_model
    from helpers.profiles import get_profile

    tiny = get_profile("tiny")
    lora = methods.build(load_model(tiny, path=tiny_dir)[0], methods.METHODS["lora-all"], tiny)
    dora = methods.build(load_model(tiny, path=tiny_dir)[0], methods.METHODS["dora"], tiny)
    # tiny: 2 layers x (q 128, k 64, v 64, o 128, gate 384, up 384, down 128) output features
    assert exercises.check_09_1(None, lora, dora) is False
    assert exercises.check_09_1(2 * (128 + 64 + 64 + 128 + 384 + 384 + 128), lora, dora)
    with pytest.raises(AssertionError, match="out_features"):
        exercises.check_09_1(2 * 7 * 8, lora, dora)  # one per rank, not per output feature


def test_09_2_wants_a_larger_kl_weight_and_a_smaller_kl():
    weak = {"kind": "lora", "steps": 4, "trainable_params": 10, "learning_rate": 1e-3}
    weak |= {"training_rows": 8, "kl_weight": 1.0, "kl_last": 0.02, "task_loss": 1.0}
    assert exercises.check_09_2(None, weak) is False
    assert exercises.check_09_2({**weak, "kl_weight": 10.0, "kl_last": 0.01}, weak)
    with pytest.raises(AssertionError, match="5 倍"):
        exercises.check_09_2({**weak, "kl_weight": 2.0, "kl_last": 0.01}, weak)
    with pytest.raises(AssertionError, match="learning_rate"):
        exercises.check_09_2({**weak, "kl_weight": 10.0, "learning_rate": 1e-4}, weak)
    with pytest.raises(AssertionError, match="没有变小"):
        exercises.check_09_2({**weak, "kl_weight": 10.0, "kl_last": 0.03}, weak)


def test_10_1_checks_the_dpo_loss_from_the_margin():
    import math

    assert exercises.check_10_1(None, 0.0) is False
    assert exercises.check_10_1(math.log(2), 0.0)
    assert exercises.check_10_1(math.log(1 + math.exp(-1.5)), 1.5)
    with pytest.raises(AssertionError, match="不要再乘"):
        exercises.check_10_1(math.log(1 + math.exp(-0.15)), 1.5)  # beta applied twice


def test_10_2_sees_the_sft_term_keep_the_chosen_reward(tiny_dir, tmp_path, monkeypatch):
    from helpers import dpo, models, preference, sft
    from helpers.data import load_split
    from helpers.profiles import get_profile

    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tiny_dir.parent))  # load_model finds this one
    profile = get_profile("tiny")
    model, tokenizer = models.load_model(profile, tiny_dir)
    rows, _ = sft.training_rows(profile)
    trainer = sft.make_trainer(
        model, tokenizer, rows, None, profile, tmp_path / "sft", save_strategy="no", max_steps=4
    )
    trainer.train()
    sft.save_adapter(trainer, tmp_path / "adapter")
    prompts = load_split("train")[-8:]
    pairs = preference.build_pairs(prompts, [["{"] for _ in prompts], profile)
    held, train = pairs[:3], pairs[3:]

    def run(name, **overrides):
        policy, _ = dpo.load_sft_policy(profile, tmp_path / "adapter")
        out = dpo.make_dpo_trainer(policy, tokenizer, train, profile, tmp_path / name, **overrides)
        out.train()
        return out.model

    reference = dpo.pair_logps(
        dpo.load_sft_policy(profile, tmp_path / "adapter")[0], tokenizer, held
    )
    main = run("main", report_to=[])
    summary = dpo.reward_summary(
        dpo.reward_table(dpo.pair_logps(main, tokenizer, held), reference, 0.1)
    )
    assert exercises.check_10_2(None, tokenizer, held, reference, summary, 0.1, profile) is False
    with pytest.raises(AssertionError, match="提示"):  # the learner's change not made
        exercises.check_10_2(
            run("rerun", report_to=[]), tokenizer, held, reference, summary, 0.1, profile
        )
    rpo = run("rpo", report_to=[], loss_type=["sigmoid", "sft"])
    assert exercises.check_10_2(rpo, tokenizer, held, reference, summary, 0.1, profile)


def test_11_1_checks_the_ddp_all_reduce_of_lora_gradients():
    from helpers.vram import KNOWN_SHAPES, TrainingPlan, estimate_vram

    shape = KNOWN_SHAPES["Qwen/Qwen2.5-7B-Instruct"]
    plan = TrainingPlan("qlora", seq_len=1024, batch_size=1, lora_r=16)
    trainable = estimate_vram(shape, plan).trainable_params
    assert exercises.check_11_1(None, shape, plan, 4) is False
    assert exercises.check_11_1(trainable * 4 * 2 * 3 / 4 / 2**30, shape, plan, 4)
    with pytest.raises(AssertionError, match="fp32"):
        exercises.check_11_1(trainable * 2 * 2 * 3 / 4 / 2**30, shape, plan, 4)  # bf16 bytes


def test_11_2_checks_the_fewest_gpus_for_32b_lora():
    from helpers.vram import KNOWN_SHAPES, TrainingPlan, multi_device_table

    plan = TrainingPlan("lora", seq_len=1024, batch_size=1, gradient_checkpointing=True)
    table = multi_device_table({"32B": KNOWN_SHAPES["Qwen/Qwen2.5-32B-Instruct"]}, {"lora": plan})
    assert exercises.check_11_2(None, table) is False
    assert exercises.check_11_2((4, "zero3"), table)
    with pytest.raises(AssertionError, match="块不对"):
        exercises.check_11_2((2, "zero3"), table)
    with pytest.raises(AssertionError, match="放不下"):
        exercises.check_11_2((4, "ddp"), table)


def test_08_1_checks_the_loss_drop_from_the_events():
    curve = [(1, 7.5), (2, 7.25), (3, 6.5)]
    assert exercises.check_08_1(None, curve) is False
    assert exercises.check_08_1(1.0, curve)
    with pytest.raises(AssertionError, match="不对"):
        exercises.check_08_1(0.25, curve)  # the last two steps only


def test_08_2_checks_the_steps_of_a_job():
    from helpers.profiles import get_profile

    tiny = get_profile("tiny")  # 4 rows per device: batch_size 8 is 4 x 2 accumulation steps
    assert exercises.check_08_2(None, 30, {"n_epochs": 3, "batch_size": 8}, tiny) is False
    assert exercises.check_08_2(12, 30, {"n_epochs": 3, "batch_size": 8}, tiny)
    with pytest.raises(AssertionError, match="步不对"):
        exercises.check_08_2(9, 30, {"n_epochs": 3, "batch_size": 8}, tiny)  # rounded down


def test_01_4_measures_template_recovery_at_another_distance(capsys):
    from helpers.data import adjusted_rand_index, load_split, template_clusters, user_text

    rows = load_split("train")[:400]
    texts, truth = [user_text(r) for r in rows], [r["meta"]["template"] for r in rows]
    ari = adjusted_rand_index(template_clusters(texts, max_distance=0.5), truth)
    assert exercises.check_01_4(None, None, texts, truth) is False
    assert exercises.check_01_4(0.5, round(ari, 4), texts, truth)
    assert "ARI" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="默认值"):
        exercises.check_01_4(0.8, ari, texts, truth)
    with pytest.raises(AssertionError, match="不一致"):
        exercises.check_01_4(0.5, ari + 0.1, texts, truth)


def test_01_5_measures_synthesis_with_other_steps(capsys):
    from helpers.data import load_split, synthesize

    rows, test = load_split("train")[:200], load_split("test")
    steps = ("paraphrase", "compose")
    kept = len(synthesize(rows, 60, steps=steps, test_rows=test).rows)
    assert exercises.check_01_5(None, None, rows, test, n=60) is False
    assert exercises.check_01_5(steps, kept, rows, test, n=60)
    assert "淘汰原因" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="默认"):
        exercises.check_01_5(("paraphrase", "compose", "noise"), kept, rows, test, n=60)
    with pytest.raises(AssertionError, match="不一致"):
        exercises.check_01_5(steps, kept + 1, rows, test, n=60)
