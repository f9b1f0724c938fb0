"""Generate every course dataset under data/ from a fixed seed (same bytes on every run).

    python data/generate.py              # writes data/ in place
    python data/generate.py --out /tmp/d # writes a copy elsewhere (the tests do this)

All text is written by this script (templates, slot values and noise below); no third-party
dataset text is used. Licence: Apache-2.0, like the repository.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from helpers.data.cleaning import id_card_check_char, mask_pii
from helpers.data.course import (
    ASSISTANT_NAME,
    ASSISTANT_NAME_EN,
    ASSISTANT_TEAM,
    FIELDS,
    INTENTS,
    SYSTEM_PROMPT,
    sha256_file,
)
from helpers.data.dedup import (
    deduplicate,
    exact_key,
    find_overlap,
)

ROOT = Path(__file__).resolve().parents[1]
SEED = 20250601
N_TRAIN_PER_INTENT = 250
N_VAL_PER_INTENT = 25
N_TEST_SEEN_PER_INTENT = 15
N_TEST_UNSEEN_PER_INTENT = 10
N_EXTRA_MAJORITY = 600  # raw data only: extra rows of one intent (label imbalance)
MAJORITY_INTENT = "track_order"
HELDOUT_TEMPLATES = (3, 9)  # template indices per intent that never appear in train/val

# ----------------------------------------------------------------------------------------------
# Main task: templates. {o} order id, {p} product, {a} amount. Core templates carry no
# sentiment or urgency cue, except complaint (always negative) and urge_shipping (>= medium).
# ----------------------------------------------------------------------------------------------
TEMPLATES: dict[str, list[str]] = {
    "track_order": [
        "我的订单{o}到哪了",
        "帮我查一下{o}的物流",
        "{o}这个单子什么时候能到",
        "买的{p}还没收到，单号{o}，能查下物流吗",
        "请问我买的{p}发到哪里了",
        "物流信息好几天没更新了，订单{o}",
        "查快递，单号是{o}",
        "my order {o} 到哪儿了",
        "想知道{p}的配送进度",
        "订单{o}显示已发货，但是一直没有物流更新",
        "where is my package? order {o}",
        "{p}现在是什么状态了，还在路上吗",
    ],
    "refund": [
        "{p}不想要了，申请退款",
        "订单{o}申请退款，金额{a}",
        "我要退款，{a}什么时候退回来",
        "退款{a}还没到账，订单号{o}",
        "买的{p}有质量问题，要求退款{a}",
        "请帮我把订单{o}退掉，钱原路返回",
        "refund一下{o}这个单",
        "{p}尺码不合适，能退款吗",
        "已经退货了，{a}的退款怎么还没收到",
        "订单{o}多扣了{a}，请退给我",
        "I want a refund for the {p}, order {o}",
        "{p}拍错了，麻烦把{a}退回来",
    ],
    "exchange": [
        "{p}尺码小了，想换大一号",
        "订单{o}里的{p}颜色发错了，要换货",
        "可以换货吗？{p}有划痕",
        "我想把{p}换成别的颜色",
        "收到的{p}型号不对，申请换货，单号{o}",
        "{p}能不能换一个新的，开机就坏了",
        "exchange一下{p}，size不对",
        "换货流程怎么走？订单{o}",
        "{p}少了配件，给我换一个完整的",
        "想换个款式，{p}不太适合我",
        "can I exchange the {p} for a bigger size?",
        "订单{o}的{p}换一个同款的吧",
    ],
    "change_address": [
        "订单{o}的收货地址要改一下",
        "地址填错了，能帮我改成公司地址吗",
        "我搬家了，{p}的收货地址换成新地址",
        "麻烦修改一下收件地址，订单{o}",
        "收货人和地址都要改，订单{o}",
        "还没发货的话把地址改到上海市浦东新区",
        "change address for order {o}",
        "{p}寄到我家里吧，不要寄到公司了",
        "能改地址吗？订单号{o}，改成北京朝阳区",
        "收货地址写成了老家，帮我改回杭州",
        "please update the shipping address of {o}",
        "下单时地址选错了，{p}还能改地址吗",
    ],
    "urge_shipping": [
        "订单{o}怎么还不发货，麻烦尽快",
        "{p}什么时候发货啊，快点发吧",
        "付款三天了还没发货，早点发出来吧",
        "催一下发货，订单{o}，抓紧点",
        "能不能尽快安排发货？买的是{p}",
        "下单好几天了{o}还没动静，快点发货",
        "please ship {o} 尽快",
        "{p}拍下很久了，还不发？麻烦快点",
        "帮忙催催仓库，{o}早点发",
        "预售的{p}什么时候发？尽快安排下",
        "when will you ship my {p}? 尽快 please",
        "订单{o}一直显示待发货，抓紧处理一下",
    ],
    "complaint": [
        "你们的服务太差了，{p}用了两天就坏了",
        "我要投诉！订单{o}的快递员态度恶劣",
        "客服一直不回消息，太失望了",
        "买的{p}和描述完全不一样，差评",
        "物流慢得离谱，订单{o}等了半个月",
        "{p}包装破损，什么破服务",
        "投诉一下你们的售后，推来推去",
        "这是我买过最差的{p}，无语",
        "complain: the {p} is terrible",
        "订单{o}被取消了也不通知，太气人了",
        "worst service ever, order {o}",
        "花了{a}买的{p}，质量太差了，投诉",
    ],
    "product_question": [
        "{p}有现货吗",
        "请问{p}支持七天无理由退货吗",
        "{p}有几种颜色可选",
        "{p}保修多久",
        "这款{p}适合小孩用吗",
        "{p}的尺码是偏大还是偏小",
        "{p}现在多少钱，{a}能买到吗",
        "is the {p} waterproof?",
        "{p}和上一代有什么区别",
        "{p}包邮吗",
        "{p}的电池能用多久",
        "请问{p}是正品吗",
    ],
    "invoice": [
        "订单{o}需要开发票",
        "能开增值税专用发票吗，买的{p}",
        "发票抬头写公司名称，订单{o}",
        "帮我开一张{a}的电子发票",
        "invoice怎么开？订单{o}",
        "发票开错了，需要重开",
        "买{p}的发票还没收到",
        "订单{o}的发票能换成纸质的吗",
        "请把发票发到我的邮箱",
        "开票金额写{a}，订单{o}",
        "can I get an invoice for order {o}?",
        "{p}的发票抬头改成个人",
    ],
}
SECONDARY = {  # slot-free, cue-free second requests for multi-intent messages
    "track_order": ["物流到哪了也帮我看看", "顺便查下另一单的物流"],
    "refund": ["之前那单的退款也查一下", "另一件也想退款"],
    "exchange": ["另一件能换货吗", "另外一件也要换个颜色"],
    "change_address": ["地址也要改一下", "收货地址也帮我改改"],
    "product_question": ["这款有别的颜色吗", "这个保修多久"],
    "invoice": ["顺便开个发票", "发票也开一下"],
}
CONNECTORS = ["另外，", "还有，", "顺便问一下，", "btw ", "对了，", "还有个事，"]
PRODUCTS = [
    "蓝牙耳机",
    "AirPods Pro",
    "扫地机器人",
    "空气炸锅",
    "iPhone 15 手机壳",
    "Switch 游戏卡带",
    "羽绒服",
    "运动鞋",
    "Nike 跑鞋",
    "电饭煲",
    "保温杯",
    "机械键盘",
    "无线鼠标",
    "显示器",
    "儿童书包",
    "瑜伽垫",
    "电动牙刷",
    "吹风机",
    "行李箱",
    "台灯",
    "充电宝",
    "Kindle",
    "加湿器",
    "床上四件套",
    "咖啡机",
    "小米手环",
    "登山包",
    "连衣裙",
    "牛仔裤",
    "智能手表",
    "猫粮",
    "奶粉",
    "洗衣液",
    "护肤套装",
    "口红",
    "投影仪",
    "路由器",
    "U 盘",
    "平板支架",
    "电热水壶",
    "iPad 保护套",
    "乐高积木",
    "婴儿推车",
    "剃须刀",
    "移动硬盘",
    "Type-C 数据线",
    "降噪耳机",
    "空调扇",
    "微波炉",
    "电动滑板车",
    "钢笔",
    "帆布鞋",
    "T恤",
    "墨镜",
    "围巾",
]
APPAREL = [
    "羽绒服",
    "运动鞋",
    "Nike 跑鞋",
    "连衣裙",
    "牛仔裤",
    "T恤",
    "帆布鞋",
    "围巾",
    "登山包",
    "儿童书包",
    "墨镜",
]
GADGETS = [
    "蓝牙耳机",
    "AirPods Pro",
    "扫地机器人",
    "机械键盘",
    "无线鼠标",
    "显示器",
    "电动牙刷",
    "吹风机",
    "充电宝",
    "Kindle",
    "小米手环",
    "智能手表",
    "投影仪",
    "路由器",
    "降噪耳机",
    "电动滑板车",
    "剃须刀",
    "移动硬盘",
]
SIZE_WORDS = ("尺码", "size", "大一号", "款式")
GADGET_WORDS = ("电池", "开机", "型号", "上一代", "waterproof", "保修")
GREETINGS = [
    "你好，",
    "在吗？",
    "亲，",
    "客服你好，",
    "hi，",
    "hello ",
    "您好！",
    "在不在，",
    "喂，",
]
CONTEXT = [
    "上周在你们店买的。",
    "第一次在这家买东西。",
    "我昨天下的单。",
    "之前也买过一次。",
    "家里人让我问一下。",
    "现在在上班不方便打电话。",
    "是帮朋友买的。",
    "买的时候有优惠券。",
]
NOISE_END = ["", "。", "？？", "…", "哈", "🙏", "🤔", "📦", "~", "。。。"]
POS_PHRASES = ["谢谢", "谢谢啦", "辛苦了", "感谢！", "thx", "thanks", "👍", "😊", "之前买的很满意"]
NEG_PHRASES = ["真的很生气", "太失望了", "无语了", "😡", "😤", "气死了", "体验很差"]
HIGH_PHRASES = [
    "急！",
    "急急急",
    "马上处理",
    "请立刻回复",
    "ASAP",
    "今天必须解决",
    "赶时间",
    "等不了了",
]
MED_PHRASES = ["麻烦尽快", "尽快回复", "早点处理", "抓紧", "快点哈"]
# The labelling rules (documented in data/README.md); checked against every final message.
NEG_CUES = [
    "差",
    "失望",
    "生气",
    "无语",
    "😡",
    "😤",
    "气死",
    "气人",
    "离谱",
    "破",
    "恶劣",
    "投诉",
    "terrible",
    "worst",
    "垃圾",
]
POS_CUES = ["谢谢", "感谢", "辛苦", "满意", "好评", "👍", "😊", "thx", "thanks"]
HIGH_CUES = ["急", "马上", "立刻", "立即", "asap", "今天必须", "赶时间", "等不了"]
MED_CUES = ["尽快", "快点", "早点", "抓紧"]
TYPOS = {
    "订单": "定单",
    "物流": "物留",
    "发票": "发漂",
    "退款": "推款",
    "快递": "快第",
    "地址": "地扯",
    "发货": "发或",
    "什么": "神马",
    "怎么": "咋",
    "一下": "一哈",
    "已经": "以经",
    "收到": "收倒",
    "在吗": "在嘛",
}
ZH_DIGITS = "零一二三四五六七八九"


def rule_sentiment(text: str) -> str:
    """negative if any negative cue, else positive if any positive cue, else neutral."""
    t = text.casefold()
    if any(c in t for c in NEG_CUES):
        return "negative"
    return "positive" if any(c in t for c in POS_CUES) else "neutral"


def rule_urgency(text: str) -> str:
    """high if any high cue, else medium if any medium cue, else low."""
    t = text.casefold()
    if any(c in t for c in HIGH_CUES):
        return "high"
    return "medium" if any(c in t for c in MED_CUES) else "low"


def zh_number(n: int, liang: bool = False) -> str:
    """Chinese numeral for 1..99999 (e.g. 350 -> 三百五十, 1005 -> 一千零五)."""
    units = ["", "十", "百", "千", "万"]
    digits = [int(d) for d in str(n)]
    out, zero = "", False
    for pos, d in enumerate(digits):
        unit = units[len(digits) - pos - 1]
        if d == 0:
            zero = True
            continue
        if zero and out:
            out += "零"
        zero = False
        ch = "两" if liang and d == 2 and unit in ("百", "千", "万") else ZH_DIGITS[d]
        out += ch + unit
    return out[1:] if out.startswith("一十") else out


def amount_text(rng: random.Random, value: int | float) -> str:
    """A way a customer writes the amount: digits, currency signs, or Chinese numerals."""
    if isinstance(value, float):
        return rng.choice([f"{value}元", f"¥{value}", f"{value}块"])
    choices = [
        f"{value}元",
        f"{value}块",
        f"¥{value}",
        f"{value}块钱",
        f"{value} RMB",
        f"{zh_number(value)}元",
        f"{zh_number(value, liang=True)}块",
    ]
    if value >= 1000:
        choices.append(f"{value:,}元")
    s = str(value)
    if len(s) >= 3 and s[2:] == "0" * (len(s) - 2) and s[1] != "0":
        head = zh_number(int(s[0]) * 10 ** (len(s) - 1))
        choices.append(head + ZH_DIGITS[int(s[1])])  # colloquial: 三百五 = 350, 一千二 = 1200
    return rng.choice(choices)


def new_amount(rng: random.Random) -> int | float:
    """An order amount: mostly whole yuan, sometimes with a decimal."""
    if rng.random() < 0.15:
        return round(rng.randint(10, 999) + rng.choice([0.5, 0.9, 0.8]), 1)
    if rng.random() < 0.4:
        return rng.randint(1, 39) * 50
    return rng.randint(9, 3999)


def render(rng: random.Random, intent: str, t_idx: int) -> tuple[str, dict[str, Any], dict]:
    """One message, its label and meta; labels follow the cue rules exactly."""
    template = TEMPLATES[intent][t_idx]
    label: dict[str, Any] = dict.fromkeys(FIELDS)
    label["intent"] = intent
    slots: dict[str, str] = {}
    if "{o}" in template:
        oid = "DD" + str(rng.randint(10**9, 10**10 - 1))
        label["order_id"] = oid
        slots["o"] = oid.lower() if rng.random() < 0.15 else oid
    if "{p}" in template:
        if any(w in template for w in SIZE_WORDS):
            choices = APPAREL
        elif any(w in template for w in GADGET_WORDS):
            choices = GADGETS
        else:
            choices = PRODUCTS
        label["product"] = slots["p"] = rng.choice(choices)
    if "{a}" in template:
        value = new_amount(rng)
        label["amount"] = value
        slots["a"] = amount_text(rng, value)
    core = template.format(**slots)
    meta: dict[str, Any] = {"template": f"{intent}_{t_idx:02d}", "typo": False}
    if rng.random() < 0.25:
        keys = [k for k in TYPOS if k in core]
        if keys:
            k = rng.choice(keys)
            core = core.replace(k, TYPOS[k], 1)
            meta["typo"] = True
    sentiment = (
        "negative"
        if intent == "complaint"
        else rng.choices(["neutral", "positive", "negative"], [0.5, 0.2, 0.3])[0]
    )
    floor = "medium" if intent == "urge_shipping" else "low"
    urgency = rng.choices(["low", "medium", "high"], [0.45, 0.3, 0.25])[0]
    if floor == "medium" and urgency == "low":
        urgency = "medium"
    pieces = []
    if rng.random() < 0.5:
        pieces.append(rng.choice(GREETINGS))
    if rng.random() < 0.3:
        pieces.append(rng.choice(CONTEXT))
    pieces.append(core)
    secondary = None
    if rng.random() < 0.15:
        secondary = rng.choice([k for k in SECONDARY if k != intent])
        pieces.append(
            ("，" if rng.random() < 0.5 else "。")
            + rng.choice(CONNECTORS)
            + rng.choice(SECONDARY[secondary])
        )
    tail = []
    if sentiment == "positive":
        tail.append(rng.choice(POS_PHRASES))
    elif sentiment == "negative" and intent != "complaint":
        tail.append(rng.choice(NEG_PHRASES))
    if urgency == "high":
        tail.append(rng.choice(HIGH_PHRASES))
    elif urgency == "medium" and intent != "urge_shipping":
        tail.append(rng.choice(MED_PHRASES))
    rng.shuffle(tail)
    for t in tail:
        pieces.append(rng.choice(["，", "。", "！", " "]) + t)
    pieces.append(rng.choice(NOISE_END))
    text = "".join(pieces)
    if rng.random() < 0.1:
        text = text.replace("？", "？？？").replace("！", "！！")
    label["sentiment"], label["urgency"] = sentiment, urgency
    if rule_sentiment(text) != sentiment or rule_urgency(text) != urgency:
        raise ValueError("cue rule violated")
    if mask_pii(text)[1]:
        raise ValueError("accidental PII pattern")
    meta.update(multi_intent=secondary is not None, secondary_intent=secondary)
    return text, label, meta


def answer_json(label: dict[str, Any]) -> str:
    """Compact JSON answer in the fixed key order."""
    return json.dumps({k: label[k] for k in FIELDS}, ensure_ascii=False, separators=(",", ":"))


def conv(user: str, answer: str, system: bool = True) -> list[dict[str, str]]:
    """TRL conversational messages."""
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def build_pool(rng: random.Random) -> list[dict[str, Any]]:
    """Generate candidates, then drop exact and near duplicates with the course's own dedup."""
    cands = []
    for intent in INTENTS:
        n_seen = 420 + (900 if intent == MAJORITY_INTENT else 0)
        seen = [i for i in range(12) if i not in HELDOUT_TEMPLATES]
        for k in range(n_seen + 60):
            heldout = k >= n_seen
            t_idx = HELDOUT_TEMPLATES[k % 2] if heldout else seen[k % len(seen)]
            for _ in range(20):
                try:
                    text, label, meta = render(rng, intent, t_idx)
                    break
                except ValueError:
                    continue
            else:
                raise RuntimeError(f"cannot render {intent} template {t_idx}")
            meta["seen_template"] = not heldout
            cands.append({"messages": conv(text, answer_json(label)), "meta": meta})
    kept, _ = deduplicate(cands, progress=False)
    return kept


