"""VELORA datasets: generated math and language rows, splits, CSV round trip and validation."""

from __future__ import annotations

import collections
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

import tertulia._io as io_mod
from tertulia.data import velora as V
from tertulia.data.text import number_spans
from tertulia.errors import DataError


@pytest.fixture(scope="module")
def math_rows():
    return V.generate_math(800, seed=3)


@pytest.fixture(scope="module")
def lang_rows():
    return V.generate_language(900, seed=3)


@pytest.fixture(scope="module")
def data():
    return V.make_splits(seed=5, n_math=400, n_language=300, n_extrapolation=80)


def _numbers(text: str) -> list[float]:
    return [v for _, _, v in number_spans(text)]


# ------------------------------------------------------------------ generation


def test_deterministic():
    assert V.generate_math(50, seed=1) == V.generate_math(50, seed=1)
    assert V.generate_math(50, seed=1) != V.generate_math(50, seed=2)
    assert V.generate_language(50, seed=1) == V.generate_language(50, seed=1)
    assert V.generate_language(50, seed=1) != V.generate_language(50, seed=2)
    a = V.make_splits(seed=1, n_math=40, n_language=40, n_extrapolation=8)
    b = V.make_splits(seed=1, n_math=40, n_language=40, n_extrapolation=8)
    assert a == b and a.mixed("train") == b.mixed("train")


def test_math_ops_and_langs_balanced(math_rows):
    ops = collections.Counter(r.op for r in math_rows)
    assert set(ops) == set(V.OPS) and max(ops.values()) - min(ops.values()) <= 1
    pairs = collections.Counter((r.op, r.lang) for r in math_rows)
    assert len(pairs) == 8 and max(pairs.values()) - min(pairs.values()) <= 1
    assert len({r.text for r in math_rows}) == len(math_rows)


def test_math_rows_hold_their_operands_and_answer(math_rows):
    reversed_texts = {t.text for t in V.WORD_TEMPLATES + V.CHAT_TEMPLATES if t.reversed}
    for r in math_rows:
        nums = _numbers(r.text)
        assert len(nums) == 2, r.text
        assert nums in ([r.a, r.b], [r.b, r.a]), r.text
        assert r.answer == V.apply_op(r.op, r.a, r.b)
        if r.format == "expression":
            assert nums == [r.a, r.b]
    assert reversed_texts  # reversed templates exist


@pytest.mark.parametrize("a,b", [(10.0, 3.0), (12.5, -3.0), (-4.0, 2.25), (7.0, 0.5)])
def test_every_template_holds_exactly_its_operands(a, b):
    for t in V.WORD_TEMPLATES + V.CHAT_TEMPLATES:
        assert t.text.count("{a}") == 1 and t.text.count("{b}") == 1, t.text
        if not t.fits(a, b):
            continue
        text = t.text.format(a=V.format_number(a), b=V.format_number(b))
        assert _numbers(text) == ([b, a] if t.reversed else [a, b]), text


def test_template_counts():
    for lang in V.LANGS:
        words = [t for t in V.WORD_TEMPLATES if t.lang == lang]
        assert len(words) >= 12
        for op in V.OPS:
            assert sum(t.op == op for t in words) >= 5
            assert any(t.op == op and not t.flags for t in words)  # always one that fits
            assert any(t.op == op and t.lang == lang for t in V.CHAT_TEMPLATES)
        for op in ("sub", "div"):
            assert any(t.op == op and t.reversed for t in words), (lang, op)


def test_reversed_rows_are_correct(math_rows):
    rev = [
        r for r in math_rows if r.format == "word" and _numbers(r.text) == [r.b, r.a] and r.a != r.b
    ]
    assert any(r.op == "sub" for r in rev) and any(r.op == "div" for r in rev)
    for r in rev:
        assert r.answer == V.apply_op(r.op, r.a, r.b)
    text = "Subtract 3 from 10."
    t = next(t for t in V.WORD_TEMPLATES if t.text == "Subtract {b} from {a}.")
    assert t.reversed and t.text.format(a="10", b="3") == text and V.apply_op("sub", 10, 3) == 7


def test_negatives_decimals_formats(math_rows):
    ops = [x for r in math_rows for x in (r.a, r.b)]
    neg = sum(x < 0 for x in ops) / len(ops)
    dec = sum(x != int(x) for x in ops) / len(ops)
    assert 0.2 < neg < 0.4 and 0.15 < dec < 0.4
    assert all(1 <= abs(x) < 100 for x in ops)
    assert {r.format for r in math_rows} == {"expression", "word"}
    assert any(" - -" in r.text for r in math_rows)
    assert any(r.ambiguous for r in math_rows) and all(
        r.format == "word" for r in math_rows if r.ambiguous
    )
    assert all(not (r.op == "div" and r.b == 0) for r in math_rows)


