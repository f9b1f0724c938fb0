"""Automatic checks for the notebooks' exercises (练习), shared by notebooks and solutions.

A check returns False (and says so) while the answer is still ``None``, raises an
``AssertionError`` with a hint when it is wrong, and returns True when it is right.

    >>> from helpers.exercises import check_00_1
    >>> check_00_1(None)
    还没有作答：把答案赋给变量后重新运行这一格。
    False
"""

from __future__ import annotations

from dataclasses import replace

from helpers import env, vram
from helpers.profiles import get_profile

SEQ_LEN_CHOICES = (512, 1024, 2048, 4096, 8192, 16384)


def _unanswered(answer: object) -> bool:
    """Print the not-yet-answered message when ``answer`` is None."""
    if answer is None:
        print("还没有作答：把答案赋给变量后重新运行这一格。")
        return True
    return False


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
    if _unanswered(answer):
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
    if _unanswered(answer):
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
    if _unanswered(answer):
        return False
    assert answer == SHAREGPT_MESSAGES, (
        "不对。提示：每个元素是 {'role': ..., 'content': ...}，human→user，gpt→assistant，"
        "system 保持 system，内容原样保留。"
    )
    print("✅ 正确：这就是 TRL 对话格式的 messages。")
    return True


def check_01_2(answer: int | None, sample: dict, tokenizer) -> bool:
    """01 练习 2: tokens that carry loss in last-turn mode, checked against TRL's labels."""
    if _unanswered(answer):
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
    if _unanswered(threshold) or _unanswered(extra_removed):
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
    if _unanswered(distance) or _unanswered(ari):
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
    if _unanswered(steps) or _unanswered(kept):
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
    if _unanswered(answer):
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

    if _unanswered(answer):
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
    if _unanswered(effective_batch) or _unanswered(samples_seen):
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
    if _unanswered(eos_model):
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

    if _unanswered(answer):
        return False
    expected = math.exp(-sum(math.log(p) for p in scores.probs) / len(scores.probs))
    assert math.isclose(answer, expected, rel_tol=1e-6), (
        f"{answer} 不对。提示：困惑度 = exp(-平均 log p)，对 scores.probs 的每个 token 取平均。"
    )
    print(f"✅ 正确：困惑度 {expected:.3f}（{len(scores.probs)} 个 token）。")
    return True


def check_04_2(answer: int | None, scores) -> bool:
    """04 练习 2: the first position where the model's greedy choice leaves the reference."""
    if _unanswered(answer):
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
    if _unanswered(intent) or _unanswered(model):
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


def check_05_1(answer: float | None, gguf_path, n_params: int) -> bool:
    """05 练习 1: average bits per weight of a GGUF file."""
    from pathlib import Path

    if _unanswered(answer):
        return False
    expected = Path(gguf_path).stat().st_size * 8 / n_params
    assert abs(answer - expected) <= 0.02 * expected, (
        f"{answer} 不对。提示：文件字节数 × 8 / 参数个数（Path.stat().st_size 给出字节数）。"
    )
    print(
        f"✅ 正确：约 {expected:.2f} 位/参数（名义 4 位：嵌入、部分矩阵用了更多位，外加元数据）。"
    )
    return True


def check_05_2(answer: str | None, table) -> bool:
    """05 练习 2: the smallest file variant within 0.02 field accuracy and 5% perplexity."""
    if _unanswered(answer):
        return False
    ref = table.loc["16-bit"]
    files = table.loc[[n for n in table.index if n == "16-bit" or n.startswith("gguf")]]
    ok = files[
        (files["field_accuracy"] >= ref["field_accuracy"] - 0.02)
        & (files["perplexity"] <= ref["perplexity"] * 1.05)
    ]
    expected = ok["size_mb"].idxmin()
    assert answer == expected, (
        f"{answer!r} 不对。提示：只看 16-bit 和 gguf-*；先按两个质量条件筛选，再取 size_mb 最小的。"
    )
    print(f"✅ 正确：{expected}（{ok.loc[expected, 'size_mb']:.0f} MB）。")
    return True