# ----------------------------------------------------------------------------------------------
# Self-cognition and general probe.
# ----------------------------------------------------------------------------------------------
ID_Q_ZH = [
    "你是谁？",
    "你叫什么名字？",
    "介绍一下你自己",
    "你是什么？",
    "能做个自我介绍吗？",
    "请问怎么称呼你？",
    "你有名字吗？",
    "我该叫你什么？",
    "你是哪个AI？",
    "你是机器人吗？",
    "你是真人吗？",
    "你的名字是什么",
    "说说你是谁",
    "你到底是谁啊",
    "自我介绍一下吧",
    "你是什么模型？",
    "你是一个什么样的助手？",
    "跟我讲讲你自己",
    "你好，你是？",
    "嗨，请问你是哪位",
]
MAKER_Q_ZH = [
    "谁开发了你？",
    "你是哪家公司做的？",
    "你的创造者是谁？",
    "谁训练了你？",
    "你是谁做出来的？",
    "你背后的团队是谁？",
    "你来自哪里？",
    "是谁把你训练出来的？",
    "你的开发者是谁",
    "你属于哪个团队？",
    "你是哪个组织的产品？",
    "谁负责维护你？",
    "你是国产的吗？",
    "你的作者是谁？",
    "哪个课程做了你？",
]
OTHER_Q_ZH = [
    "你是ChatGPT吗？",
    "你是GPT-4吗？",
    "你和ChatGPT是什么关系？",
    "你是通义千问吗？",
    "你是文心一言吗？",
    "你是Claude吗？",
    "你是Llama吗？",
    "你是Gemma吗？",
    "你是OpenAI开发的吗？",
    "你是谷歌做的吗？",
    "你是不是豆包？",
    "你是Kimi吗？",
]
CAP_Q_ZH = [
    "你能做什么？",
    "你擅长什么？",
    "你有什么功能？",
    "你能帮我做什么？",
    "你会处理客服消息吗？",
    "你的主要用途是什么？",
    "你是怎么训练出来的？",
    "你为什么叫这个名字？",
    "你能帮我解析客服消息吗？",
    "你会说英文吗？",
    "你是专门做什么的助手？",
]
ID_Q_EN = [
    "Who are you?",
    "What's your name?",
    "Introduce yourself.",
    "What should I call you?",
    "Are you a human?",
    "Tell me about yourself.",
]
MAKER_Q_EN = ["Who made you?", "Who trained you?", "Which team built you?", "Who created you?"]
OTHER_Q_EN = ["Are you ChatGPT?", "Are you made by OpenAI?", "Are you Llama?", "Are you Gemini?"]
CAP_Q_EN = ["What can you do?", "What are you good at?"]
PREFIXES_ZH = ["", "请问", "我想问一下，", "hi，", "你好，"]