def test_extrapolation_range(data):
    ops = [x for r in data.extrapolation for x in (r.a, r.b)]
    assert len(data.extrapolation) == 80
    assert all(100 <= abs(x) < 1000 for x in ops)
    assert all(r.split == "extrapolation" for r in data.extrapolation)


def test_language_rows(lang_rows):
    labels = collections.Counter(r.label for r in lang_rows)
    assert set(labels) == set(V.LABELS) and max(labels.values()) - min(labels.values()) <= 1
    assert {r.lang for r in lang_rows} == {"en", "es"}
    assert len({r.topic for r in lang_rows}) >= 10 and len(V.TOPICS) >= 10
    assert any(re.search(r"\d", r.text) for r in lang_rows)
    qs = [r for r in lang_rows if r.label == "question"]
    assert any(not r.text.endswith("?") for r in qs)
    assert sum(r.text.endswith("?") for r in qs) > 0.7 * len(qs)
    assert any(r.text.startswith("¿") for r in qs if r.lang == "es")
    assert any(r.text.endswith("!") for r in lang_rows if r.label == "statement")
    assert any(
        re.search(r"please|por favor", r.text, re.I) for r in lang_rows if r.label == "command"
    )
    lengths = [len(r.text.split()) for r in lang_rows]
    assert min(lengths) <= 4 and max(lengths) >= 18
    amb = [r for r in lang_rows if r.ambiguous]
    assert {r.lang for r in amb} == {"en", "es"}
    assert all(
        re.search(
            r"add|divide|multipl|split|subtract|sum|doubl|how many|"
            r"suma|añade|resta|dividir|agregar|repartir|cuántos",
            r.text,
            re.I,
        )
        for r in amb
    )
    assert len({r.text for r in lang_rows}) == len(lang_rows)


# ------------------------------------------------------------------ splits


def test_splits_disjoint_and_balanced(data):
    texts = [r.text for s in V.SPLITS for r in data.math[s]] + [r.text for r in data.extrapolation]
    texts += [r.text for s in V.SPLITS for r in data.language[s]]
    assert len(texts) == len(set(texts))
    assert [len(data.math[s]) for s in V.SPLITS] == [280, 40, 80]
    assert [len(data.language[s]) for s in V.SPLITS] == [210, 30, 60]
    for s in V.SPLITS:
        assert all(r.split == s for r in data.math[s] + data.language[s])
        ops = collections.Counter(r.op for r in data.math[s])
        assert max(ops.values()) - min(ops.values()) <= 1
        labels = collections.Counter(r.label for r in data.language[s])
        assert max(labels.values()) - min(labels.values()) <= 1


def test_mixed(data):
    mixed = data.mixed("train")
    domains = collections.Counter(d for _, d in mixed)
    assert domains == {"math": 210, "language": 210}
    assert len({d for _, d in mixed[:20]}) == 2  # shuffled, not one block per domain
    assert {t for t, _ in mixed} <= {r.text for r in data.math["train"] + data.language["train"]}
    with pytest.raises(ValueError, match="split"):
        data.mixed("extrapolation")


# ------------------------------------------------------------------ CSV


def test_csv_round_trip(tmp_path, math_rows, lang_rows):
    odd_m = V.MathRow(
        'Say "hi", then: what is 3, er, 4 plus 5?', "add", 4.0, 5.0, 9.0, "en", "word", True
    )
    odd_l = V.LanguageRow('Él dijo "sí", ¿vale?', "question", "family", "es", False)
    V.write_math_csv(tmp_path / "m.csv", [*math_rows, odd_m])
    V.write_language_csv(tmp_path / "l.csv", [*lang_rows, odd_l])
    assert V.read_math_csv(tmp_path / "m.csv") == [*math_rows, odd_m]
    assert V.read_language_csv(tmp_path / "l.csv") == [*lang_rows, odd_l]
    assert "split" not in (tmp_path / "m.csv").read_text().splitlines()[0]


def test_write_datasets_round_trip(tmp_path, data):
    paths = V.write_datasets(tmp_path, data)
    assert (
        paths["math"].name == "math_dataset.csv"
        and paths["language"].name == "language_dataset.csv"
    )
    header = paths["math"].read_text().splitlines()[0]
    assert header == "text,op,a,b,answer,lang,format,ambiguous,split"
    assert paths["language"].read_text().splitlines()[0] == "text,label,topic,lang,ambiguous,split"
    back = V.read_datasets(tmp_path)
    assert back.math == data.math and back.language == data.language
    assert back.extrapolation == data.extrapolation


