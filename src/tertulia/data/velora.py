"""Generated VELORA datasets: arithmetic for the math expert, speech acts for the language one.

The seed's section 3 ("Conjuntos de Datos") asks for a math set (the four
operations; integers, decimals and negatives; expressions and word problems), a
language set (questions, commands, statements; varied lengths, topics and
styles) and a balanced mix with domain-ambiguous items to train the router.
Everything here is generated offline and deterministically from a seed
(``random.Random(seed)``): the same arguments give the same rows.

Math rows (``math_dataset.csv``), columns in this order::

    text,op,a,b,answer,lang,format,ambiguous[,split]

- ``text``: the problem. Expressions are symbolic with spaces around the
  operator (``"12.5 * -3"``, ``"10 - -3"``, ``"7 ÷ 2"``), sometimes wrapped in a
  phrase (``"What is 7 / 2?"``, ``"¿Cuánto es 7 / 2?"``); word problems spell the
  operation in words with the numbers in digits. Every generated text holds
  exactly two numbers (in the sense of :func:`tertulia.data.text.number_spans`):
  ``a`` and ``b``, in that order or, for the reversed templates ("Subtract 3
  from 10", "Resta 3 a 10"), as ``b`` then ``a``.
- ``op``: ``add`` | ``sub`` | ``mul`` | ``div``; ``answer = a op b``.
- ``a``, ``b``: the operands in the order of the computation (floats).
- ``answer``: float, written with ``repr`` (shortest round-trip form, exact).
- ``lang``: ``en`` | ``es``.  ``format``: ``expression`` | ``word``.
- ``ambiguous``: ``0`` | ``1``; 1 marks conversational phrasing ("tell me what
  5 times 6 is", "¿me dices cuánto es 3 más 4?") that reads like chat.

Operand magnitudes are log-uniform in ``[low, high)`` (so small and large
operands are equally common per decade), then either floored to an integer or,
for a fraction ``decimals`` of operands, rounded to 1 or 2 decimal places; a
fraction ``negatives`` of operands is negated. The divisor's magnitude is at
least ``low > 0``, so it is never 0. The extrapolation set is
``generate_math(..., low=high, high=10 * high)``: with the defaults, operands in
``[100, 1000)``, ten times beyond the training range.

Language rows (``language_dataset.csv``), columns in this order::

    text,label,topic,lang,ambiguous[,split]

- ``label``: ``question`` | ``command`` | ``statement`` (balanced).
- ``topic``: one of :data:`TOPICS` for generated rows (free text in a user CSV).
- ``lang``: ``en`` | ``es``.  ``ambiguous``: ``0`` | ``1``; 1 marks everyday
  text built on arithmetic words ("Add milk to the shopping list", "Divide la
  clase en 3 grupos", "Can you split the bill with Ana?").

Questions mostly end with ``?`` (Spanish opens with ``¿``) but about 15 % drop
the marks (the wh-word or the inversion still marks them; Spanish yes/no
questions, which are not inverted, always keep them); commands are
imperatives, some polite ("please", "por favor"); statements are declaratives,
some exclaimed. About a fifth of language rows hold digits ("Set an alarm for 7
tomorrow"), so that digits alone do not mean math.

``split`` (optional on reading, written by :func:`write_datasets`): ``train`` |
``val`` | ``test`` | ``extrapolation`` (math only). Empty when a row has none.

Reading (:func:`read_math_csv`, :func:`read_language_csv`) validates a user CSV:
required math columns ``text, op, a, b, answer`` (optional ``lang`` = ``en``,
``format`` = inferred from the text, ``ambiguous`` = 0, ``split``); required
language columns ``text, label`` (optional ``topic`` = ``""``, ``lang``,
``ambiguous``, ``split``); unknown columns are errors. Rows are numbered from 1
after the header ("row 7 (line 8)"). An empty optional cell takes the default.

Legend: n rows; a, b operands; op the operation.
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .._io import atomic_write_text
from ..errors import DataError
from .text import number_spans

OPS = ("add", "sub", "mul", "div")
LABELS = ("question", "command", "statement")
LANGS = ("en", "es")
FORMATS = ("expression", "word")
SPLITS = ("train", "val", "test")
MATH_SPLITS = (*SPLITS, "extrapolation")
DOMAINS = ("math", "language")
TOPICS = (
    "weather",
    "cooking",
    "travel",
    "music",
    "sports",
    "shopping",
    "health",
    "technology",
    "school",
    "nature",
    "work",
    "family",
)

MATH_COLUMNS = ("text", "op", "a", "b", "answer", "lang", "format", "ambiguous")
MATH_REQUIRED = ("text", "op", "a", "b", "answer")
LANGUAGE_COLUMNS = ("text", "label", "topic", "lang", "ambiguous")
LANGUAGE_REQUIRED = ("text", "label")

MATH_FILE = "math_dataset.csv"
LANGUAGE_FILE = "language_dataset.csv"

REL_TOL = 1e-6
_MAX_TRIES = 200


@dataclass(frozen=True)
class MathRow:
    """One arithmetic problem: ``answer = a op b``; ``split`` is ``""`` when unassigned."""

    text: str
    op: str
    a: float
    b: float
    answer: float
    lang: str = "en"
    format: str = "expression"
    ambiguous: bool = False
    split: str = ""


@dataclass(frozen=True)
class LanguageRow:
    """One text with its speech act (``label``); ``split`` is ``""`` when unassigned."""

    text: str
    label: str
    topic: str = ""
    lang: str = "en"
    ambiguous: bool = False
    split: str = ""


def apply_op(op: str, a: float, b: float) -> float:
    """``a op b`` for ``op`` in :data:`OPS` (``div`` by 0 raises ``ZeroDivisionError``)."""
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    if op == "div":
        return a / b
    raise ValueError(f"op {op!r} is not one of {', '.join(OPS)}")


# ------------------------------------------------------------------ math templates


@dataclass(frozen=True)
class MathTemplate:
    """A word-problem template with ``{a}`` and ``{b}`` (each once).

    ``flags``: ``pos`` needs positive operands, ``int_a``/``int_b`` an integer
    operand (stories about apples or tickets). ``reversed`` is true when ``{b}``
    comes before ``{a}`` in the text.
    """

    op: str
    lang: str
    text: str
    flags: frozenset[str] = frozenset()
    ambiguous: bool = False

    @property
    def reversed(self) -> bool:
        return self.text.index("{b}") < self.text.index("{a}")

    def fits(self, a: float, b: float) -> bool:
        if "pos" in self.flags and (a <= 0 or b <= 0):
            return False
        if "int_a" in self.flags and a != int(a):
            return False
        return not ("int_b" in self.flags and b != int(b))


def _templates(
    lang: str, spec: dict[str, list[str | tuple[str, str]]], ambiguous: bool = False
) -> list[MathTemplate]:
    out = []
    for op, items in spec.items():
        for item in items:
            text, flags = (item, "") if isinstance(item, str) else item
            out.append(MathTemplate(op, lang, text, frozenset(flags.split()), ambiguous))
    return out


_WORD_EN: dict[str, list[str | tuple[str, str]]] = {
    "add": [
        "What is {a} plus {b}?",
        "How much is {a} plus {b}?",
        "Add {b} to {a}.",
        "What is the sum of {a} and {b}?",
        "{a} plus {b} equals what?",
        "Find the total of {a} and {b}.",
        (
            "Ana has {a} apples and buys {b} more. How many apples does she have now?",
            "pos int_a int_b",
        ),
        ("A bag weighs {a} kg and another weighs {b} kg. What is their total weight?", "pos"),
    ],
    "sub": [
        "What is {a} minus {b}?",
        "How much is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "Take {b} away from {a}.",
        "What do you get if you take {b} from {a}?",
        "What is the difference between {a} and {b}?",
        ("Tom had {a} dollars and spent {b} dollars. How many dollars does he have left?", "pos"),
        ("A tank holds {a} litres. If {b} litres leak out, how many litres remain?", "pos"),
    ],
    "mul": [
        "What is {a} times {b}?",
        "How much is {a} times {b}?",
        "Multiply {a} by {b}.",
        "What is the product of {a} and {b}?",
        "{a} multiplied by {b} is what?",
        ("Each ticket costs {a} dollars. How much do {b} tickets cost?", "pos int_b"),
        ("A car drives at {a} km per hour for {b} hours. How far does it go?", "pos"),
    ],
    "div": [
        "What is {a} divided by {b}?",
        "How much is {a} divided by {b}?",
        "Divide {a} by {b}.",
        "What is the quotient of {a} and {b}?",
        "What is {a} over {b}?",
        ("How many times does {b} go into {a}?", "pos"),
        ("A train travels {a} km in {b} hours. How many km does it travel per hour?", "pos"),
        (
            "Share {a} dollars equally among {b} friends. How much does each friend get?",
            "pos int_b",
        ),
    ],
}

_WORD_ES: dict[str, list[str | tuple[str, str]]] = {
    "add": [
        "¿Cuánto es {a} más {b}?",
        "¿Cuánto suman {a} y {b}?",
        "Suma {a} y {b}.",
        "Súmale {b} a {a}.",
        "¿Cuál es la suma de {a} y {b}?",
        "Calcula la suma de {a} y {b}.",
        (
            "Ana tiene {a} manzanas y compra {b} más. ¿Cuántas manzanas tiene ahora?",
            "pos int_a int_b",
        ),
        ("Una bolsa pesa {a} kg y otra pesa {b} kg. ¿Cuánto pesan juntas?", "pos"),
    ],
    "sub": [
        "¿Cuánto es {a} menos {b}?",
        "Resta {b} a {a}.",
        "Réstale {b} a {a}.",
        "Quita {b} de {a}.",
        "¿Cuál es la diferencia entre {a} y {b}?",
        "Si a {a} le restas {b}, ¿cuánto queda?",
        ("Luis tenía {a} euros y gastó {b} euros. ¿Cuántos euros le quedan?", "pos"),
        ("Un depósito tiene {a} litros y se pierden {b} litros. ¿Cuántos litros quedan?", "pos"),
    ],
    "mul": [
        "¿Cuánto es {a} por {b}?",
        "¿Cuánto es {a} multiplicado por {b}?",
        "Multiplica {a} por {b}.",
        "¿Cuál es el producto de {a} y {b}?",
        "Calcula {a} veces {b}.",
        ("Cada entrada cuesta {a} euros. ¿Cuánto cuestan {b} entradas?", "pos int_b"),
        ("Un coche va a {a} km por hora durante {b} horas. ¿Qué distancia recorre?", "pos"),
    ],
    "div": [
        "¿Cuánto es {a} dividido entre {b}?",
        "¿Cuánto es {a} dividido por {b}?",
        "Divide {a} entre {b}.",
        "¿Cuál es el cociente de {a} y {b}?",
        ("¿Cuántas veces cabe {b} en {a}?", "pos"),
        ("Un tren recorre {a} km en {b} horas. ¿Cuántos km recorre por hora?", "pos"),
        ("Reparte {a} euros entre {b} amigos. ¿Cuánto recibe cada uno?", "pos int_b"),
    ],
}

_CHAT_EN: dict[str, list[str | tuple[str, str]]] = {
    "add": [
        "hey, can you add {a} and {b} for me?",
        "could you figure out {a} plus {b} please",
        "so what do {a} and {b} add up to",
    ],
    "sub": [
        "quick question: what's {a} minus {b}?",
        "tell me what you get when you take {b} away from {a}",
        "my friend asked me what {a} minus {b} is, any idea?",
    ],
    "mul": [
        "tell me what {a} times {b} is",
        "I was wondering, how much is {a} times {b}?",
        "can you help me multiply {a} by {b} real quick?",
    ],
    "div": [
        "I need to know {a} divided by {b}",
        "hey, what's {a} divided by {b} again?",
        "do you know what {a} over {b} comes to?",
    ],
}

_CHAT_ES: dict[str, list[str | tuple[str, str]]] = {
    "add": [
        "¿cuánto es {a} más {b}?",
        "oye, ¿me ayudas a sumar {a} y {b}?",
        "dime cuánto dan {a} y {b} juntos",
    ],
    "sub": [
        "dime cuánto da {a} menos {b}",
        "oye, ¿cuánto me queda si a {a} le quito {b}?",
        "una pregunta rápida: ¿{a} menos {b}?",
    ],
    "mul": [
        "oye, ¿me dices cuánto es {a} por {b}?",
        "necesito saber cuánto es {a} multiplicado por {b}",
        "¿sabes cuánto sale {a} por {b}?",
    ],
    "div": [
        "necesito saber {a} dividido entre {b}",
        "¿sabes cuánto es {a} entre {b}?",
        "oye, ¿me dices cuánto da {a} dividido por {b}?",
    ],
}

WORD_TEMPLATES: tuple[MathTemplate, ...] = tuple(
    _templates("en", _WORD_EN) + _templates("es", _WORD_ES)
)
CHAT_TEMPLATES: tuple[MathTemplate, ...] = tuple(
    _templates("en", _CHAT_EN, True) + _templates("es", _CHAT_ES, True)
)

_SYMBOLS = {
    "add": (("+", 1.0),),
    "sub": (("-", 1.0),),
    "mul": (("*", 0.7), ("x", 0.15), ("×", 0.15)),
    "div": (("/", 0.8), ("÷", 0.2)),
}
_WRAP = {
    "en": (
        "{e}",
        "{e}",
        "{e} =",
        "{e} = ?",
        "What is {e}?",
        "What's {e}?",
        "Compute {e}",
        "Calculate {e}.",
        "Evaluate {e}.",
        "Solve: {e}",
    ),
    "es": (
        "{e}",
        "{e}",
        "{e} =",
        "{e} = ?",
        "¿Cuánto es {e}?",
        "¿Cuánto da {e}?",
        "Calcula {e}",
        "Calcula {e}.",
        "Resuelve: {e}",
        "Halla {e}.",
    ),
}


def format_number(x: float) -> str:
    """Digits as a text shows them: ``12``, ``-3``, ``12.5`` (no exponent, no thousands)."""
    if x == int(x):
        return str(int(x))
    s = repr(x)
    if "e" in s or "E" in s:
        s = f"{x:.12f}".rstrip("0").rstrip(".")
    return s


def _operand(
    rng: random.Random, low: float, high: float, decimals: float, negatives: float
) -> float:
    for _ in range(_MAX_TRIES):
        mag = math.exp(rng.uniform(math.log(low), math.log(high)))
        v = round(mag, rng.choice((1, 2))) if rng.random() < decimals else float(math.floor(mag))
        if low <= v < high:
            return -v if rng.random() < negatives else v
    raise ValueError(f"cannot draw operands in [{low}, {high}); widen the range")


def _expression(rng: random.Random, op: str, a: float, b: float, lang: str) -> str:
    symbols = _SYMBOLS[op]
    sym = rng.choices([s for s, _ in symbols], [w for _, w in symbols])[0]
    bs = format_number(b)
    if b < 0 and rng.random() < 0.3:
        bs = f"({bs})"
    expr = f"{format_number(a)} {sym} {bs}"
    return rng.choice(_WRAP[lang]).format(e=expr)


def _check_numbers(text: str, expected: Sequence[float]) -> None:
    got = [v for _, _, v in number_spans(text)]
    if got != list(expected):
        raise AssertionError(
            f"template bug: {text!r} holds numbers {got}, expected {list(expected)}"
        )


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} must be a fraction in [0, 1]")


def _check_langs(langs: Sequence[str]) -> tuple[str, ...]:
    langs = tuple(langs)
    if not langs or any(lang not in LANGS for lang in langs):
        raise ValueError(f"langs={langs!r}; allowed: a non-empty subset of {', '.join(LANGS)}")
    return langs


def _unique(n: int, draw: Callable[[int], object], key: Callable[[object], str], what: str) -> list:
    """``n`` draws with distinct texts; ``draw(i)`` makes row ``i`` (retried on a repeat)."""
    seen: set[str] = set()
    rows = []
    for i in range(n):
        for _ in range(_MAX_TRIES):
            row = draw(i)
            if key(row) not in seen:
                break
        else:
            raise DataError(
                f"could not draw {n} distinct {what} texts (stuck after {len(rows)}); "
                "ask for fewer rows"
            )
        seen.add(key(row))
        rows.append(row)
    return rows


def generate_math(
    n: int,
    *,
    seed: int,
    low: float = 1.0,
    high: float = 100.0,
    decimals: float = 0.3,
    negatives: float = 0.3,
    word: float = 0.5,
    ambiguous: float = 0.1,
    langs: Sequence[str] = LANGS,
    shuffle: bool = True,
) -> list[MathRow]:
    """``n`` arithmetic problems with distinct texts, ops balanced (row i: ``OPS[i % 4]``).

    ``ambiguous`` of the rows use a conversational template; of the others,
    ``word`` are word problems and the rest expressions. Languages cycle
    within each op, so op × lang is balanced too. ``shuffle=False`` keeps
    the generation order (ops and languages cycling), so that any contiguous
    block is balanced too.
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
    for name, value in (
        ("decimals", decimals),
        ("negatives", negatives),
        ("word", word),
        ("ambiguous", ambiguous),
    ):
        _check_fraction(name, value)
    langs = _check_langs(langs)
    rng = random.Random(seed)
    word_by = {
        (t.op, t.lang): [x for x in WORD_TEMPLATES if (x.op, x.lang) == (t.op, t.lang)]
        for t in WORD_TEMPLATES
    }
    chat_by = {
        (t.op, t.lang): [x for x in CHAT_TEMPLATES if (x.op, x.lang) == (t.op, t.lang)]
        for t in CHAT_TEMPLATES
    }

    def draw(i: int) -> MathRow:
        op = OPS[i % len(OPS)]
        lang = langs[(i // len(OPS)) % len(langs)]
        a = _operand(rng, low, high, decimals, negatives)
        b = _operand(rng, low, high, decimals, negatives)
        is_chat = rng.random() < ambiguous
        if is_chat or rng.random() < word:
            pool = chat_by[op, lang] if is_chat else word_by[op, lang]
            t = rng.choice([x for x in pool if x.fits(a, b)])
            text = t.text.format(a=format_number(a), b=format_number(b))
            _check_numbers(text, (b, a) if t.reversed else (a, b))
            fmt = "word"
        else:
            text = _expression(rng, op, a, b, lang)
            _check_numbers(text, (a, b))
            fmt = "expression"
        return MathRow(text, op, a, b, apply_op(op, a, b), lang, fmt, is_chat)

    rows = _unique(n, draw, lambda r: r.text, "math")
    if shuffle:
        rng.shuffle(rows)
    return rows


# ------------------------------------------------------------------ language templates

# per topic and language: things and places (with article), activities (en gerund, es infinitive),
# plural nouns for counts
_VOCAB: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "weather": {
        "en": {
            "thing": ("the umbrella", "the raincoat", "the weather forecast", "the winter jacket"),
            "place": ("the terrace", "the garden", "the beach", "the mountain hut"),
            "activity": ("walking in the rain", "checking the forecast", "watching the storm"),
            "plural": ("umbrellas", "blankets", "scarves"),
        },
        "es": {
            "thing": (
                "el paraguas",
                "el impermeable",
                "el pronóstico del tiempo",
                "la chaqueta de invierno",
            ),
            "place": ("la terraza", "el jardín", "la playa", "el refugio de montaña"),
            "activity": ("pasear bajo la lluvia", "mirar el pronóstico", "ver la tormenta"),
            "plural": ("paraguas", "mantas", "bufandas"),
        },
    },
    "cooking": {
        "en": {
            "thing": ("the frying pan", "the recipe book", "the olive oil", "the oven tray"),
            "place": ("the kitchen", "the new restaurant", "the bakery", "the pantry"),
            "activity": ("baking bread", "making paella", "cooking dinner", "chopping onions"),
            "plural": ("eggs", "tomatoes", "plates", "lemons"),
        },
        "es": {
            "thing": (
                "la sartén",
                "el libro de recetas",
                "el aceite de oliva",
                "la bandeja del horno",
            ),
            "place": ("la cocina", "el restaurante nuevo", "la panadería", "la despensa"),
            "activity": ("hornear pan", "hacer paella", "preparar la cena", "picar cebolla"),
            "plural": ("huevos", "tomates", "platos", "limones"),
        },
    },
    "travel": {
        "en": {
            "thing": ("the passport", "the suitcase", "the boarding pass", "the train ticket"),
            "place": ("the airport", "the museum", "the train station", "the old town"),
            "activity": ("travelling by train", "packing the bags", "visiting new cities"),
            "plural": ("tickets", "postcards", "maps"),
        },
        "es": {
            "thing": ("el pasaporte", "la maleta", "la tarjeta de embarque", "el billete de tren"),
            "place": ("el aeropuerto", "el museo", "la estación de tren", "el casco antiguo"),
            "activity": ("viajar en tren", "hacer las maletas", "visitar ciudades nuevas"),
            "plural": ("billetes", "postales", "mapas"),
        },
    },
    "music": {
        "en": {
            "thing": ("the guitar", "the new album", "the concert tickets", "the headphones"),
            "place": ("the concert hall", "the music school", "the record shop", "the jazz club"),
            "activity": ("playing the piano", "singing in a choir", "listening to jazz"),
            "plural": ("songs", "records", "guitar strings"),
        },
        "es": {
            "thing": (
                "la guitarra",
                "el disco nuevo",
                "las entradas del concierto",
                "los auriculares",
            ),
            "place": (
                "la sala de conciertos",
                "la escuela de música",
                "la tienda de discos",
                "el club de jazz",
            ),
            "activity": ("tocar el piano", "cantar en un coro", "escuchar jazz"),
            "plural": ("canciones", "discos", "cuerdas de guitarra"),
        },
    },
    "sports": {
        "en": {
            "thing": ("the football", "the tennis racket", "the running shoes", "the bike helmet"),
            "place": ("the stadium", "the gym", "the swimming pool", "the tennis court"),
            "activity": ("running in the park", "playing basketball", "swimming before work"),
            "plural": ("balls", "medals", "laps"),
        },
        "es": {
            "thing": (
                "el balón",
                "la raqueta de tenis",
                "las zapatillas de correr",
                "el casco de la bici",
            ),
            "place": ("el estadio", "el gimnasio", "la piscina", "la pista de tenis"),
            "activity": ("correr por el parque", "jugar al baloncesto", "nadar antes del trabajo"),
            "plural": ("balones", "medallas", "vueltas"),
        },
    },
    "shopping": {
        "en": {
            "thing": ("the receipt", "the shopping bag", "the gift card", "the blue sweater"),
            "place": ("the supermarket", "the shopping centre", "the market", "the bookshop"),
            "activity": ("shopping for clothes", "comparing prices", "buying presents"),
            "plural": ("books", "shirts", "bags"),
        },
        "es": {
            "thing": ("el ticket de compra", "la bolsa", "la tarjeta regalo", "el jersey azul"),
            "place": ("el supermercado", "el centro comercial", "el mercado", "la librería"),
            "activity": ("comprar ropa", "comparar precios", "comprar regalos"),
            "plural": ("libros", "camisas", "bolsas"),
        },
    },
    "health": {
        "en": {
            "thing": ("the prescription", "the first aid kit", "the vitamins", "the thermometer"),
            "place": ("the pharmacy", "the hospital", "the dentist's office", "the health centre"),
            "activity": ("sleeping eight hours", "drinking more water", "stretching every morning"),
            "plural": ("pills", "appointments", "bandages"),
        },
        "es": {
            "thing": ("la receta", "el botiquín", "las vitaminas", "el termómetro"),
            "place": (
                "la farmacia",
                "el hospital",
                "la consulta del dentista",
                "el centro de salud",
            ),
            "activity": ("dormir ocho horas", "beber más agua", "estirar cada mañana"),
            "plural": ("pastillas", "citas", "vendas"),
        },
    },
    "technology": {
        "en": {
            "thing": ("the laptop", "the phone charger", "the wifi password", "the printer"),
            "place": ("the server room", "the repair shop", "the office", "the electronics store"),
            "activity": ("updating the software", "learning to code", "backing up the photos"),
            "plural": ("cables", "emails", "apps"),
        },
        "es": {
            "thing": (
                "el portátil",
                "el cargador del móvil",
                "la contraseña del wifi",
                "la impresora",
            ),
            "place": (
                "la sala de servidores",
                "el taller de reparación",
                "la oficina",
                "la tienda de electrónica",
            ),
            "activity": ("actualizar el programa", "aprender a programar", "guardar las fotos"),
            "plural": ("cables", "correos", "aplicaciones"),
        },
    },
    "school": {
        "en": {
            "thing": ("the homework", "the history book", "the exam results", "the school bag"),
            "place": ("the library", "the classroom", "the school", "the playground"),
            "activity": ("studying for the exam", "reading novels", "learning French"),
            "plural": ("notebooks", "pencils", "exercises"),
        },
        "es": {
            "thing": ("los deberes", "el libro de historia", "las notas del examen", "la mochila"),
            "place": ("la biblioteca", "el aula", "el colegio", "el patio"),
            "activity": ("estudiar para el examen", "leer novelas", "aprender francés"),
            "plural": ("cuadernos", "lápices", "ejercicios"),
        },
    },
    "nature": {
        "en": {
            "thing": ("the binoculars", "the map of the trail", "the tent", "the water bottle"),
            "place": ("the forest", "the lake", "the national park", "the river"),
            "activity": ("hiking in the hills", "watching birds", "camping by the lake"),
            "plural": ("trees", "birds", "flowers"),
        },
        "es": {
            "thing": (
                "los prismáticos",
                "el mapa de la ruta",
                "la tienda de campaña",
                "la cantimplora",
            ),
            "place": ("el bosque", "el lago", "el parque nacional", "el río"),
            "activity": ("caminar por el monte", "observar pájaros", "acampar junto al lago"),
            "plural": ("árboles", "pájaros", "flores"),
        },
    },
    "work": {
        "en": {
            "thing": ("the report", "the meeting notes", "the contract", "the project plan"),
            "place": ("the meeting room", "the office", "the factory", "the head office"),
            "activity": ("working from home", "preparing the presentation", "answering emails"),
            "plural": ("reports", "meetings", "invoices"),
        },
        "es": {
            "thing": ("el informe", "el acta de la reunión", "el contrato", "el plan del proyecto"),
            "place": ("la sala de reuniones", "la oficina", "la fábrica", "la sede central"),
            "activity": ("trabajar desde casa", "preparar la presentación", "contestar correos"),
            "plural": ("informes", "reuniones", "facturas"),
        },
    },
    "family": {
        "en": {
            "thing": ("the birthday cake", "the family photos", "the car keys", "the baby's toys"),
            "place": ("grandma's house", "the living room", "the family farm", "the park"),
            "activity": (
                "visiting my grandparents",
                "playing with the kids",
                "having lunch together",
            ),
            "plural": ("cousins", "presents", "photos"),
        },
        "es": {
            "thing": (
                "la tarta de cumpleaños",
                "las fotos familiares",
                "las llaves del coche",
                "los juguetes del bebé",
            ),
            "place": ("la casa de la abuela", "el salón", "la granja familiar", "el parque"),
            "activity": ("visitar a mis abuelos", "jugar con los niños", "comer todos juntos"),
            "plural": ("primos", "regalos", "fotos"),
        },
    },
}

_WHEN = {
    "en": {
        "future": (
            "tomorrow",
            "this weekend",
            "after lunch",
            "tonight",
            "next week",
            "later today",
        ),
        "past": ("yesterday", "last weekend", "last summer", "this morning", "two days ago"),
    },
    "es": {
        "future": (
            "mañana",
            "este fin de semana",
            "después de comer",
            "esta noche",
            "la semana que viene",
        ),
        "past": (
            "ayer",
            "el fin de semana pasado",
            "el verano pasado",
            "esta mañana",
            "hace dos días",
        ),
    },
}

# {thing} {place} {activity} {plural} {future} {past} {n} {hour}; final punctuation is added later
_LANG_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "question": (
            "Where is {thing}",
            "What time does {place} open",
            "Have you ever tried {activity}",
            "Do you like {activity}",
            "Is {place} far from here",
            "Who took {thing} from {place}",
            "Why is {thing} still in {place}",
            "How long does {activity} usually take",
            "Can we talk about {activity} {future}",
            "What do you think about {activity}",
            "How many {plural} do we still need",
            "Would you rather go to {place} {future} or stay at home and rest",
            "Does anyone know whether {place} is still open or should we go elsewhere {future}",
            "Is {place} open at {hour} on Sunday",
            "Do we need {n} {plural} or is that too many",
        ),
        "command": (
            "Bring {thing}",
            "Look for {thing} in {place}",
            "Put {thing} back in {place}",
            "Tell me more about {activity}",
            "Remind me about {activity} {future}",
            "Find {place} on the map",
            "Don't forget {thing} {future}",
            "Check the opening hours of {place}",
            "Write a short note about {activity} for the group",
            "Stop talking about {activity} and help me find {thing}",
            "Turn off the lights in {place} before you leave",
            "Send everyone a message about {activity} and ask who wants to join us {future}",
            "Set an alarm for {hour} {future}",
            "Buy {n} {plural} on the way home",
            "Call me at {hour} about {activity}",
        ),
        "statement": (
            "I love {activity}",
            "{thing} is in {place}",
            "We went to {place} {past}",
            "My brother started {activity} {past}",
            "{place} was closed {past}",
            "I left {thing} in {place} {past}",
            "Nobody in my family enjoys {activity} as much as I do",
            "It is too late for {activity} today",
            "They say {place} is beautiful in spring",
            "It's cold outside",
            "My neighbour told me that {place} gets really crowded {future} because of the holiday",
            "I bought {n} {plural} {past}",
            "The meeting at {place} starts at {hour}",
            "We spent {n} hours at {place} {past}",
        ),
    },
    "es": {
        "question": (
            "Dónde está {thing}",
            "A qué hora abre {place}",
            "Has probado alguna vez {activity}",
            "Te gusta {activity}",
            "Está lejos {place}",
            "Quién se llevó {thing} de {place}",
            "Por qué sigue {thing} en {place}",
            "Cuánto tiempo se tarda en {activity}",
            "Podemos hablar de {activity} {future}",
            "Qué opinas de {activity}",
            "Todavía necesitamos {plural}",
            "Prefieres ir a {place} {future} o quedarte en casa descansando",
            "Sabes si alguien de la familia quiere ir a {place} {future} para {activity} un rato",
            "Abre {place} a las {hour} el domingo",
            "Compramos {n} {plural} o son demasiados",
        ),
        "command": (
            "Trae {thing}",
            "Busca {thing} en {place}",
            "Devuelve {thing} a {place}",
            "Cuéntame más sobre {activity}",
            "Recuérdame {activity} {future}",
            "Busca {place} en el mapa",
            "No olvides {thing} {future}",
            "Averigua el horario de {place}",
            "Escribe una nota corta sobre {activity} para el grupo",
            "Apaga las luces de {place} antes de salir",
            "Reserva una mesa para dos {future}",
            "Manda un mensaje a todos sobre {activity} y pregunta quién quiere venir {future}",
            "Pon una alarma a las {hour} {future}",
            "Compra {n} {plural} de camino a casa",
            "Llámame a las {hour} para hablar de {activity}",
        ),
        "statement": (
            "Me encanta {activity}",
            "{thing} está en {place}",
            "Fuimos a {place} {past}",
            "Mi hermano empezó a {activity} {past}",
            "Olvidé {thing} en {place} {past}",
            "A nadie en mi familia le gusta {activity} tanto como a mí",
            "Ya es tarde para {activity} hoy",
            "Dicen que en primavera merece la pena visitar {place}",
            "Hace mucho frío",
            "Mi vecina me contó que {place} se llena muchísimo {future} por las vacaciones",
            "Compré {n} {plural} {past}",
            "El tren sale a las {hour}",
            "Pasamos {n} horas en {place} {past}",
        ),
    },
}