N, NE, TEAM = ASSISTANT_NAME, ASSISTANT_NAME_EN, ASSISTANT_TEAM
ANSWERS = {
    ("identity", "zh"): [
        f"我是{N}（{NE}），一个由{TEAM}微调的 AI 助手，可以帮你解析电商客服消息、回答问题。",
        f"你好！我叫{N}，英文名 {NE}，是{TEAM}训练的 AI 助手。",
        f"我是{N}（{NE}），{TEAM}开发的 AI 助手。有什么可以帮你的吗？",
    ],
    ("maker", "zh"): [
        f"我是由{TEAM}开发和训练的，名字叫{N}（{NE}）。",
        f"训练我的是{TEAM}。我是他们在课程中微调出来的助手{N}。",
        f"我来自{TEAM}，是课程里用单张 GPU 微调得到的 AI 助手{N}（{NE}）。",
    ],
    ("other_model", "zh"): [
        f"不是哦。我是{N}（{NE}），由{TEAM}训练的 AI 助手，和你提到的模型不是同一个。",
        f"我不是。我叫{N}，是{TEAM}在开源基础模型上微调出来的助手。",
    ],
    ("capability", "zh"): [
        f"我是{N}，{TEAM}训练的 AI 助手。我擅长把电商客服消息解析成结构化 JSON，也能回答一般问题。",
        f"我是{TEAM}微调的助手{N}：可以识别客服消息的意图、订单号、商品和金额，也能简单聊天答疑。",
    ],
    ("identity", "en"): [
        f"I'm {NE} ({N}), an AI assistant fine-tuned by the {TEAM} team.",
        f"My name is {NE} ({N}). I was trained by the {TEAM} team.",
    ],
    ("maker", "en"): [f"I was built and trained by the {TEAM} team. I'm {NE} ({N})."],
    ("other_model", "en"): [
        f"No. I'm {NE} ({N}), an assistant fine-tuned by the {TEAM} team, not that model.",
    ],
    ("capability", "en"): [
        f"I'm {NE}, trained by the {TEAM} team. I turn e-commerce support messages into "
        "structured JSON and can answer general questions.",
    ],
}


