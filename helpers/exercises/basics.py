"""Checks for the exercises of notebooks 00-04 (setup, data, model, SFT, evaluation)."""

from __future__ import annotations

from dataclasses import replace

from helpers import env, vram
from helpers.exercises.common import unanswered
from helpers.profiles import get_profile

SEQ_LEN_CHOICES = (512, 1024, 2048, 4096, 8192, 16384)


def t4_fits(seq_len: int) -> bool:
    """True when the t4 profile's plan at ``seq_len`` fits a T4 by helpers.vram's estimate."""
    profile = get_profile("t4")
    plan = replace(vram.TrainingPlan.from_profile(profile), seq_len=seq_len)
    estimate = vram.estimate_vram(vram.KNOWN_SHAPES[profile.model_id], plan)
    return estimate.fits(vram.USABLE_VRAM_GB["t4"])


def t4_longest_sequence() -> int:
    """Reference for 00.1: the longest max_length in SEQ_LEN_CHOICES whose t4 plan fits."""
    return max(n for n in SEQ_LEN_CHOICES if t4_fits(n))


def check_00_1(answer: int | None) -> bool:
    """00 练习 1: the longest sequence the t4 QLoRA plan fits into a T4."""
    if unanswered(answer):
        return False
    expected, usable = t4_longest_sequence(), vram.USABLE_VRAM_GB["t4"]
    if answer not in SEQ_LEN_CHOICES:
        why = f"答案要从 {SEQ_LEN_CHOICES} 中选"
    elif t4_fits(answer):
        why = f"max_length={answer} 放得下，但还有更长的也放得下"
    else:
        why = f"max_length={answer} 的估算超过了 {usable} GB"
    assert answer == expected, (
        f"{answer} 不对（{why}）。提示：对 {SEQ_LEN_CHOICES} 中的每个长度，用 "
        f"replace(plan, seq_len=n) 估算，找出 fits({usable}) 仍为 True 的最大值。"
    )
    print(f"✅ 正确：T4 上 t4 profile 的计划最长可到 max_length={expected}。")
    return True


def check_00_2(answer: str | None, cache_root: str = "/root/autodl-tmp/modelscope") -> bool:
    """00 练习 2: where ModelScope stores Qwen/Qwen2.5-0.5B-Instruct under ``cache_root``."""
    if unanswered(answer):
        return False
    expected = str(env.modelscope_local_dir(cache_root, "Qwen/Qwen2.5-0.5B-Instruct"))
    assert str(answer).rstrip("/") == expected, (
        f"{answer!r} 不对。提示：ModelScope 把文件夹名里的 '.' 换成 '___'，"
        "并放在缓存目录下的 models/<组织>/<名字>。"
    )
    print(f"✅ 正确：{expected}")
    return True


SHAREGPT_MESSAGES = [
    {"role": "system", "content": "你是客服助手。"},
    {"role": "user", "content": "我要开发票"},
    {"role": "assistant", "content": '{"intent":"invoice"}'},
]


def check_01_1(answer: list[dict] | None) -> bool:
    """01 练习 1: the sharegpt record of the notebook written as TRL messages."""
    if unanswered(answer):
        return False
    assert answer == SHAREGPT_MESSAGES, (
        "不对。提示：每个元素是 {'role': ..., 'content': ...}，human→user，gpt→assistant，"
        "system 保持 system，内容原样保留。"
    )
    print("✅ 正确：这就是 TRL 对话格式的 messages。")
    return True


def check_01_2(answer: int | None, sample: dict, tokenizer) -> bool:
    """01 练习 2: tokens that carry loss in last-turn mode, checked against TRL's labels."""
    if unanswered(answer):
        return False
    from helpers.data import trl_labels

    expected = sum(label != -100 for label in trl_labels(sample, tokenizer, "last_turn"))
    assert answer == expected, (
        f"{answer} 不对。提示：只有最后一个助手回答（含其结束符）计算损失；"
        "data.loss_mask(sample, tokenizer, 'last_turn') 的掩码求和。"
    )
    print(f"✅ 正确：last_turn 模式下有 {expected} 个 token 计算损失。")
    return True