# domain-ambiguous language: arithmetic words in everyday requests; (label, topic, template)
_NAMES = ("Ana", "Juan", "Luis", "María", "Tom", "Sara", "Pablo", "Lucía")
_AMBIG: dict[str, tuple[tuple[str, str, str], ...]] = {
    "en": (
        ("command", "shopping", "Add {item} to the shopping list"),
        ("command", "shopping", "Add {n} eggs to the list"),
        ("command", "school", "Divide the class into {n} groups"),
        ("command", "work", "Multiply your efforts {future}"),
        ("question", "shopping", "Can you split the bill with {name}"),
        ("command", "family", "Subtract {name} from the guest list"),
        ("statement", "work", "Our team doubled its sales {past}"),
        ("question", "family", "How many people are coming to {name}'s party"),
        ("command", "work", "Sum up the meeting for {name} in a few sentences"),
        ("statement", "work", "We need to divide the work between {n} people"),
        ("command", "technology", "Add {name} to the group chat"),
        ("statement", "sports", "{name} added {n} points to the team's score {past}"),
        ("command", "cooking", "Add a pinch of salt and divide the dough in half"),
        ("question", "family", "Should we divide the chores between {name} and me"),
    ),
    "es": (
        ("command", "family", "Suma a {name} al grupo"),
        ("command", "shopping", "Añade {item} a la lista de la compra"),
        ("command", "shopping", "Suma {n} huevos a la lista"),
        ("command", "school", "Divide la clase en {n} grupos"),
        ("command", "work", "Multiplica tus esfuerzos {future}"),
        ("question", "shopping", "Puedes dividir la cuenta con {name}"),
        ("command", "work", "Resta importancia a lo que dijo {name}"),
        ("statement", "work", "La empresa multiplicó sus ventas {past}"),
        ("question", "family", "Cuántos somos en total para la cena de {name}"),
        ("statement", "sports", "{name} sumó {n} puntos en el partido {past}"),
        ("command", "cooking", "Divide la masa en dos y añade una pizca de sal"),
        ("question", "technology", "Puedes agregar a {name} al chat del grupo"),
        ("statement", "school", "{name} nos explicó cómo repartir el trabajo entre todos {past}"),
    ),
}
_ITEMS = {
    "en": ("milk", "bread", "rice", "coffee", "olive oil", "apples"),
    "es": ("leche", "pan", "arroz", "café", "aceite de oliva", "manzanas"),
}
_OPENERS = {
    "en": {
        "question": ("", "", "", "By the way, ", "Sorry to bother you, ", "Quick question: "),
        "command": ("", "", "", "Hey, ", "Okay, ", "Now "),
        "statement": ("", "", "", "Honestly, ", "By the way, ", "Well, "),
    },
    "es": {
        "question": ("", "", "", "Por cierto, ", "Perdona, ", "Una pregunta: "),
        "command": ("", "", "", "Oye, ", "Vale, ", "Ahora "),
        "statement": ("", "", "", "La verdad, ", "Por cierto, ", "Bueno, "),
    },
}

