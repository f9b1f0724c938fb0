"""Loading every supported layout, and every kind of bad input: a clear error or a reported drop."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helpers.data import (
    DataError,
    DropReport,
    detect_format,
    export_openai_chat,
    export_prompt_completion,
    from_records,
    load_conversations,
    load_text,
    to_messages,
    validate_messages,
    validate_rows,
)

U = {"role": "user", "content": "我的订单到哪了"}
A = {"role": "assistant", "content": '{"intent":"track_order"}'}
S = {"role": "system", "content": "你是客服助手"}


def write_lines(path: Path, rows: list) -> Path:
    lines = [
        r if isinstance(r, bytes) else json.dumps(r, ensure_ascii=False).encode() for r in rows
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def check_ledger(report: DropReport, kept: int) -> None:
    assert report.kept_count == kept
    assert report.input_count == kept + report.dropped_count


def test_every_layout_normalises_to_messages(tmp_path):
    rows = [
        {"messages": [S, U, A]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]},
        {
            "conversations": [
                {"from": "system", "value": "sys"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "a"},
            ]
        },
        {
            "system": "sys",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
        },
        {
            "instruction": "翻译",
            "input": "hello",
            "output": "你好",
            "system": "sys",
            "history": [["q1", "a1"]],
        },
        {"prompt": "q", "completion": "a"},
        {"prompt": [U], "completion": [A]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, A]},
    ]
    out, report = load_conversations(write_lines(tmp_path / "mixed.jsonl", rows), progress=False)
    check_ledger(report, len(rows))
    assert report.formats == {"openai_chat": 2, "sharegpt": 3, "alpaca": 1, "prompt_completion": 2}
    assert out[1]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok"},
    ]
    assert out[3]["messages"][0] == {"role": "system", "content": "sys"}
    assert [m["role"] for m in out[4]["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert out[4]["messages"][3]["content"] == "翻译\nhello"
    assert out[7]["messages"][0]["content"] == "hi"
    assert out[0]["source"] == {
        "file": str(tmp_path / "mixed.jsonl"),
        "line": 1,
        "format": "openai_chat",
    }


def test_json_array_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([{"instruction": "q", "output": "a", "id": 7}]), encoding="utf-8")
    csv_path = tmp_path / "c.csv"
    csv_path.write_text('instruction,input,output\n"多行\n问题",,答案\n', encoding="utf-8")
    msg_csv = tmp_path / "m.csv"
    with open(msg_csv, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["messages"], [json.dumps([U, A], ensure_ascii=False)]])
    pq_path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "completion": "a"}]), pq_path)
    rows, report = load_conversations([arr, csv_path, msg_csv, pq_path], progress=False)
    check_ledger(report, 4)
    assert rows[0]["id"] == "7"
    assert rows[1]["messages"][0]["content"] == "多行\n问题"
    assert rows[1]["source"]["line"] == 2
    assert rows[2]["messages"] == [U, A]
    assert rows[3]["source"]["format"] == "prompt_completion"


BAD = [
    ('{"messages": [', "malformed_json", None),
    ({"messages": "not a list"}, "wrong_type", "messages"),
    ({"messages": [U, {"role": "assistant", "content": 5}]}, "wrong_type", "messages[1].content"),
    (["a", "list"], "wrong_type", "<row>"),
    ({"instruction": "q"}, "missing_field", "output"),
    ({"messages": [U, {"role": "assistant"}]}, "missing_field", "messages[1].content"),
    ({"messages": []}, "empty_messages", "messages"),
    ({"conversations": []}, "empty_messages", "conversations"),
    ({"messages": [A, U]}, "roles_out_of_order", "messages[0].role"),
    ({"messages": [U, S, A]}, "roles_out_of_order", "messages[1].role"),
    ({"messages": [U]}, "last_not_assistant", "messages[0]"),
    ({"messages": [{"role": "bot2", "content": "x"}, A]}, "bad_role", "messages[0].role"),
    (
        {"conversations": [{"from": "gpt", "value": "a"}]},
        "roles_out_of_order",
        "conversations[0].from",
    ),
    (
        {
            "system": "s",
            "conversations": [{"from": "human", "value": "q"}, {"from": "customer", "value": "a"}],
        },
        "bad_role",
        "conversations[1].from",
    ),
    ({"prompt": [U], "completion": [U]}, "roles_out_of_order", "completion[0].role"),
    ({"foo": 1}, "unknown_format", None),
    ({"text": "just text"}, "not_conversational", "text"),
]


@pytest.mark.parametrize("row,reason,field", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_rows_are_dropped_with_location_and_raise_in_strict(tmp_path, row, reason, field):
    good = {"messages": [U, A]}
    bad = row.encode() if isinstance(row, str) else row
    path = write_lines(tmp_path / "d.jsonl", [good, bad, good])
    rows, report = load_conversations(path, progress=False)
    check_ledger(report, 2)
    (drop,) = report.drops
    assert (drop.reason, drop.line, drop.field) == (reason, 2, field)
    assert drop.file == str(path)
    with pytest.raises(DataError) as exc:
        load_conversations(path, strict=True, progress=False)
    err = exc.value
    assert (err.reason, err.line) == (reason, 2)
    assert str(path) in str(err) and "line 2" in str(err) and "Fix:" in str(err)


def test_empty_file_warns_or_raises(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    rows, report = load_conversations(path, progress=False)
    assert rows == [] and report.input_count == 0
    assert any("empty_file" in w for w in report.warnings)
    with pytest.raises(DataError, match="empty_file"):
        load_conversations(path, strict=True, progress=False)
    (tmp_path / "blank.json").write_text("  \n", encoding="utf-8")
    rows, report = load_conversations(tmp_path / "blank.json", progress=False)
    assert rows == [] and report.warnings


def test_bom_is_removed_and_reported(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"messages": [U, A]}).encode() + b"\n")
    rows, report = load_conversations(path, progress=False)
    assert len(rows) == 1 and "BOM" in report.warnings[0]
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes("\ufeffprompt,completion\nq,a\n".encode())
    rows, _ = load_conversations(csv_path, progress=False)
    assert rows[0]["messages"][0] == {"role": "user", "content": "q"}


def test_non_utf8_bytes_are_reported_not_fatal(tmp_path):
    gbk = json.dumps({"messages": [U, A]}, ensure_ascii=False).encode("gbk")
    path = write_lines(tmp_path / "gbk.jsonl", [{"messages": [U, A]}, gbk])
    rows, report = load_conversations(path, progress=False)
    check_ledger(report, 1)
    assert report.drops[0].reason == "not_utf8" and report.drops[0].line == 2
    assert "iconv" in str(DataError("not_utf8"))
    csv_path = tmp_path / "gbk.csv"
    csv_path.write_bytes(b"prompt,completion\nq,a\n" + "问,答\n".encode("gbk"))
    rows, report = load_conversations(csv_path, progress=False)
    check_ledger(report, 1)
    assert report.drops[0].reason == "not_utf8" and report.drops[0].line == 3
    whole = tmp_path / "gbk.json"
    whole.write_bytes(
        json.dumps([{"prompt": "问", "completion": "答"}], ensure_ascii=False).encode("gbk")
    )
    rows, report = load_conversations(whole, progress=False)
    check_ledger(report, 0)
    assert report.drops[0].reason == "not_utf8"


def test_ten_megabyte_line(tmp_path):
    big = {"messages": [{"role": "user", "content": "长" * 3_500_000}, A]}  # ~10.5 MB UTF-8
    path = write_lines(tmp_path / "big.jsonl", [{"messages": [U, A]}, big])
    assert path.stat().st_size > 10_000_000
    rows, report = load_conversations(path, progress=False)
    check_ledger(report, 1)
    assert report.drops[0].reason == "line_too_long" and report.drops[0].line == 2
    rows, report = load_conversations(path, max_line_bytes=20_000_000, progress=False)
    assert len(rows) == 2 and len(rows[1]["messages"][0]["content"]) == 3_500_000


def test_malformed_json_array_is_one_lost_unit(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"prompt": "q", "completion": "a"},\n{"prompt": ', encoding="utf-8")
    rows, report = load_conversations(path, progress=False)
    check_ledger(report, 0)
    assert report.drops[0].reason == "malformed_json" and report.drops[0].line == 2


def test_csv_wrong_column_count(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("prompt,completion\nq,a\nq2,a2,extra\nq3\n", encoding="utf-8")
    rows, report = load_conversations(path, progress=False)
    check_ledger(report, 1)
    assert [d.reason for d in report.drops] == ["malformed_csv", "malformed_csv"]
    assert [d.line for d in report.drops] == [3, 4]


def test_text_files_and_unknown_extension(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("第一段\n第二行\n\n第二段\n", encoding="utf-8")
    assert load_text(txt) == [{"text": "第一段\n第二行"}, {"text": "第二段"}]
    rows, report = load_conversations(txt, progress=False)
    check_ledger(report, 0)
    assert report.drops[0].reason == "not_conversational"
    with pytest.raises(ValueError, match="unsupported extension"):
        load_conversations(tmp_path / "x.xlsx", progress=False)


def test_detect_format_and_to_messages():
    assert detect_format({"messages": []}) == "openai_chat"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"instruction": "", "output": ""}) == "alpaca"
    assert detect_format({"prompt": "", "completion": ""}) == "prompt_completion"
    assert detect_format({"text": ""}) == "text"
    assert detect_format({"x": 1}) is None
    assert to_messages({"prompt": "q", "completion": "a"})[1]["role"] == "assistant"
    validate_messages([S, U, A, U, A])


def test_from_records_and_validate_rows():
    rows, report = from_records([{"messages": [U, A]}, {"messages": []}], name="ds")
    check_ledger(report, 1)
    assert report.drops[0].file == "ds" and report.drops[0].line == 2
    kept, report = validate_rows([{"messages": [U, A]}, {"messages": [U]}, {"text": "x"}])
    check_ledger(report, 1)
    assert report.counts() == {"last_not_assistant": 1, "missing_field": 1}
    with pytest.raises(DataError):
        validate_rows([{"messages": [U]}], strict=True)


def test_ledger_invariant_is_enforced():
    report = DropReport(input_count=3)
    report.drop("f", 1, "x")
    with pytest.raises(AssertionError, match="ledger"):
        report.close(1)
    report.close(2)
    assert "kept" in report.summary() and len(report.to_dataframe()) == 1


def test_exporters_round_trip(tmp_path):
    rows = [{"messages": [S, U, A], "source": {"file": "f", "line": 1}, "meta": {"k": 1}}]
    n = export_openai_chat(rows, tmp_path / "o.jsonl")
    assert n == 1
    line = json.loads((tmp_path / "o.jsonl").read_text(encoding="utf-8"))
    assert line == {"messages": [S, U, A]}
    back, _ = load_conversations(tmp_path / "o.jsonl", progress=False)
    assert back[0]["messages"] == rows[0]["messages"]
    export_prompt_completion(rows, tmp_path / "pc.jsonl")
    pc = json.loads((tmp_path / "pc.jsonl").read_text(encoding="utf-8"))
    assert pc == {"prompt": S["content"] + "\n\n" + U["content"], "completion": A["content"]}
    export_prompt_completion(rows, tmp_path / "pcc.jsonl", conversational=True)
    back, _ = load_conversations(tmp_path / "pcc.jsonl", progress=False)
    assert back[0]["messages"] == [S, U, A]