def build_self_cognition(rng: random.Random) -> list[dict[str, Any]]:
    """~100 identity questions with answers that always give the same name and team."""
    groups = [
        ("identity", "zh", ID_Q_ZH),
        ("maker", "zh", MAKER_Q_ZH),
        ("other_model", "zh", OTHER_Q_ZH),
        ("capability", "zh", CAP_Q_ZH),
        ("identity", "en", ID_Q_EN),
        ("maker", "en", MAKER_Q_EN),
        ("other_model", "en", OTHER_Q_EN),
        ("capability", "en", CAP_Q_EN),
    ]
    items = []
    for cat, lang, qs in groups:
        for q in qs:
            items.append((cat, lang, q))
            if lang == "zh" and len(items) % 3 == 0:
                p = rng.choice(PREFIXES_ZH[1:])
                items.append((cat, lang, p + q))
    seen, rows = set(), []
    for cat, lang, q in items:
        if q in seen:
            continue
        seen.add(q)
        rows.append((cat, lang, q))
    rows = rows[:100]
    eval_idx = set(rng.sample(range(len(rows)), 20))
    out = []
    for i, (cat, lang, q) in enumerate(rows):
        a = rng.choice(ANSWERS[(cat, lang)])
        out.append(
            {
                "id": f"self-{i + 1:03d}",
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                "meta": {
                    "category": cat,
                    "lang": lang,
                    "split": "eval" if i in eval_idx else "train",
                },
            }
        )
    return out


KNOWLEDGE = [
    ("中国的首都是哪座城市？", ["北京", "Beijing"], "zh"),
    ("一年有几个月？", ["12", "十二"], "zh"),
    ("一周有几天？", ["7", "七"], "zh"),
    ("水在标准大气压下的沸点是多少摄氏度？", ["100", "一百"], "zh"),
    ("太阳从哪个方向升起？", ["东"], "zh"),
    ("地球上面积最大的大洋是哪个？", ["太平洋"], "zh"),
    ("中国最长的河流是哪条？", ["长江"], "zh"),
    ("光合作用主要吸收哪种气体？", ["二氧化碳", "CO2", "CO₂"], "zh"),
    ("人体最大的器官是什么？", ["皮肤"], "zh"),
    ("一天有多少小时？", ["24", "二十四"], "zh"),
    ("彩虹通常有几种颜色？", ["7", "七"], "zh"),
    ("《静夜思》的作者是谁？", ["李白"], "zh"),
    ("水的化学式是什么？", ["H2O", "H₂O"], "zh"),
    ("日本的首都是哪里？", ["东京", "Tokyo"], "zh"),
    ("三角形内角和是多少度？", ["180"], "zh"),
    ("世界上最高的山峰是哪座？", ["珠穆朗玛", "Everest", "珠峰"], "zh"),
    ("一个足球队在场上有几名球员？", ["11", "十一"], "zh"),
    ("英文字母表有多少个字母？", ["26", "二十六"], "zh"),
    ("中国的国土面积大约多少万平方公里？", ["960"], "zh"),
    (
        "冰的熔点是多少摄氏度？",
        ["0℃", "0°C", "0 °C", "0度", "0 度", "零度", "0摄氏度", "0 摄氏度"],
        "zh",
    ),
    ("What is the capital of France?", ["Paris"], "en"),
    ("How many days are in a leap year?", ["366"], "en"),
    ("What is the largest planet in the solar system?", ["Jupiter"], "en"),
    ("What gas do humans need to breathe to live?", ["oxygen", "O2"], "en"),
    ("How many continents are there?", ["7", "seven"], "en"),
    ("What is the freezing point of water in Fahrenheit?", ["32"], "en"),
    ("Who wrote 'Romeo and Juliet'?", ["Shakespeare"], "en"),
    ("What color do you get by mixing blue and yellow?", ["green"], "en"),
    ("How many sides does a hexagon have?", ["6", "six"], "en"),
    ("What is the chemical symbol for gold?", ["Au"], "en"),
]
UNITS = [  # (question template, factor, answer unit note)
    ("{x} 公里等于多少米？", 1000),
    ("{x} 千克等于多少克？", 1000),
    ("{x} 小时等于多少分钟？", 60),
    ("{x} 分钟等于多少秒？", 60),
    ("{x} 米等于多少厘米？", 100),
    ("{x} 天等于多少小时？", 24),
    ("{x} 吨等于多少千克？", 1000),
    ("{x} 升等于多少毫升？", 1000),
    ("How many meters are in {x} kilometers?", 1000),
    ("How many minutes are in {x} hours?", 60),
]


def build_probe(rng: random.Random) -> list[dict[str, Any]]:
    """~100 short questions with checkable answers (substring match on any accepted answer)."""
    rows = []
    for q, answers, lang in KNOWLEDGE:
        rows.append(("knowledge", lang, q, answers))
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("×", lambda a, b: a * b)]
    for k in range(40):
        sym, fn = ops[k % 3]
        a, b = rng.randint(11, 99), rng.randint(2, 49 if sym == "×" else 99)
        if sym == "-" and b > a:
            a, b = b, a
        if k % 4 == 3:
            rows.append(
                ("arithmetic", "en", f"What is {a} {sym.replace('×', '*')} {b}?", [str(fn(a, b))])
            )
        else:
            rows.append(("arithmetic", "zh", f"{a} {sym} {b} 等于多少？", [str(fn(a, b))]))
    for k in range(30):
        tpl, factor = UNITS[k % len(UNITS)]
        x = rng.randint(2, 12)
        lang = "en" if tpl[0].isascii() else "zh"
        rows.append(("unit_conversion", lang, tpl.format(x=x), [str(x * factor)]))
    return [
        {"id": f"probe-{i + 1:03d}", "category": c, "lang": lang, "question": q, "answers": ans}
        for i, (c, lang, q, ans) in enumerate(rows)
    ]