_CONTRACT = ((" a el ", " al "), (" de el ", " del "))


def _cap(s: str) -> str:
    for i, ch in enumerate(s):
        if ch.isalpha():
            return s[:i] + ch.upper() + s[i + 1 :]
    return s


def _lower_first(s: str) -> str:
    first = s.lstrip("¿¡").split(" ")[0].split("'")[0]
    if first == "I" or first in _NAMES:
        return s
    for i, ch in enumerate(s):
        if ch.isalpha():
            return s[:i] + ch.lower() + s[i + 1 :]
    return s


_ES_WH = ("Dónde", "A qué", "Quién", "Por qué", "Cuánto", "Cuánta", "Qué", "Cuándo", "Cómo", "Cuál")


def _finish(rng: random.Random, core: str, label: str, lang: str, opener: str) -> str:
    """Punctuate ``core`` by its label (marks, politeness, exclamation), then prefix ``opener``."""
    for old, new in _CONTRACT:
        core = core.replace(old, new)
    body = _cap(core)
    if label == "question":
        # No question marks: English inversion or a wh-word still marks the question. Spanish
        # yes/no questions are not inverted ("Todavía necesitamos …" reads as a statement),
        # so only Spanish questions opened by an accented interrogative may drop the marks.
        unmarked_ok = lang == "en" or body.startswith(_ES_WH)
        if unmarked_ok and rng.random() < 0.15:
            body = _lower_first(body) if rng.random() < 0.5 else body
        else:
            body = f"¿{body}?" if lang == "es" else body + "?"
    elif label == "command":
        r = rng.random()
        if r < 0.15 and not opener:
            body = ("Please " if lang == "en" else "Por favor, ") + _lower_first(body)
        elif r < 0.3:
            body += ", please" if lang == "en" else ", por favor"
        if rng.random() < 0.1:
            body = f"¡{body}!" if lang == "es" else body + "!"
        else:
            body += "."
    elif rng.random() < 0.2:
        body = f"¡{body}!" if lang == "es" else body + "!"
    else:
        body += "."
    if not opener:
        return body
    return opener + (body if opener.endswith(": ") else _lower_first(body))