def check_06_1(headers: dict | None, base_url: str) -> bool:
    """06 练习 1: request headers that authenticate with the course server (really sent)."""
    import httpx

    if _unanswered(headers):
        return False
    body = {"model": "tuned", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    response = httpx.post(f"{base_url}/chat/completions", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, (
        f"服务回答 {response.status_code}：{response.text[:120]}。"
        "提示：{'Authorization': 'Bearer ' + API_KEY}。"
    )
    print("✅ 正确：服务接受了这个 key（200）。")
    return True


def check_06_2(answer: float | None, latencies) -> bool:
    """06 练习 2: the 95th percentile of latencies, linear interpolation between ranks."""
    import numpy as np

    if _unanswered(answer):
        return False
    expected = float(np.percentile(latencies, 95))
    assert abs(answer - expected) <= 1e-6, (
        f"{answer} 不对。提示：排序后 pos = (n-1)*0.95，"
        "在 floor(pos) 和 ceil(pos) 两个值之间线性插值。"
    )
    print(f"✅ 正确：p95 = {expected:.3f} s（{len(latencies)} 个请求）。")
    return True


def low_confidence_precision(log, truth, quantile: float) -> tuple[float, int]:
    """(share of flagged answers that are wrong, number flagged) for 07's low-confidence flag.

    The threshold is day 1's ``quantile`` of confidence; only answered requests with a
    reference count (a bare injection has no right answer to be wrong about).
    """
    from helpers.monitor.flywheel import same_answer

    threshold = log.loc[log["day"] == 1, "confidence"].quantile(quantile)
    ok = log[(log["status"] == 200) & log["traffic_id"].map(lambda t: truth.get(t) is not None)]
    flagged = ok[ok["confidence"] < threshold]
    pairs = zip(flagged["output"], flagged["traffic_id"], strict=True)
    wrong = [not same_answer(output, truth[t]) for output, t in pairs]
    return (sum(wrong) / len(wrong) if wrong else 0.0), len(wrong)


def check_07_1(answer: float | None, quantile: float, log, truth) -> bool:
    """07 练习 1: the precision of a looser low-confidence threshold, measured on the log."""
    if _unanswered(answer):
        return False
    assert quantile != 0.1, (
        "quantile 还是参数格里的 0.1：把它改成更宽的阈值（例如 0.3），再算一次精确率。"
    )
    expected, n = low_confidence_precision(log, truth, quantile)
    before, n_before = low_confidence_precision(log, truth, 0.1)
    assert abs(answer - expected) < 1e-9, (
        f"{answer} 不对。提示：阈值是第一天置信度的 {quantile} 分位数；在有参考答案的成功请求里，"
        "取置信度低于阈值的，算其中答错（flywheel.same_answer 为 False）的比例。"
    )
    print(
        f"✅ 正确：分位数 {quantile} 挑出 {n} 个请求，其中 {expected:.0%} 答错；"
        f"0.1 时挑出 {n_before} 个，{before:.0%} 答错。阈值越宽，抓到的越多，误报也越多。"
    )
    return True


def check_07_2(answer: float | None, model, tokenizer, profile, r2_test_replies, r2_dir) -> bool:
    """07 练习 2: round 2 without old rows, its test-set field accuracy measured.

    ``r2_test_replies`` are the notebook's round-2 answers on the test set and ``r2_dir`` its
    saved adapter; a rerun with the same settings gives the same adapter weights (CPU training
    is deterministic) and fails. Weights, not answers: a random model's greedy answers may
    not move at all when its adapter does.
    """
    if _unanswered(answer) or _unanswered(model):
        return False
    from pathlib import Path

    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from helpers.data.course import score_answers
    from helpers.evaluation import eval_sets, generate_batch, prompt_messages

    saved = load_file(Path(r2_dir) / "adapter_model.safetensors")
    mine = get_peft_model_state_dict(model)
    assert any(not torch.equal(mine[k].cpu(), v) for k, v in saved.items() if k in mine), (
        "适配器权重和第 9 节的第二轮一模一样：训练数据没有变。提示：ROUND2_OLD_ROWS 设为 0 再训练。"
    )
    rows = eval_sets(profile)["main_test"]
    prompts = [prompt_messages(r, profile) for r in rows]
    model.eval()
    replies = generate_batch(model, tokenizer, prompts, profile.max_new_tokens, progress=False)

    def field(replies):
        s = score_answers(replies, [r["messages"][-1]["content"] for r in rows])
        return sum(v for k, v in s.items() if k.startswith("field_")) / 6

    measured, r2 = field(replies), field(r2_test_replies)
    assert abs(answer - measured) < 1e-9, (
        f"{answer} 和检查格量到的 {measured:.4f} 不一致。提示：用第 10 节同样的方法"
        "（generate_batch + score_answers，6 个字段取平均）在原测试集上打分。"
    )
    print(f"✅ 不混旧数据：测试集字段准确率 {measured:.3f}；混了旧数据的第二轮：{r2:.3f}。")
    return True


def check_09_1(answer: int | None, lora_model, dora_model) -> bool:
    """09 练习 1: the parameters DoRA trains on top of LoRA (one magnitude per output feature)."""
    if _unanswered(answer):
        return False
    from helpers.methods import trainable_table

    extra = (
        trainable_table(dora_model)["trainable_params"]
        - trainable_table(lora_model)["trainable_params"]
    )
    per_layer = sum(
        m.out_features
        for n, m in dora_model.named_modules()
        if n.endswith("base_layer") and hasattr(m, "out_features")
    )
    assert extra == per_layer, f"the models differ in more than use_dora: {extra} vs {per_layer}"
    assert answer == extra, (
        f"{answer} 不对。提示：DoRA 给每个被 LoRA 改到的线性层加一个长度向量，长度等于该层的 "
        "out_features（不是 in_features，也不是 r）；两个模型的 trainable_params 之差就是答案。"
    )
    print(f"✅ 正确：DoRA 多训练 {extra} 个参数，每个被改到的线性层的每个输出维度一个。")
    return True


def check_09_2(strong: dict | None, weak: dict) -> bool:
    """09 练习 2: a KL weight at least 5x larger keeps the model nearer the base (smaller KL)."""
    if _unanswered(strong):
        return False
    assert strong.get("kl_weight", 0) >= 5 * weak["kl_weight"], (
        f"kl_weight={strong.get('kl_weight')}：至少要是 {weak['kl_weight']} 的 5 倍；"
        '用 methods.remedy("kl-strong", kl_weight=...) 造配置，其它都不改。'
    )
    same = ("kind", "steps", "trainable_params", "learning_rate", "training_rows")
    differ = [k for k in same if strong[k] != weak[k]]
    assert not differ, f"除了 kl_weight 还改了 {differ}：对照实验只改一个设置。"
    assert strong["kl_last"] < weak["kl_last"], (
        f"权重更大，训练后半段的 KL 反而没有变小（{strong['kl_last']:.2e} ≥ "
        f"{weak['kl_last']:.2e}）：检查两次是否用了同样的 PROFILE、BUDGET 和 base。"
    )
    ratio = strong["kl_last"] / weak["kl_last"]
    print(
        f"✅ KL 权重 {weak['kl_weight']:g} → {strong['kl_weight']:g}：训练后半段的 KL 是原来的 "
        f"{ratio:.2f} 倍，模型离基座更近；任务损失 {weak['task_loss']:.3f} → "
        f"{strong['task_loss']:.3f}。"
    )
    return True


def check_10_1(answer: float | None, margin: float) -> bool:
    """10 练习 1: the DPO (sigmoid) loss of one pair from its reward margin."""
    import math

    if _unanswered(answer):
        return False
    expected = math.log1p(math.exp(-margin))  # -log sigmoid(margin), computed stably
    assert math.isclose(answer, expected, rel_tol=1e-6, abs_tol=1e-9), (
        f"{answer} 不对。提示：DPO 的损失是 -log σ(margin)，σ(x) = 1 / (1 + e^(-x))；"
        "margin 已经乘过 beta，不要再乘一次。"
    )
    print(f"✅ 正确：margin {margin:.3f} 时损失 {expected:.4f}（margin = 0 时是 ln 2 ≈ 0.693）。")
    return True


def check_10_2(model, tokenizer, pairs, reference_logps, main_summary, beta, profile) -> bool:
    """10 练习 2: DPO + an SFT term on chosen keeps the chosen reward higher than DPO alone.

    ``model`` was trained like the notebook's main run with ``loss_type=["sigmoid", "sft"]``;
    ``main_summary`` is the main run's held-out :func:`helpers.dpo.reward_summary`. On real
    weights the chosen reward must end higher than the main run's while the margin stays
    positive; on random weights (tiny) only the change is checked. An unchanged rerun fails.
    """
    if _unanswered(model):
        return False
    from helpers.dpo import pair_logps, reward_summary, reward_table

    mine = reward_summary(reward_table(pair_logps(model, tokenizer, pairs), reference_logps, beta))
    before, after = main_summary["reward_chosen"], mine["reward_chosen"]
    hint = (
        f"留出偏好对上 chosen 的平均奖励：只用 DPO {before:.3f}，你的实验 {after:.3f}。"
        '提示：按主实验的配置重新训练，只把 loss_type 改成 ["sigmoid", "sft"]'
        "（DPO 加上 chosen 答案的 SFT 损失）。"
    )
    assert abs(after - before) > 1e-4, hint  # an unchanged rerun gives the same model
    if profile.real_weights:
        assert after > before, hint
        assert mine["margin"] > 0, f"margin {mine['margin']:.3f} 不再为正：SFT 项的权重太大了。"
    else:
        print("随机权重：只检查训练确实变了，方向要在真实模型上看。")
    print(f"✅ chosen 的奖励 {before:.3f} -> {after:.3f}，margin {mine['margin']:.3f}")
    return True


def check_11_1(answer: float | None, shape, plan, n_devices: int) -> bool:
    """11 练习 1: GB each GPU sends per optimizer step when DDP all-reduces the LoRA gradients."""
    from helpers.multi_gpu import step_traffic

    if _unanswered(answer):
        return False
    expected = step_traffic(shape, plan, "ddp", n_devices)["GB_per_gpu"]
    assert abs(answer - expected) <= 0.02 * expected, (
        f"{answer} 不对。提示：LoRA 可训练参数个数 × 4 字节（fp32 梯度）× 2(n-1)/n，"
        "再除以 2**30（vram.estimate_vram(...).trainable_params 给出参数个数）。"
    )
    print(f"✅ 正确：每步每卡发送约 {expected * 1024:.0f} MB，PCIe 上不到 0.1 秒。")
    return True


def check_11_2(answer: tuple | None, table, vram_gb: float = 24.0) -> bool:
    """11 练习 2: the fewest GPUs, and a strategy, for 16-bit LoRA on Qwen2.5-32B, no offload."""
    if _unanswered(answer):
        return False
    rows = table[(table["model"] == "32B") & (table["method"] == "lora")].set_index("GPUs")
    no_offload = [c for c in ("ddp", "zero2", "zero3") if c in rows.columns]
    fewest = min(n for n, row in rows.iterrows() if (row[no_offload] <= vram_gb).any())
    n, strategy = answer
    assert n == fewest, f"{n} 块不对：看 32B / lora 的行，不带 offload 的列里最早放得下的是几块卡。"
    assert strategy in no_offload and rows.loc[n, strategy] <= vram_gb, (
        f"{strategy} 在 {n} 块卡上每卡要 {rows.loc[n, strategy]} GB，放不下 {vram_gb:g} GB。"
    )
    print(f"✅ 正确：{n} 块 {vram_gb:g} GB 的卡用 {strategy}，每卡约 {rows.loc[n, strategy]} GB。")
    return True


def check_08_1(answer: float | None, curve) -> bool:
    """08 练习 1: how much the training loss fell, first logged step minus last, from the events."""
    if _unanswered(answer):
        return False
    expected = curve[0][1] - curve[-1][1]
    assert abs(answer - expected) <= 1e-6 + 1e-6 * abs(expected), (
        f"{answer} 不对。提示：loss_curve(client, job.id) 按 step 排好了 (step, loss)，"
        "第一个减最后一个；只看 type == 'metrics' 且带 train_loss 的事件。"
    )
    first, last = curve[0][1], curve[-1][1]
    print(f"✅ 正确：训练 loss 从 {first:.3f} 降到 {last:.3f}（降了 {expected:.3f}）。")
    return True


def check_08_2(answer: int | None, n_rows: int, hyper: dict, profile) -> bool:
    """08 练习 2: the optimizer steps a job runs for ``n_rows`` examples and ``hyper``."""
    import math

    from helpers.jobs.validate import hyperparameters

    if _unanswered(answer):
        return False
    plan, _ = hyperparameters({"hyperparameters": hyper}, profile, n_rows)
    expected = plan.n_epochs * math.ceil(n_rows / plan.batch_size)
    assert answer == expected, (
        f"{answer} 步不对。提示：batch_size 是每个优化步的样本数（每卡 batch × 梯度累积），"
        "每个 epoch 的步数向上取整，再乘 n_epochs。"
    )
    per_epoch = math.ceil(n_rows / plan.batch_size)
    print(f"✅ 正确：{plan.n_epochs} 个 epoch × 每 epoch {per_epoch} 步 = {expected} 步。")
    return True