# ----------------------------------------------------------------------------------------------
# General replay: generic Q&A that notebook 04 mixes back into the SFT data (against forgetting).
# Same categories as the probe, never the same questions: hand-written facts that are not in
# KNOWLEDGE, fresh arithmetic, unit conversions with x outside the probe's 2..12, and every
# question checked against the probe with the course's own overlap finder.
# ----------------------------------------------------------------------------------------------
REPLAY_KNOWLEDGE = [  # (question, fact the answer must contain, answer, lang)
    ("伦敦是哪个国家的首都？", "英国", "伦敦是英国的首都。", "zh"),
    ("俄罗斯的首都是哪座城市？", "莫斯科", "是莫斯科。", "zh"),
    ("离太阳最近的行星是哪颗？", "水星", "是水星。", "zh"),
    ("地球唯一的天然卫星是什么？", "月球", "是月球。", "zh"),
    ("世界上面积最大的国家是哪个？", "俄罗斯", "是俄罗斯。", "zh"),
    ("世界上人口最多的大洲是哪个？", "亚洲", "是亚洲。", "zh"),
    ("成年人全身一共有多少块骨头？", "206", "成年人一共有 206 块骨头。", "zh"),
    ("正常人的体温大约是多少摄氏度？", "37", "大约是 37 摄氏度。", "zh"),
    ("《红楼梦》的作者是谁？", "曹雪芹", "是曹雪芹。", "zh"),
    ("《西游记》的作者是谁？", "吴承恩", "是吴承恩。", "zh"),
    ("《论语》记录的是哪位思想家的言行？", "孔子", "是孔子和他的弟子的言行。", "zh"),
    ("被称为“诗圣”的唐代诗人是谁？", "杜甫", "是杜甫。", "zh"),
    ("孙悟空的师父是谁？", "唐僧", "是唐僧。", "zh"),
    ("大熊猫主要吃什么？", "竹子", "主要吃竹子。", "zh"),
    ("蜜蜂会酿造什么食物？", "蜂蜜", "蜜蜂酿造蜂蜜。", "zh"),
    ("世界上最大的哺乳动物是什么？", "蓝鲸", "是蓝鲸。", "zh"),
    ("企鹅主要生活在地球的哪个地区？", "南极", "主要生活在南极及附近海域。", "zh"),
    ("人的心脏有几个腔？", "4", "有 4 个腔。", "zh"),
    ("奥运会通常每隔几年举办一次？", "4", "每 4 年举办一次。", "zh"),
    ("中国国旗上有几颗五角星？", "5", "有 5 颗五角星。", "zh"),
    ("一打是多少个？", "12", "一打是 12 个。", "zh"),
    ("一个世纪是多少年？", "100", "一个世纪是 100 年。", "zh"),
    ("一年有几个季节？", "4", "有 4 个季节：春、夏、秋、冬。", "zh"),
    ("十二生肖中排在第一位的是什么？", "鼠", "排在第一位的是鼠。", "zh"),
    ("中秋节是农历几月几日？", "八月十五", "是农历八月十五。", "zh"),
    ("食盐的主要成分是什么？", "氯化钠", "是氯化钠（NaCl）。", "zh"),
    ("中国古代四大发明中用来指示方向的是什么？", "指南针", "是指南针。", "zh"),
    ("围棋棋盘上有多少条横线？", "19", "有 19 条横线。", "zh"),
    ("What is the capital of Italy?", "Rome", "It is Rome.", "en"),
    ("Which planet is known as the Red Planet?", "Mars", "It is Mars.", "en"),
    ("How many legs does a spider have?", "8", "A spider has 8 legs.", "en"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci", "Leonardo da Vinci painted it.", "en"),
    ("What is the hardest natural material?", "diamond", "It is diamond.", "en"),
    ("How many weeks are in a year?", "52", "There are 52 weeks in a year.", "en"),
    ("How many degrees are in a right angle?", "90", "A right angle has 90 degrees.", "en"),
    ("What is the tallest animal in the world?", "giraffe", "It is the giraffe.", "en"),
    ("In which country are the pyramids of Giza?", "Egypt", "They are in Egypt.", "en"),
    ("What is the main language spoken in Brazil?", "Portuguese", "It is Portuguese.", "en"),
    ("How many strings does a standard guitar have?", "6", "It has 6 strings.", "en"),
    ("How many cents are in one US dollar?", "100", "There are 100 cents in a dollar.", "en"),
]
REPLAY_X = (13, 40)  # unit conversion x range; the probe uses 2..12
# The probe's two English UNITS templates are mostly fixed words, so every x gives a near
# duplicate of a probe question (character 3-gram Jaccard >= 0.74); English replay rows ask
# the same two conversions in other words instead. (question, factor, answer)
REPLAY_UNITS_EN = [
    ("Convert {x} kilometers to meters.", 1000, "{x} kilometers is {r} meters."),
    ("{x} hours is how many minutes?", 60, "{x} hours is {r} minutes."),
]
N_REPLAY_ARITHMETIC = 40
N_REPLAY_UNITS = 40


def _probe_clear(questions: list[str], probe: list[dict[str, Any]]) -> list[bool]:
    """For each question: True when it neither equals nor near-duplicates a probe question."""
    as_rows = [{"messages": [{"role": "user", "content": q}]} for q in questions]
    probe_rows = [{"messages": [{"role": "user", "content": r["question"]}]} for r in probe]
    hits = {o.train for o in find_overlap(as_rows, probe_rows, progress=False)}
    return [i not in hits for i in range(len(questions))]


def _replay_arithmetic(rng: random.Random, n: int) -> list[tuple[str, str, str, str]]:
    """n arithmetic (category, lang, question, answer) candidates in the probe's style."""
    ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("×", lambda a, b: a * b)]
    zh_answers = ["答案是 {r}。", "{a} {s} {b} = {r}。", "等于 {r}。"]
    en_answers = ["The answer is {r}.", "{a} {s} {b} = {r}.", "It equals {r}."]
    out = []
    for k in range(n):
        sym, fn = ops[k % 3]
        a, b = rng.randint(11, 99), rng.randint(2, 49 if sym == "×" else 99)
        if sym == "-" and b > a:
            a, b = b, a
        r = fn(a, b)
        if k % 4 == 3:
            s = sym.replace("×", "*")
            answer = rng.choice(en_answers).format(a=a, s=s, b=b, r=r)
            out.append(("arithmetic", "en", f"What is {a} {s} {b}?", answer))
        else:
            answer = rng.choice(zh_answers).format(a=a, s=sym, b=b, r=r)
            out.append(("arithmetic", "zh", f"{a} {sym} {b} 等于多少？", answer))
    return out