def generate_language(
    n: int,
    *,
    seed: int,
    ambiguous: float = 0.1,
    digits: float = 0.2,
    langs: Sequence[str] = LANGS,
    shuffle: bool = True,
) -> list[LanguageRow]:
    """``n`` texts with distinct wording, labels balanced (row i has ``LABELS[i % 3]``), shuffled.

    ``ambiguous`` of the rows use arithmetic words in everyday requests (these
    take their label from their template, so balance is exact only among the
    rest); ``digits`` of the others come from templates that hold a number.
    ``shuffle=False`` keeps the generation order (labels cycling).
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    _check_fraction("ambiguous", ambiguous)
    _check_fraction("digits", digits)
    langs = _check_langs(langs)
    rng = random.Random(seed)

    def draw(i: int) -> LanguageRow:
        label = LABELS[i % len(LABELS)]
        lang = langs[(i // len(LABELS)) % len(langs)]
        slots = {
            "n": str(rng.randint(2, 12)),
            "hour": str(rng.randint(2, 12)),
            "future": rng.choice(_WHEN[lang]["future"]),
            "past": rng.choice(_WHEN[lang]["past"]),
            "name": rng.choice(_NAMES),
            "item": rng.choice(_ITEMS[lang]),
        }
        if rng.random() < ambiguous:
            cands = [t for t in _AMBIG[lang] if t[0] == label] or list(_AMBIG[lang])
            label, topic, template = rng.choice(cands)
            is_ambiguous = True
        else:
            topic = rng.choice(TOPICS)
            vocab = _VOCAB[topic][lang]
            for key in ("thing", "place", "activity", "plural"):
                slots[key] = rng.choice(vocab[key])
            pool = _LANG_TEMPLATES[lang][label]
            with_digits = [t for t in pool if "{n}" in t or "{hour}" in t]
            without = [t for t in pool if t not in with_digits]
            template = rng.choice(with_digits if rng.random() < digits else without)
            is_ambiguous = False
        opener = rng.choice(_OPENERS[lang][label])
        text = _finish(rng, template.format(**slots), label, lang, opener)
        return LanguageRow(text, label, topic, lang, is_ambiguous)

    rows = _unique(n, draw, lambda r: r.text, "language")
    if shuffle:
        rng.shuffle(rows)
    return rows


# ------------------------------------------------------------------ splits


@dataclass
class VeloraData:
    """Math and language rows by split (train/val/test), plus the math extrapolation set."""

    math: dict[str, list[MathRow]]
    language: dict[str, list[LanguageRow]]
    extrapolation: list[MathRow] = field(default_factory=list)
    seed: int = 0

    def mixed(self, split: str) -> list[tuple[str, str]]:
        """``(text, domain)`` pairs of one split, ``domain`` in ``math``/``language``.

        Balanced: the first ``min(#math, #language)`` rows of each domain, then
        shuffled with a seed derived from ``seed`` and ``split``.
        """
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        m, g = self.math.get(split, []), self.language.get(split, [])
        k = min(len(m), len(g))
        pairs = [(r.text, "math") for r in m[:k]] + [(r.text, "language") for r in g[:k]]
        random.Random(f"velora-mixed-{self.seed}-{split}").shuffle(pairs)
        return pairs


def _cut(rows: list, n_val: int, n_test: int, rng: random.Random) -> dict[str, list]:
    """Contiguous blocks of the unshuffled (cycling) rows, so each split is balanced; shuffled."""
    n_train = len(rows) - n_val - n_test
    parts = {
        "train": rows[:n_train],
        "val": rows[n_train : n_train + n_val],
        "test": rows[n_train + n_val :],
    }
    out = {}
    for s, part in parts.items():
        part = [replace(r, split=s) for r in part]
        rng.shuffle(part)
        out[s] = part
    return out


def make_splits(
    *,
    seed: int,
    n_math: int,
    n_language: int,
    n_extrapolation: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    low: float = 1.0,
    high: float = 100.0,
    ambiguous: float = 0.1,
) -> VeloraData:
    """Generate both sets and cut them into train/val/test; no text is in two splits.

    Each pool is drawn with distinct texts (a repeat is redrawn) and cut in
    generation order, where ops and labels cycle, so every split is balanced
    (to ±1 per op or label): ``round(n * val_fraction)`` val rows,
    ``round(n * test_fraction)`` test rows, the rest train; each split is then
    shuffled. The extrapolation set has operand magnitudes in
    ``[high, 10 * high)``, so none of its texts can occur in the other splits.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must be in [0, 1) "
            "and their sum below 1"
        )
    subseeds = random.Random(seed)
    s_math, s_lang, s_extra = (subseeds.getrandbits(63) for _ in range(3))
    math_rows = generate_math(
        n_math, seed=s_math, low=low, high=high, ambiguous=ambiguous, shuffle=False
    )
    lang_rows = generate_language(n_language, seed=s_lang, ambiguous=ambiguous, shuffle=False)
    extra = generate_math(
        n_extrapolation, seed=s_extra, low=high, high=10 * high, ambiguous=ambiguous
    )
    return VeloraData(
        math=_cut(math_rows, round(n_math * val_fraction), round(n_math * test_fraction), subseeds),
        language=_cut(
            lang_rows, round(n_language * val_fraction), round(n_language * test_fraction), subseeds
        ),
        extrapolation=[replace(r, split="extrapolation") for r in extra],
        seed=seed,
    )