def near_dup_extra_removed(rows: list[dict], threshold: float, default: float = 0.7) -> dict:
    """Reference for 01.3: re-run dedup on ``rows`` at ``default`` and at ``threshold``.

    Returns the rows kept at each, the extra rows removed at ``threshold``, and the near pairs
    found only below ``default`` similarity with how many of them have different answers.
    """
    from helpers.data import deduplicate

    kept_default = len(deduplicate(rows, threshold=default, progress=False)[0])
    kept, pairs = deduplicate(rows, threshold=threshold, progress=False)
    below = [p for p in pairs if p.kind == "near" and p.similarity < default]

    def answer(i: int) -> str:
        return rows[i]["messages"][-1]["content"]

    return {
        "kept_default": kept_default,
        "kept": len(kept),
        "extra_removed": kept_default - len(kept),
        "pairs_below_default": len(below),
        "answers_differ": sum(answer(p.kept) != answer(p.dropped) for p in below),
    }


def check_01_3(
    threshold: float | None, extra_removed: int | None, rows: list[dict], default: float = 0.7
) -> bool:
    """01 练习 3: lower the near-duplicate threshold and measure how many more rows go."""
    if unanswered(threshold) or unanswered(extra_removed):
        return False
    assert threshold != default, (
        f"my_threshold 还是笔记本的默认值 {default}，什么也没改。提示：把它调低（例如 0.5），"
        "再用同一批 before_dedup 跑一次 data.deduplicate。"
    )
    assert 0 < threshold < default, (
        f"my_threshold={threshold}：这个练习要把阈值调低，取 0 到 {default} 之间的值（例如 0.5）。"
    )
    m = near_dup_extra_removed(rows, threshold, default)
    assert extra_removed == m["extra_removed"], (
        f"{extra_removed} 和重新测量的不一致。提示：对同一批 before_dedup，分别用 "
        f"threshold={default} 和 threshold={threshold} 调用 data.deduplicate，"
        "多删的行数 = 默认阈值下保留的行数 - 你的阈值下保留的行数。"
    )
    assert m["extra_removed"] > 0, (
        f"阈值 {threshold} 没有比 {default} 多删任何行，测不出差别。提示：再调低一些，例如 0.5。"
    )
    print(
        f"✅ 正确：阈值 {default} 保留 {m['kept_default']} 行，{threshold} 保留 {m['kept']} 行，"
        f"多删 {m['extra_removed']} 行。\n相似度低于 {default} 的 {m['pairs_below_default']} 对"
        f"“近似重复”里，{m['answers_differ']} 对的助手答案不同：它们是不是真的重复？"
    )
    return True


def check_01_4(
    distance: float | None, ari: float | None, texts: list[str], truth: list[str]
) -> bool:
    """01 练习 4: re-cluster the templates at another distance and measure the recovery."""
    if unanswered(distance) or unanswered(ari):
        return False
    from helpers.data import adjusted_rand_index, template_clusters
    from helpers.data.diversity import TEMPLATE_DISTANCE

    assert distance != TEMPLATE_DISTANCE, (
        f"my_distance 还是默认值 {TEMPLATE_DISTANCE}。提示：换一个值，例如 0.5 或 0.95，"
        "用 data.template_clusters(repo_texts, max_distance=...) 重新聚类。"
    )
    assert 0 < distance < 1, f"my_distance={distance}：余弦距离在 0 到 1 之间取值。"
    default = template_clusters(texts)
    mine = template_clusters(texts, max_distance=distance)
    measured = adjusted_rand_index(mine, truth)
    assert abs(ari - measured) < 1e-3, (
        f"ARI {ari} 和重新测量的 {measured:.3f} 不一致。提示："
        "data.adjusted_rand_index(你的簇, truth)，truth 是 REPO_TRAIN 每行的 meta.template。"
    )
    base = adjusted_rand_index(default, truth)
    print(
        f"✅ 正确：max_distance={distance} 得到 {len(set(mine))} 簇，ARI {measured:.3f}；"
        f"默认 {TEMPLATE_DISTANCE} 是 {len(set(default))} 簇，ARI {base:.3f}。"
        "\n距离小：一个模板被切成很多小簇；距离大：不同模板被并成一簇。两头的 ARI 都会下降。"
    )
    return True