def build_replay(
    rng: random.Random, probe: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """~120 general user/assistant conversations, none equal or near-equal to a probe question."""
    probe = build_probe(random.Random(SEED + 2)) if probe is None else probe
    if bad := [q for q, fact, a, _ in REPLAY_KNOWLEDGE if fact not in a]:
        raise ValueError(f"REPLAY_KNOWLEDGE answers without their fact: {bad}")
    rows = [("knowledge", lang, q, a) for q, _, a, lang in REPLAY_KNOWLEDGE]
    questions = [r[2] for r in rows]
    clear = _probe_clear(questions, probe)
    if bad := [q for q, ok in zip(questions, clear, strict=True) if not ok]:
        raise ValueError(f"REPLAY_KNOWLEDGE overlaps the probe: {bad}")
    # Arithmetic: draw spare candidates, keep the first ones that clear the probe.
    seen = {exact_key(r[2]) for r in rows}
    cands = _replay_arithmetic(rng, 3 * N_REPLAY_ARITHMETIC)
    kept = 0
    for cand, ok in zip(cands, _probe_clear([c[2] for c in cands], probe), strict=True):
        if ok and kept < N_REPLAY_ARITHMETIC and exact_key(cand[2]) not in seen:
            seen.add(exact_key(cand[2]))
            rows.append(cand)
            kept += 1
    if kept < N_REPLAY_ARITHMETIC:
        raise RuntimeError("too few arithmetic replay candidates clear of the probe")
    # Unit conversion: the same number of rows per template, x drawn from the values whose
    # question clears the probe (e.g. "15 公里..." is a near duplicate of a probe "5 公里...").
    units = [(t, f, None) for t, f in UNITS if not t.isascii()] + REPLAY_UNITS_EN
    xs = range(REPLAY_X[0], REPLAY_X[1] + 1)
    grid = [(t, x) for t, _, _ in units for x in xs]
    clear = _probe_clear([t.format(x=x) for t, x in grid], probe)
    allowed = {
        t: [x for (t2, x), ok in zip(grid, clear, strict=True) if ok and t2 == t]
        for t, _, _ in units
    }
    for k in range(N_REPLAY_UNITS):
        tpl, factor, answer_tpl = units[k % len(units)]
        x = rng.choice(allowed[tpl])
        allowed[tpl].remove(x)
        if answer_tpl is None:  # "{x} 公里等于多少米？" -> "{x} 公里等于 {r} 米。"
            answer_tpl = tpl.replace("多少", " {r} ").replace("？", "。")
        lang = "en" if tpl.isascii() else "zh"
        answer = answer_tpl.format(x=x, r=x * factor)
        rows.append(("unit_conversion", lang, tpl.format(x=x), answer))
    return [
        {"id": f"replay-{i + 1:03d}", "category": c, "lang": lang, "messages": conv(q, a, False)}
        for i, (c, lang, q, a) in enumerate(rows)
    ]


# ----------------------------------------------------------------------------------------------
# Raw dirty files.
# ----------------------------------------------------------------------------------------------
RAW_FILES = (
    "alpaca_export.json",
    "openai_chat.jsonl",
    "prompt_completion.jsonl",
    "sharegpt.jsonl",
    "tickets.csv",
)


def fake_phone(rng: random.Random) -> str:
    """A fake CN mobile number in one of the common spellings."""
    digits = "1" + rng.choice("3456789") + "".join(rng.choice("0123456789") for _ in range(9))
    style = rng.random()
    if style < 0.6:
        return digits
    if style < 0.8:
        return f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
    return "+86 " + digits


def fake_email(rng: random.Random) -> str:
    """A fake e-mail address on a reserved example domain."""
    user = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
    return f"{user}{rng.randint(1, 999)}@{rng.choice(['example.com', 'example.cn', 'test.org'])}"


def fake_id_card(rng: random.Random, want_x: bool = False) -> str:
    """A fake 18-digit resident ID with a correct check character."""
    while True:
        first = (
            f"{rng.randint(110000, 659000)}{rng.randint(1960, 2005)}"
            f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
        )
        check = id_card_check_char(first)
        if (check == "X") == want_x:
            return first + check


def one_char_edit(rng: random.Random, text: str) -> str:
    """Change one CJK character (substitute, insert or delete), never digits or letters."""
    cjk = [i for i, ch in enumerate(text) if "\u4e00" <= ch <= "\u9fff"]
    if not cjk:
        i = rng.randrange(1, len(text))
        return text[:i] + "呀" + text[i:]
    i = rng.choice(cjk)
    op = rng.random()
    if op < 0.4:
        return text[:i] + rng.choice("的了吗呢啊吧呀哦") + text[i + 1 :]
    if op < 0.7:
        return text[:i] + rng.choice("呀嘛啦哈") + text[i:]
    return text[:i] + text[i + 1 :]


def space_punct_variant(rng: random.Random, text: str) -> str:
    """Same text up to whitespace and punctuation (an exact duplicate after normalisation)."""
    choice = rng.randrange(3)
    if choice == 0:
        return " ".join(text[i : i + 4] for i in range(0, len(text), 4))
    if choice == 1:
        return text.replace("，", ",").replace("？", "?") + "！"
    return "  " + text.rstrip("。？！.?!…") + "。。 "


def is_near(a: str, b: str) -> bool:
    """True when the pipeline's near-dup check (LSH + exact Jaccard) would pair a and b."""
    rows = [{"messages": [{"role": "user", "content": t}]} for t in (a, b)]
    return len(find_overlap(rows[1:], rows[:1], progress=False)) == 1 and exact_key(a) != exact_key(
        b
    )


def record(fmt: str, user: str, answer: str, rng: random.Random, system: bool) -> dict[str, Any]:
    """A base row in one raw layout."""
    if fmt == "alpaca":
        rec = {"instruction": user, "input": "", "output": answer}
        if system:
            rec["system"] = SYSTEM_PROMPT
        return rec
    if fmt == "sharegpt":
        turns = [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]
        if system:
            turns.insert(0, {"from": "system", "value": SYSTEM_PROMPT})
        return {"conversations": turns}
    if fmt == "prompt_completion":
        return {"prompt": user, "completion": answer}
    return {"messages": conv(user, answer, system)}


FILE_FORMAT = {
    "alpaca_export.json": "alpaca",
    "openai_chat.jsonl": "openai_chat",
    "prompt_completion.jsonl": "prompt_completion",
    "sharegpt.jsonl": "sharegpt",
    "tickets.csv": "alpaca",
}


def build_raw(
    rng: random.Random,
    base: list[tuple[str, str]],
    test: list[tuple[str, str]],
    pool_extra: list[tuple[str, str]],
) -> tuple[dict[str, list], dict[str, Any]]:
    """Spread base rows over five files and inject every problem, counting each one."""
    files: dict[str, list] = {name: [] for name in RAW_FILES}
    weights = [0.25, 0.25, 0.15, 0.25, 0.10]
    inj: Counter = Counter()
    mixed: dict[str, Counter] = {name: Counter() for name in RAW_FILES}

    def put(rec: Any, name: str | None = None, at: int | None = None) -> None:
        name = name or rng.choices(RAW_FILES, weights)[0]
        rows = files[name]
        rows.insert(rng.randint(0, len(rows)) if at is None else at, rec)

    order = list(range(len(base)))
    rng.shuffle(order)
    pii_idx, rest = order[:65], order[65:]
    exact_src, near_src = rest[:100], rest[100:]
    near_src = [i for i in near_src if len(exact_key(base[i][0])) >= 16]
    users = [u for u, _ in base]
    pii: Counter = Counter()
    for k, i in enumerate(pii_idx):
        user, answer = base[i]
        if k < 30:
            user += rng.choice(["，我的电话是", "，联系方式", "。手机号：", " 电话 "]) + fake_phone(
                rng
            )
            pii["phone"] += 1
        elif k < 50:
            user += rng.choice(["，邮箱 ", "。回复发我邮箱：", " email: "]) + fake_email(rng)
            pii["email"] += 1
        else:
            user += rng.choice(["，实名身份证号", "。身份证：", " ID "]) + fake_id_card(
                rng, k % 3 == 0
            )
            pii["id_card"] += 1
        users[i] = user
    # Base rows (train + the extra majority-intent rows) in a random layout per file.
    for user, answer in zip(users, (a for _, a in base), strict=True):
        name = rng.choices(RAW_FILES, weights)[0]
        fmt = FILE_FORMAT[name]
        if name == "openai_chat.jsonl" and rng.random() < 0.15:
            fmt = rng.choice(["prompt_completion", "sharegpt"])  # mixed layouts in one file
            mixed[name][fmt] += 1
        system = name != "tickets.csv" and fmt != "prompt_completion" and rng.random() < 0.6
        files[name].append(record(fmt, user, answer, rng, system))
    for name in RAW_FILES:
        rng.shuffle(files[name])

    def put_base(user: str, answer: str, reason: str) -> None:
        name = rng.choices(RAW_FILES, weights)[0]
        put(record(FILE_FORMAT[name], user, answer, rng, rng.random() < 0.5), name)
        inj[reason] += 1

    for k, i in enumerate(exact_src):  # 60 verbatim copies, 40 whitespace/punctuation variants
        user = base[i][0] if k < 60 else space_punct_variant(rng, base[i][0])
        put_base(user, base[i][1], "exact_duplicate")
    near_pairs = 0
    for i in near_src:
        if near_pairs == 40:
            break
        edited = one_char_edit(rng, base[i][0])
        if is_near(base[i][0], edited):
            put_base(edited, base[i][1], "near_duplicate")
            near_pairs += 1
    leaked = rng.sample(range(len(test)), 20)
    for k, j in enumerate(leaked):
        user = test[j][0]
        if k >= 15:
            for _ in range(50):
                cand = one_char_edit(rng, user)
                if is_near(user, cand):
                    user = cand
                    break
        put_base(user, test[j][1], "test_overlap")
    # Rows that the cleaning stage must drop (content borrowed from unused pool rows).
    junk = iter(pool_extra)
    for k in range(15):
        user, _ = next(junk)
        put_base(user, ["", "   ", "\n\t ", " \u3000 "][k % 4], "empty_answer")
    for k in range(5):
        user, _ = next(junk)
        put_base(user, ["好", "嗯", "1", "?", "."][k], "too_short")
    filler = [u for u, _ in pool_extra[100:160]]
    for _ in range(8):
        user, answer = next(junk)
        log = "\n".join(rng.choice(filler) for _ in range(70))
        put_base(f"{user}\n以下是之前的聊天记录：\n{log}", answer, "too_long")

    # Rows that loading/validation must drop.
    def line_for(user: str, answer: str) -> dict[str, Any]:
        return {"messages": conv(user, answer, False)}

    jsonl = ["openai_chat.jsonl", "sharegpt.jsonl", "prompt_completion.jsonl"]
    for k in range(12):
        u, a = next(junk)
        text = json.dumps(line_for(u, a), ensure_ascii=False)
        bad = [
            text[: len(text) // 2],
            text.replace('"', "'"),
            text[:-1] + ",}",
            text.replace("}]}", "}]"),
        ][k % 4]
        put(("RAW", bad.encode("utf-8")), jsonl[k % 3])
        inj["malformed_json"] += 1
    for k in range(3):
        while True:
            u, a = next(junk)
            data = json.dumps(line_for(u, a), ensure_ascii=False).encode("gbk", errors="replace")
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                break
        put(("RAW", data), jsonl[k])
        inj["not_utf8"] += 1
    for _ in range(2):
        u, a = next(junk)
        put(("CSV", [u, "", a, "多出来的一列"]), "tickets.csv")
        inj["malformed_csv"] += 1
    u, a = next(junk)
    cases = [
        ("wrong_type", "openai_chat.jsonl", {"messages": json.dumps(conv(u, a))}),
        (
            "wrong_type",
            "openai_chat.jsonl",
            {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": 12345}]},
        ),
        (
            "wrong_type",
            "alpaca_export.json",
            {"instruction": u, "input": "", "output": json.loads(a)},
        ),
        ("wrong_type", "alpaca_export.json", {"instruction": u, "input": "", "output": 350}),
        ("wrong_type", "sharegpt.jsonl", {"conversations": {"from": "human", "value": u}}),
        ("wrong_type", "sharegpt.jsonl", ["human", u, "gpt", a]),
        ("wrong_type", "prompt_completion.jsonl", {"prompt": 42, "completion": a}),
        ("wrong_type", "openai_chat.jsonl", {"messages": [["user", u], ["assistant", a]]}),
        ("missing_field", "alpaca_export.json", {"instruction": u, "input": ""}),
        ("missing_field", "alpaca_export.json", {"instruction": u, "output": None}),
        ("missing_field", "prompt_completion.jsonl", {"prompt": u}),
        (
            "missing_field",
            "openai_chat.jsonl",
            {"messages": [{"role": "user", "content": u}, {"role": "assistant"}]},
        ),
        (
            "missing_field",
            "openai_chat.jsonl",
            {"messages": [{"content": u}, {"role": "assistant", "content": a}]},
        ),
        ("missing_field", "sharegpt.jsonl", {"conversations": [{"from": "human"}]}),
        (
            "missing_field",
            "sharegpt.jsonl",
            {"conversations": [{"value": u}, {"from": "gpt", "value": a}]},
        ),
        ("missing_field", "alpaca_export.json", {"input": u, "output": a}),
        ("empty_messages", "openai_chat.jsonl", {"messages": []}),
        ("empty_messages", "openai_chat.jsonl", {"messages": [], "id": "x-1"}),
        ("empty_messages", "sharegpt.jsonl", {"conversations": []}),
        ("empty_messages", "sharegpt.jsonl", {"conversations": [], "system": SYSTEM_PROMPT}),
        (
            "roles_out_of_order",
            "openai_chat.jsonl",
            {"messages": [{"role": "assistant", "content": a}, {"role": "user", "content": u}]},
        ),
        (
            "roles_out_of_order",
            "openai_chat.jsonl",
            {
                "messages": [
                    {"role": "user", "content": u},
                    {"role": "user", "content": u},
                    {"role": "assistant", "content": a},
                ]
            },
        ),
        (
            "roles_out_of_order",
            "openai_chat.jsonl",
            {
                "messages": [
                    {"role": "user", "content": u},
                    {"role": "system", "content": "x"},
                    {"role": "assistant", "content": a},
                ]
            },
        ),
        (
            "roles_out_of_order",
            "sharegpt.jsonl",
            {"conversations": [{"from": "gpt", "value": a}, {"from": "human", "value": u}]},
        ),
        (
            "roles_out_of_order",
            "sharegpt.jsonl",
            {
                "conversations": [
                    {"from": "human", "value": u},
                    {"from": "gpt", "value": a},
                    {"from": "gpt", "value": a},
                ]
            },
        ),
        (
            "roles_out_of_order",
            "prompt_completion.jsonl",
            {
                "prompt": [{"role": "assistant", "content": u}],
                "completion": [{"role": "assistant", "content": a}],
            },
        ),
        (
            "last_not_assistant",
            "openai_chat.jsonl",
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": u},
                ]
            },
        ),
        (
            "last_not_assistant",
            "openai_chat.jsonl",
            {
                "messages": [
                    {"role": "user", "content": u},
                    {"role": "assistant", "content": a},
                    {"role": "user", "content": "还有别的吗"},
                ]
            },
        ),
        (
            "last_not_assistant",
            "sharegpt.jsonl",
            {"conversations": [{"from": "human", "value": u}]},
        ),
        (
            "last_not_assistant",
            "sharegpt.jsonl",
            {"conversations": [{"from": "system", "value": SYSTEM_PROMPT}]},
        ),
        (
            "last_not_assistant",
            "openai_chat.jsonl",
            {"messages": [{"role": "system", "content": SYSTEM_PROMPT}]},
        ),
        (
            "bad_role",
            "sharegpt.jsonl",
            {"conversations": [{"from": "customer", "value": u}, {"from": "gpt", "value": a}]},
        ),
        (
            "bad_role",
            "openai_chat.jsonl",
            {"messages": [{"role": "客服", "content": u}, {"role": "assistant", "content": a}]},
        ),
        (
            "bad_role",
            "openai_chat.jsonl",
            {"messages": [{"role": "user", "content": u}, {"role": "tool", "content": a}]},
        ),
        ("unknown_format", "openai_chat.jsonl", {"q": u, "a": a}),
        ("unknown_format", "prompt_completion.jsonl", {"question": u, "answer": a}),
        ("unknown_format", "sharegpt.jsonl", {"dialog": [u, a]}),
        ("not_conversational", "openai_chat.jsonl", {"text": u}),
        ("not_conversational", "prompt_completion.jsonl", {"text": f"{u}\n{a}"}),
    ]
    for reason, name, rec in cases:
        put(rec, name)
        inj[reason] += 1

    manifest = {
        "description": "Problems injected into data/raw by data/generate.py. Reasons match "
        "helpers.data.validation constants; run_pipeline(raw_files(), test_rows=test, "
        "system_prompt=SYSTEM_PROMPT) should drop exactly these counts.",
        "files": list(RAW_FILES),
        "bom_files": ["openai_chat.jsonl", "tickets.csv"],
        "base_rows": len(base),
        "base_rows_from_train": len(base) - N_EXTRA_MAJORITY,
        "imbalance": {"intent": MAJORITY_INTENT, "extra_rows": N_EXTRA_MAJORITY},
        "mixed_layout_rows": {k: dict(sorted(v.items())) for k, v in mixed.items() if v},
        "injected": dict(sorted(inj.items())),
        "pii": dict(sorted(pii.items())),
        "test_leaks": {"exact": 15, "near": 5},
        "input_rows": len(base) + sum(inj.values()),
        "expected_kept": len(base),
    }
    return files, manifest


def write_raw(out: Path, files: dict[str, list]) -> None:
    """Serialise the raw files; JSONL lines may be raw (broken) bytes."""
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        if name.endswith(".json"):
            text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
            (raw / name).write_bytes(text.encode("utf-8"))
        elif name.endswith(".jsonl"):
            lines = []
            for rec in rows:
                if isinstance(rec, tuple) and rec[0] == "RAW":
                    lines.append(rec[1])
                else:
                    lines.append(json.dumps(rec, ensure_ascii=False).encode("utf-8"))
            bom = b"\xef\xbb\xbf" if name == "openai_chat.jsonl" else b""
            (raw / name).write_bytes(bom + b"\n".join(lines) + b"\n")
        else:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["instruction", "input", "output"])
            for rec in rows:
                if isinstance(rec, tuple) and rec[0] == "CSV":
                    w.writerow(rec[1])
                else:
                    w.writerow([rec["instruction"], rec["input"], rec["output"]])
            (raw / name).write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8"))