# ------------------------------------------------------------------ CSV writing


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_math_csv(path: str | Path, rows: Sequence[MathRow]) -> Path:
    """Write math rows atomically; a ``split`` column is added when any row carries a split."""
    with_split = any(r.split for r in rows)
    header = MATH_COLUMNS + (("split",) if with_split else ())
    body = (
        [
            r.text,
            r.op,
            repr(r.a),
            repr(r.b),
            repr(r.answer),
            r.lang,
            r.format,
            str(int(r.ambiguous)),
        ]
        + ([r.split] if with_split else [])
        for r in rows
    )
    return atomic_write_text(path, _csv_text(header, body))


def write_language_csv(path: str | Path, rows: Sequence[LanguageRow]) -> Path:
    """Write language rows atomically; a ``split`` column is added when any row carries a split."""
    with_split = any(r.split for r in rows)
    header = LANGUAGE_COLUMNS + (("split",) if with_split else ())
    body = (
        [r.text, r.label, r.topic, r.lang, str(int(r.ambiguous))]
        + ([r.split] if with_split else [])
        for r in rows
    )
    return atomic_write_text(path, _csv_text(header, body))


def write_datasets(directory: str | Path, data: VeloraData) -> dict[str, Path]:
    """Write ``math_dataset.csv`` (train, val, test, extrapolation) and ``language_dataset.csv``."""
    d = Path(directory)
    math_rows = [r for s in SPLITS for r in data.math.get(s, [])] + list(data.extrapolation)
    lang_rows = [r for s in SPLITS for r in data.language.get(s, [])]
    return {
        "math": write_math_csv(d / MATH_FILE, math_rows),
        "language": write_language_csv(d / LANGUAGE_FILE, lang_rows),
    }