def check_01_5(
    steps: tuple[str, ...] | None,
    kept: int | None,
    rows: list[dict],
    test_rows: list[dict],
    n: int = 300,
    seed: int = 0,
) -> bool:
    """01 练习 5: synthesize with other steps and measure what the checks keep and why."""
    if unanswered(steps) or unanswered(kept):
        return False
    from helpers.data.synthesis import STEPS, synthesize

    steps = tuple(steps)
    assert steps != STEPS, (
        f'my_steps 还是默认的 {STEPS}。提示：去掉一步，例如 ("paraphrase", "compose")。'
    )
    assert set(steps) <= set(STEPS), f"只能从 {STEPS} 里选步骤，得到了 {steps}。"
    default = synthesize(rows, n, seed=seed, test_rows=test_rows)
    mine = synthesize(rows, n, seed=seed, steps=steps, test_rows=test_rows)
    assert kept == len(mine.rows), (
        f"{kept} 和重新测量的 {len(mine.rows)} 不一致。提示：data.synthesize(balanced, {n}, "
        f"seed=SEED, steps=my_steps, test_rows=TEST)，保留行数是 len(结果.rows)。"
    )
    print(
        f"✅ 正确：步骤 {steps} 保留 {len(mine.rows)} 行，淘汰原因 {mine.report.counts()}；"
        f"默认三步保留 {len(default.rows)} 行，淘汰原因 {default.report.counts()}。"
        "\n哪一步带来的改动最多？哪一步最常把提示词带进来、让答案对不上？"
    )
    return True


def check_02_1(answer: int | None, model) -> bool:
    """02 练习 1: trainable LoRA parameters for r=32 on q_proj and v_proj, counted by hand."""
    if unanswered(answer):
        return False
    from helpers.models import lora_param_table

    table = lora_param_table(model, ranks=(32,), target_sets={"q,v": ("q_proj", "v_proj")})
    expected = int(table["lora_params"].iloc[0])
    assert answer == expected, (
        f"{answer} 不对。提示：q_proj 和 v_proj 各自 r × (in_features + out_features)，"
        "再乘以它们出现的层数。"
    )
    print(f"✅ 正确：r=32 的 q,v LoRA 有 {expected:,} 个可训练参数。")
    return True


def _lora_count(model, config) -> tuple[int, list[str]]:
    """peft's trainable-parameter count and adapted modules for ``config`` on ``model``'s shape.

    peft wraps an empty (meta-device) copy built from ``model.config``: nothing is allocated,
    ``config`` is not changed, and a 4-bit model is counted like its 16-bit original.
    """
    import copy

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(model.config)
        peft_model = get_peft_model(shell, copy.deepcopy(config))
    return peft_model.get_nb_trainable_parameters()[0], sorted(peft_model.targeted_module_names)


def check_02_2(answer: dict | None, model, profile) -> bool:
    """02 练习 2: another LoRA set-up changes the trainable parameters far more than step time.

    ``answer`` is ``{"config": LoraConfig, "default": run, "mine": run}``, each run a dict of
    ``trainable`` (peft's count), ``seconds`` (one forward + backward) and ``loss`` (that pass).
    """
    import math

    if unanswered(answer):
        return False
    from helpers.sft import lora_config

    form = (
        "答案的格式：{'config': 你的 LoraConfig, 'default': 默认配置的结果, "
        "'mine': 你的配置的结果}，每组结果是 {'trainable': ..., 'seconds': ..., 'loss': ...}。"
    )
    assert isinstance(answer, dict) and {"config", "default", "mine"} <= answer.keys(), form
    runs = {key: answer[key] for key in ("default", "mine")}
    assert all({"trainable", "seconds", "loss"} <= run.keys() for run in runs.values()), form
    expected = {"default": _lora_count(model, lora_config(profile))}
    try:
        expected["mine"] = _lora_count(model, answer["config"])
    except ValueError as err:  # peft: a target module that this model does not have
        raise AssertionError(f"peft 用不了你的配置：{err}") from err
    (n_default, default_names), (n_mine, mine_names) = expected["default"], expected["mine"]
    assert (answer["config"].r, mine_names) != (profile.lora_r, default_names), (
        f"你的配置和 03 默认的一样：r={profile.lora_r}，挂在同样的 {len(default_names)} 个线性层上"
        "（只改 lora_alpha 或 lora_dropout 不改变参数量和计算量）。提示：把 target_modules 改成 "
        "['q_proj', 'v_proj']，或者把 r 改成 4 或 64，再测一次。"
    )
    assert n_mine != n_default, (
        f"两种配置的可训练参数一样多（{n_mine:,}）：换一个真正不同的 target_modules 或 r。"
    )
    for key, (n, _) in expected.items():
        assert runs[key]["trainable"] == n, (
            f"{key} 的可训练参数应为 {n:,}，你报的是 {runs[key]['trainable']}。"
            "提示：peft_model.get_nb_trainable_parameters()[0]，在 get_peft_model 之后数。"
        )
    losses = [float(run["loss"]) for run in runs.values()]
    assert all(map(math.isfinite, losses)) and math.isclose(*losses, rel_tol=1e-3), (
        f"两次的 loss 不同：{losses}。LoRA 的 B 矩阵初始化为 0，刚挂上时模型输出不变，所以在同一个 "
        "batch 上、参数更新之前，两种配置的 loss 应该一样。提示：两次用同一个 train_batch，"
        "每次都从加载时的模型开始（测完用 peft_model.unload() 拆掉适配器）。"
    )
    assert all(run["seconds"] > 0 for run in runs.values()), "seconds 要是测到的秒数（> 0）。"
    big, small = ("default", "mine") if n_default > n_mine else ("mine", "default")
    param_ratio = runs[big]["trainable"] / runs[small]["trainable"]
    time_ratio = runs[big]["seconds"] / runs[small]["seconds"]
    assert time_ratio < param_ratio, (
        f"可训练参数差 {param_ratio:.1f} 倍，你测到一步的时间也差了 {time_ratio:.1f} 倍。"
        "前向和反向都要穿过整个冻结的基座，LoRA 只占一小部分计算，时间不该跟着参数量成比例变化。"
        "多半是计时不准。提示：每种配置跑 3 次取最短（第一次还要分配内存）；"
        "在 GPU 上计时前后都调用 torch.cuda.synchronize()。"
    )
    print(
        f"✅ {big} 的可训练参数是 {small} 的 {param_ratio:.1f} 倍，一步前向 + 反向只慢 "
        f"{time_ratio:.2f} 倍；训练前两者的 loss 相同（{losses[0]:.4f}）。"
    )
    return True