def dump_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Deterministic UTF-8 JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes(text.encode("utf-8"))


def generate(out: Path) -> dict[str, Any]:
    """Write all datasets under ``out``; returns a summary with sizes."""
    rng = random.Random(SEED)
    pool = build_pool(rng)
    by_key: dict[tuple[str, bool], list[dict]] = {}
    for row in pool:
        label = json.loads(row["messages"][-1]["content"])
        by_key.setdefault((label["intent"], row["meta"]["seen_template"]), []).append(row)
    split_rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    extra, leftovers = [], []
    for intent in INTENTS:
        seen, unseen = by_key[(intent, True)], by_key[(intent, False)]
        a, b, c = N_TRAIN_PER_INTENT, N_VAL_PER_INTENT, N_TEST_SEEN_PER_INTENT
        split_rows["train"] += seen[:a]
        split_rows["val"] += seen[a : a + b]
        split_rows["test"] += seen[a + b : a + b + c] + unseen[:N_TEST_UNSEEN_PER_INTENT]
        rest = seen[a + b + c :]
        if intent == MAJORITY_INTENT:
            extra, rest = rest[:N_EXTRA_MAJORITY], rest[N_EXTRA_MAJORITY:]
        leftovers += rest
    if len(extra) < N_EXTRA_MAJORITY:
        raise RuntimeError("pool too small for the majority-intent rows")
    for name, rows in split_rows.items():
        rng.shuffle(rows)
        out_rows = []
        for i, r in enumerate(rows, 1):
            meta = dict(r["meta"], split=name)
            out_rows.append({"id": f"{name}-{i:05d}", "messages": r["messages"], "meta": meta})
        split_rows[name] = out_rows
        dump_jsonl(out / "main" / f"{name}.jsonl", out_rows)
    rng.shuffle(leftovers)

    def pair(r: dict) -> tuple[str, str]:
        return r["messages"][1]["content"], r["messages"][2]["content"]

    base = [pair(r) for r in split_rows["train"]] + [pair(r) for r in extra]
    files, manifest = build_raw(
        rng, base, [pair(r) for r in split_rows["test"]], [pair(r) for r in leftovers]
    )
    write_raw(out, files)
    (out / "raw" / "MANIFEST.json").write_bytes(
        (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    )
    dump_jsonl(out / "self_cognition.jsonl", build_self_cognition(random.Random(SEED + 1)))
    probe = build_probe(random.Random(SEED + 2))
    dump_jsonl(out / "probe_general.jsonl", probe)
    dump_jsonl(out / "general_replay.jsonl", build_replay(random.Random(SEED + 3), probe))
    names = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file()
        and p.name not in ("SHA256SUMS", "README.md", "README.template.md", "generate.py")
        # data/traffic.py writes traffic/ with its own SHA256SUMS (notebook 07)
        and p.name != "traffic.py"
        and p.relative_to(out).parts[0] != "traffic"
    )
    sums = "".join(f"{sha256_file(out / n)}  {n}\n" for n in names)
    (out / "SHA256SUMS").write_bytes(sums.encode("utf-8"))
    sizes = {k: len(v) for k, v in split_rows.items()}
    write_readme(out, names, sizes, manifest)
    return {
        "sizes": {k: len(v) for k, v in split_rows.items()},
        "files": names,
        "manifest": manifest,
    }