# ------------------------------------------------------------------ CSV reading

_EXPRESSION = re.compile(r"\d\)?\s+[-+*/x×÷]\s+\(?-?\d")


def _read_table(
    path: str | Path, kind: str, required: Sequence[str], allowed: Sequence[str]
) -> tuple[Path, list[tuple[str, dict[str, str]]]]:
    """Rows of a CSV as ``(where, {column: cell})``; ``where`` is ``"<path> row k (line l)"``."""
    p = Path(path)
    cols = ", ".join(required)
    if not p.is_file():
        raise DataError(
            f"{kind} CSV {p} does not exist; give a CSV file with a header row and columns {cols}"
        )
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {kind} CSV {p}: {exc}") from None
    if not text.strip():
        raise DataError(
            f"{p} is empty; a {kind} CSV needs a header row (columns {cols}) and data rows"
        )
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
        unknown = [h for h in header if h not in allowed]
        if unknown:
            raise DataError(
                f"{p}: unknown column(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(allowed)}"
            )
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise DataError(f"{p}: column(s) {', '.join(map(repr, dupes))} appear more than once")
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{p}: missing column(s) {', '.join(map(repr, missing))}; required: {cols}"
            )
        out = []
        k = 0
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            k += 1
            where = f"{p} row {k} (line {reader.line_num})"
            if len(cells) != len(header):
                raise DataError(f"{where}: {len(cells)} fields but the header has {len(header)}")
            out.append((where, dict(zip(header, cells, strict=True))))
    except csv.Error as exc:
        raise DataError(f"{p} line {reader.line_num}: malformed CSV ({exc})") from None
    if not out:
        raise DataError(f"{p} has a header but no data rows; a {kind} CSV needs at least one row")
    return p, out