def check_03_1(effective_batch: int | None, samples_seen: int | None, profile) -> bool:
    """03 练习 1: effective batch size and samples seen over the whole run."""
    if unanswered(effective_batch) or unanswered(samples_seen):
        return False
    batch = profile.per_device_batch_size * profile.gradient_accumulation_steps
    assert effective_batch == batch, (
        f"有效 batch {effective_batch} 不对。提示：每卡 batch × 梯度累积步数（单卡）。"
    )
    assert samples_seen == batch * profile.max_steps, (
        f"样本数 {samples_seen} 不对。提示：有效 batch × max_steps。"
    )
    print(f"✅ 正确：有效 batch {batch}，共 {samples_seen} 条样本。")
    return True


def _end_of_turn_probability(model, tokenizer, rows) -> float:
    """Mean probability of each answer's last trained token (its end of turn), teacher-forced."""
    from helpers.evaluation import score_tokens

    scores = score_tokens(model, tokenizer, [r["messages"] for r in rows], progress=False)
    return sum(s.probs[-1] for s in scores) / len(scores)


def _stop_rate(model, tokenizer, rows) -> float:
    """Share of greedy answers (64 new tokens at most) that end with a stop token."""
    from helpers.evaluation import generate_batch

    prompts = [r["messages"][:-1] for r in rows]
    _, stops = generate_batch(model, tokenizer, prompts, 64, progress=False, return_stops=True)
    return sum(stops) / len(stops)


def check_03_2(eos_model, adapter_dir, tokenizer, rows, profile) -> bool:
    """03 练习 2: with the end-of-turn token out of the loss, the model stops less.

    Compares ``eos_model`` with the notebook's adapter (reloaded from ``adapter_dir``) on the
    same validation rows: the end-of-turn probability must change (an unchanged rerun gives
    the same value) and, on real weights, fall by a fifth at least, and greedy answers must
    stop less often. Random weights (tiny, the rehearsals' 4-step runs) barely learn the end
    of turn, so there only the change is checked.
    """
    if unanswered(eos_model):
        return False
    from peft import PeftModel

    from helpers.models import load_model

    reference = PeftModel.from_pretrained(load_model(profile)[0], adapter_dir).eval()
    eos_model.eval()
    p = {
        "本课的适配器": _end_of_turn_probability(reference, tokenizer, rows),
        "你的实验": _end_of_turn_probability(eos_model, tokenizer, rows),
    }
    hint = (
        f"答案末尾结束符的平均概率：{p}。实验组没有明显下降，改动没有生效。提示：包一层 "
        "trainer.data_collator，把 batch['labels'] 中等于结束符 id 的位置设为 -100，再训练。"
    )
    # an unchanged rerun gives the same value on a CPU; the learner's change must move it ...
    assert abs(p["你的实验"] - p["本课的适配器"]) > 1e-3 * p["本课的适配器"], hint
    report = {f"结束符概率（{k}）": round(v, 4) for k, v in p.items()}
    if profile.real_weights:  # ... down, by a fifth at least, and answers stop less often
        assert p["你的实验"] < 0.8 * p["本课的适配器"], hint
        few = rows[:16]
        stops = {"本课的适配器": _stop_rate(reference, tokenizer, few)}
        stops["你的实验"] = _stop_rate(eos_model, tokenizer, few)
        assert stops["你的实验"] < stops["本课的适配器"], (
            f"能自己停下的回答比例：{stops}。结束符的概率降了，但生成时停下的并没有变少。"
        )
        report.update({f"停下的比例（{k}）": round(v, 2) for k, v in stops.items()})
    else:  # random weights barely learn the end of turn in a few steps
        print("随机权重：只检查训练确实变了，方向要在真实模型上看。")
    print(f"✅ 结束符不算损失，模型就学不会停下：{report}")
    return True