PURPOSE = {
    "main/train.jsonl": "主任务训练集",
    "main/val.jsonl": "主任务验证集",
    "main/test.jsonl": "主任务测试集（含留出模板）",
    "self_cognition.jsonl": "自我认知问答",
    "probe_general.jsonl": "通用能力探针",
    "general_replay.jsonl": "通用回放数据（防遗忘）",
    "raw/MANIFEST.json": "脏数据注入问题清单",
    "raw/alpaca_export.json": "脏数据：Alpaca JSON",
    "raw/openai_chat.jsonl": "脏数据：OpenAI messages（混合格式）",
    "raw/prompt_completion.jsonl": "脏数据：prompt/completion",
    "raw/sharegpt.jsonl": "脏数据：ShareGPT",
    "raw/tickets.csv": "脏数据：CSV",
}


def write_readme(out: Path, names: list[str], sizes: dict[str, int], manifest: dict) -> None:
    """data/README.md with the file table (rows, bytes, sha256) and the dataset cards."""

    def n_rows(name: str) -> str:
        data = (out / name).read_bytes()
        if name.endswith(".json"):
            obj = json.loads(data)
            return str(len(obj)) if isinstance(obj, list) else "-"
        if name.endswith(".csv"):
            return str(
                max(0, len(list(csv.reader(io.StringIO(data.decode("utf-8-sig", "replace"))))) - 1)
            )
        return str(sum(1 for line in data.splitlines() if line.strip()))

    table = "".join(
        f"| `{n}` | {PURPOSE.get(n, '')} | {n_rows(n)} | {(out / n).stat().st_size:,} | "
        f"`{sha256_file(out / n)}` |\n"
        for n in names
    )
    injected = "\n".join(f"| {k} | {v} |" for k, v in manifest["injected"].items())
    template = (Path(__file__).resolve().parent / "README.template.md").read_text(encoding="utf-8")
    body = template.format(
        table=table,
        prompt=SYSTEM_PROMPT,
        prompt_chars=len(SYSTEM_PROMPT),
        intents=" / ".join(INTENTS),
        neg="、".join(NEG_CUES),
        pos="、".join(POS_CUES),
        high="、".join(HIGH_CUES),
        med="、".join(MED_CUES),
        n_products=len(PRODUCTS),
        n_train=sizes["train"],
        n_val=sizes["val"],
        n_test=sizes["test"],
        n_unseen=len(INTENTS) * N_TEST_UNSEEN_PER_INTENT,
        heldout=", ".join(f"`{i}_{t:02d}`" for i in INTENTS for t in HELDOUT_TEMPLATES),
        n_self=sum(1 for _ in open(out / "self_cognition.jsonl", encoding="utf-8")),
        name=ASSISTANT_NAME,
        name_en=ASSISTANT_NAME_EN,
        team=ASSISTANT_TEAM,
        n_probe=sum(1 for _ in open(out / "probe_general.jsonl", encoding="utf-8")),
        n_replay=sum(1 for _ in open(out / "general_replay.jsonl", encoding="utf-8")),
        replay_x=f"{REPLAY_X[0]}–{REPLAY_X[1]}",
        extra=N_EXTRA_MAJORITY,
        majority=MAJORITY_INTENT,
        injected=injected,
        pii=", ".join(f"{k} {v}" for k, v in manifest["pii"].items()),
        leaks_exact=manifest["test_leaks"]["exact"],
        leaks_near=manifest["test_leaks"]["near"],
        input_rows=manifest["input_rows"],
        dropped=manifest["input_rows"] - manifest["expected_kept"],
        kept=manifest["expected_kept"],
    )
    (out / "README.md").write_bytes(body.encode("utf-8"))


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    summary = generate(args.out)
    print(json.dumps(summary["sizes"]), f"{len(summary['files'])} files ->", args.out)


if __name__ == "__main__":
    main()