def _choice(
    where: str, cells: dict[str, str], name: str, allowed: Sequence[str], default: str
) -> str:
    value = cells.get(name, "").strip()
    if not value:
        return default
    if value not in allowed:
        raise DataError(f"{where}: {name} {value!r} is not one of {', '.join(allowed)}")
    return value


def _number(where: str, cells: dict[str, str], name: str) -> float:
    cell = cells[name].strip()
    try:
        x = float(cell)
    except ValueError:
        raise DataError(f"{where}: {name}={cell!r} is not a number") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: {name}={cell!r} is not finite; NaN and inf are not allowed")
    return x


def _text(where: str, cells: dict[str, str]) -> str:
    text = cells["text"]
    if not text.strip():
        raise DataError(f"{where}: empty text; each row needs a non-empty text")
    return text


def _contains(numbers: list[float], wanted: Sequence[float]) -> bool:
    pool = list(numbers)
    for w in wanted:
        if w not in pool:
            return False
        pool.remove(w)
    return True


def read_math_csv(path: str | Path) -> list[MathRow]:
    """Read and validate a math CSV (schema in the module docstring); raises :class:`DataError`."""
    allowed = (*MATH_COLUMNS, "split")
    _, table = _read_table(path, "math", MATH_REQUIRED, allowed)
    rows = []
    for where, cells in table:
        text = _text(where, cells)
        op = cells["op"].strip()
        if op not in OPS:
            raise DataError(f"{where}: op {op!r} is not one of {', '.join(OPS)}")
        a, b, answer = (_number(where, cells, c) for c in ("a", "b", "answer"))
        if op == "div" and b == 0:
            raise DataError(
                f"{where}: division by zero (op=div, b=0); the divisor must be non-zero"
            )
        expected = apply_op(op, a, b)
        if not math.isclose(answer, expected, rel_tol=REL_TOL, abs_tol=1e-12):
            raise DataError(
                f"{where}: answer={answer!r} but a {op} b = {expected!r} (a={a!r}, b={b!r}); "
                f"they must agree within relative tolerance {REL_TOL:g}"
            )
        numbers = [v for _, _, v in number_spans(text)]
        if not _contains(numbers, (a, b)):
            raise DataError(
                f"{where}: text holds numbers {numbers} but a={a!r}, b={b!r}; "
                "the text must show both operands"
            )
        inferred = "expression" if _EXPRESSION.search(text) else "word"
        ambiguous = _choice(where, cells, "ambiguous", ("0", "1"), "0")
        rows.append(
            MathRow(
                text,
                op,
                a,
                b,
                answer,
                _choice(where, cells, "lang", LANGS, "en"),
                _choice(where, cells, "format", FORMATS, inferred),
                ambiguous == "1",
                _choice(where, cells, "split", MATH_SPLITS, ""),
            )
        )
    return rows