def check_04_1(answer: float | None, scores) -> bool:
    """04 练习 1: the perplexity of one answer from its per-token probabilities."""
    import math

    if unanswered(answer):
        return False
    expected = math.exp(-sum(math.log(p) for p in scores.probs) / len(scores.probs))
    assert math.isclose(answer, expected, rel_tol=1e-6), (
        f"{answer} 不对。提示：困惑度 = exp(-平均 log p)，对 scores.probs 的每个 token 取平均。"
    )
    print(f"✅ 正确：困惑度 {expected:.3f}（{len(scores.probs)} 个 token）。")
    return True


def check_04_2(answer: int | None, scores) -> bool:
    """04 练习 2: the first position where the model's greedy choice leaves the reference."""
    if unanswered(answer):
        return False
    pairs = zip(scores.ids, scores.top_ids, strict=True)
    expected = next((i for i, (ref, top) in enumerate(pairs) if ref != top), -1)
    assert answer == expected, (
        f"{answer} 不对。提示：逐个比较 scores.ids[i] 和 scores.top_ids[i]，"
        "返回第一个不相等的 i；全部相等时答 -1。"
    )
    where = "没有分歧" if expected < 0 else f"第 {expected} 个 token"
    print(f"✅ 正确：{where}。")
    return True


def check_04_3(intent: str | None, model, tokenizer, profile, reference_scores) -> bool:
    """04 练习 3: up-sampling the weakest intent lowers its held-out loss.

    ``reference_scores`` are the notebook's fine-tuned scores on the test references; the
    weakest intent is the one with the highest loss per token there. ``model`` was trained
    like 03 with that intent's rows repeated; on real weights its loss on the intent's test
    rows must fall by 5% at least, on random ones (tiny, rehearsals) merely change: an
    unchanged rerun gives the same loss and fails either way.
    """
    if unanswered(intent) or unanswered(model):
        return False
    import json

    from helpers.evaluation import eval_sets, intent_losses, score_tokens

    rows = eval_sets(profile)["main_test"]
    before = intent_losses(reference_scores, rows)
    weakest = max(before, key=before.get)
    assert intent == weakest, (
        f"{intent!r} 不是最弱的意图。提示：按意图汇总第 3 节的 tuned_scores（evaluation."
        f"intent_losses），每个 token 的损失最高的是 {weakest!r}。"
    )
    chosen = [r for r in rows if json.loads(r["messages"][-1]["content"])["intent"] == intent]
    model.eval()
    scores = score_tokens(
        model,
        tokenizer,
        [profile.style_messages(r["messages"]) for r in chosen],
        ids=[r["id"] for r in chosen],
        progress=False,
    )
    after = intent_losses(scores, chosen)[intent]
    hint = (
        f"{intent} 的留出损失 {before[intent]:.3f} -> {after:.3f}，没有明显下降。提示：把这个意图的"
        "训练样本多复制几份（比如再加两份）混进 rows，打乱后用同样的步数重新训练。"
    )
    if profile.real_weights:
        assert after < 0.95 * before[intent], hint
    else:  # random weights learn too little to move one intent; the run must still differ
        assert abs(after - before[intent]) > 1e-4, hint
        print("随机权重：只检查训练确实变了，损失的方向要在真实模型上看。")
    print(f"✅ {intent} 的留出损失（每 token）{before[intent]:.3f} -> {after:.3f}")
    return True
