"""Checks for the exercises of notebooks 05-11 (quantization to multi-GPU)."""

from __future__ import annotations

from helpers.exercises.common import unanswered


def check_05_1(answer: float | None, gguf_path, n_params: int) -> bool:
    """05 练习 1: average bits per weight of a GGUF file."""
    from pathlib import Path

    if unanswered(answer):
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
    if unanswered(answer):
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

    if unanswered(headers):
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

    if unanswered(answer):
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
    if unanswered(answer):
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
    if unanswered(answer) or unanswered(model):
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
    if unanswered(answer):
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
    if unanswered(strong):
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

    if unanswered(answer):
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
    if unanswered(model):
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

    if unanswered(answer):
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
    if unanswered(answer):
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
    if unanswered(answer):
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

    if unanswered(answer):
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