def test_write_is_atomic(tmp_path, monkeypatch, math_rows):
    path = tmp_path / "m.csv"
    V.write_math_csv(path, math_rows[:5])
    before = path.read_text()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        V.write_math_csv(path, math_rows[5:10])
    with pytest.raises(OSError, match="disk full"):
        V.write_language_csv(path, [V.LanguageRow("Hola a todos.", "statement")])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def _write(tmp_path: Path, text: str, name: str = "x.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


MATH_HEAD = "text,op,a,b,answer\n"


@pytest.mark.parametrize(
    "body,match",
    [
        ("", "is empty"),
        (MATH_HEAD, "no data rows"),
        ("text,op,a,b\nWhat is 1 + 2?,add,1,2\n", "missing column.*'answer'"),
        ("text,op,a,b,answer,colour\n1 + 2,add,1,2,3,red\n", "unknown column.*'colour'.*allowed"),
        (MATH_HEAD + "1 + 2,add,1,2,3\n1 + 2,add,1,2\n", "row 2 .*4 fields but the header has 5"),
        (MATH_HEAD + "1 + 2,add,one,2,3\n", "row 1 .*a='one' is not a number"),
        (MATH_HEAD + "1 + 2,add,1,2,nan\n", "row 1 .*answer='nan' is not finite"),
        (MATH_HEAD + "1 + 2,add,1,inf,3\n", "b='inf' is not finite"),
        (
            MATH_HEAD + "1 + 2,add,1,2,3\n1 ^ 2,pow,1,2,1\n",
            "row 2 .*op 'pow' is not one of add, sub, mul, div",
        ),
        (MATH_HEAD + '"  ",add,1,2,3\n', "row 1 .*empty text"),
        (MATH_HEAD + "7 / 0,div,7,0,0\n", "row 1 .*division by zero"),
        (MATH_HEAD + "7 - 2,sub,7,2,6\n", r"row 1 .*answer=6\.0 but a sub b = 5\.0"),
        (
            MATH_HEAD + "1 + 2,add,1,2,3\n" * 6 + "Add 8 to 5,add,5,9,14\n",
            r"row 7 .*text holds numbers \[8\.0, 5\.0\] but a=5\.0, b=9\.0",
        ),
        ("text,op,a,b,answer,lang\n1 + 2,add,1,2,3,fr\n", "lang 'fr' is not one of en, es"),
        ("text,op,a,b,answer,split\n1 + 2,add,1,2,3,dev\n", "split 'dev' is not one of"),
        (
            "text,op,a,b,answer,ambiguous\n1 + 2,add,1,2,3,yes\n",
            "ambiguous 'yes' is not one of 0, 1",
        ),
    ],
)
def test_math_csv_errors(tmp_path, body, match):
    p = _write(tmp_path, body)
    with pytest.raises(DataError, match=match) as info:
        V.read_math_csv(p)
    assert "\n" not in str(info.value) and "x.csv" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        V.read_math_csv(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="does not exist"):
        V.read_language_csv(tmp_path / "nope.csv")


def test_math_csv_defaults_and_tolerance(tmp_path):
    p = _write(tmp_path, MATH_HEAD + "10 / 3,div,10,3,3.3333333\nSubtract 3 from 10,sub,10,3,7\n\n")
    rows = V.read_math_csv(p)
    assert [(r.lang, r.format, r.ambiguous, r.split) for r in rows] == [
        ("en", "expression", False, ""),
        ("en", "word", False, ""),
    ]
    assert math.isclose(rows[0].answer, 10 / 3, rel_tol=1e-6)


@pytest.mark.parametrize(
    "body,match",
    [
        ("", "is empty"),
        ("text\nhello there\n", "missing column.*'label'"),
        ("text,label,mood\nhi there,statement,ok\n", "unknown column.*'mood'"),
        (
            "text,label\nhi there,statement\nwhat now,exclamation\n",
            "row 2 .*label 'exclamation' is not one of question, command, statement",
        ),
        ("text,label\n,command\n", "row 1 .*empty text"),
        ("text,label\nhi,statement,extra\n", "row 1 .*3 fields but the header has 2"),
    ],
)
def test_language_csv_errors(tmp_path, body, match):
    p = _write(tmp_path, body, "lang.csv")
    with pytest.raises(DataError, match=match) as info:
        V.read_language_csv(p)
    assert "\n" not in str(info.value) and "lang.csv" in str(info.value)


def test_read_datasets_needs_split(tmp_path, math_rows, lang_rows):
    V.write_math_csv(tmp_path / V.MATH_FILE, [replace(r, split="train") for r in math_rows[:4]])
    V.write_language_csv(tmp_path / V.LANGUAGE_FILE, lang_rows[:4])
    with pytest.raises(DataError, match="needs a split"):
        V.read_datasets(tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="low"):
        V.generate_math(5, seed=0, low=0.0)
    with pytest.raises(ValueError, match="decimals"):
        V.generate_math(5, seed=0, decimals=1.5)
    with pytest.raises(ValueError, match="langs"):
        V.generate_language(5, seed=0, langs=("fr",))
    with pytest.raises(DataError, match="distinct"):
        V.generate_math(
            60, seed=0, low=1, high=2, decimals=0, negatives=0, word=0, ambiguous=0, langs=("en",)
        )