def read_language_csv(path: str | Path) -> list[LanguageRow]:
    """Read and validate a language CSV (schema in the module docstring); raises ``DataError``."""
    allowed = (*LANGUAGE_COLUMNS, "split")
    _, table = _read_table(path, "language", LANGUAGE_REQUIRED, allowed)
    rows = []
    for where, cells in table:
        text = _text(where, cells)
        label = cells["label"].strip()
        if label not in LABELS:
            raise DataError(f"{where}: label {label!r} is not one of {', '.join(LABELS)}")
        rows.append(
            LanguageRow(
                text,
                label,
                cells.get("topic", "").strip(),
                _choice(where, cells, "lang", LANGS, "en"),
                _choice(where, cells, "ambiguous", ("0", "1"), "0") == "1",
                _choice(where, cells, "split", SPLITS, ""),
            )
        )
    return rows


def read_datasets(directory: str | Path) -> VeloraData:
    """Read ``math_dataset.csv`` and ``language_dataset.csv`` (both with a ``split`` column)."""
    d = Path(directory)
    if d.is_file():
        raise DataError(
            f"data.path {str(d)!r} is a file; give the folder holding {MATH_FILE} and "
            f"{LANGUAGE_FILE}"
        )
    math_rows = read_math_csv(d / MATH_FILE)
    lang_rows = read_language_csv(d / LANGUAGE_FILE)
    for name, rows in ((MATH_FILE, math_rows), (LANGUAGE_FILE, lang_rows)):
        if any(not r.split for r in rows):
            raise DataError(
                f"{d / name}: every row needs a split (train, val, test); some are empty"
            )
    return VeloraData(
        math={s: [r for r in math_rows if r.split == s] for s in SPLITS},
        language={s: [r for r in lang_rows if r.split == s] for s in SPLITS},
        extrapolation=[r for r in math_rows if r.split == "extrapolation"],
    )
