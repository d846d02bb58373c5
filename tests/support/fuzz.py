"""Fuzzing helpers shared by tests/test_fuzz_*.py and benchmarks/fuzz_inputs.py (no tests here).

Strategies (hypothesis) for the two untrusted inputs MemBrane parses: capture
files (bytes, front matter, JSON captures, file names, documents: real PDF,
web page, Word and e-mail files, cut, flipped and spliced) and model answers.
Classifiers run one input and name its outcome; the contract is that every
input ends in exactly one of "parsed" (a value every later stage can store:
non-empty text, strict UTF-8, JSON-serialisable metadata) or "rejected" (a
MembraneError, or extract.InvalidOutput for a model answer, with a message).
Anything else is a finding: "uncaught:<Exception>", "unusable:<why>",
"unexplained" (a rejection without a message).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from membrane.capture import Capture, CaptureVanished, Rejection, read_capture
from membrane.config import InboxSettings
from membrane.errors import MembraneError
from membrane.extract import InvalidOutput, parse_output
from membrane.formats import ConversionRefused, Converted, Limits, convert_here
from membrane.schema import Extraction, ExtractionRules
from tests.support.documents import Attachment, Document, docx_bytes, eml_bytes, html_bytes, pdf_bytes

# Hypothesis caches constants under its home directory (.hypothesis/ in the
# working directory by default): keep that, like the example database, out of the repo.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "membrane-hypothesis")

# A slice for the test suite: deterministic, no example database in the repo.
SUITE = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
# The bound on one input: a parse that takes longer counts as a hang.
PER_INPUT_LIMIT_S = 5.0
NAME_MAX = 255

# ---------------------------------------------------------------- pieces

_TRICKY_BYTES = [
    b"\xef\xbb\xbf",  # UTF-8 BOM
    b"\xff\xfe",
    b"\xfe\xff",  # UTF-16 BOMs
    b"\x00",
    b"\r",
    b"\r\n",
    b"\n",
    b"\t",
    b"\x1b[31m",
    b"\x7f",
    b"\x0c",
    b"\xff",
    b"\xc3",
    b"\xc0\xaf",  # invalid, truncated, overlong
    b"\xed\xa0\x80",  # an encoded surrogate (invalid UTF-8)
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    "e\u0301".encode(),
    "\u202e".encode(),
    "\u2028".encode(),
    "\ufeff".encode(),
    "名前".encode(),
    "🦀".encode(),
]
_YAML_SCALARS = [
    "2001-13-45",
    "2026-02-30 25:61:61",
    "1" * 5000,
    "0x" + "f" * 5000,
    "-.inf",
    ".nan",
    "~",
    "null",
    "!!binary aGVsbG8=",
    "!!python/object/apply:os.system ['true']",
    "!!set {a, b}",
    "!!timestamp x",
    "&a [*a]",
    "*undefined",
    "? [a, b]\n: c",
    "'unterminated",
    '"\\ud800"',
    "|\n  block",
    ">-\n  folded",
    "%YAML 1.1",
    "{a: 1, a: 2}",
    "[1, [2, [3]]]",
    "@reserved",
    "`tick",
    "- - - x",
]
_JSON_ATOMS = [
    "1" * 5000,
    "-" + "9" * 4400,
    "1e999",
    "-1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    "1.5e-400",
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\u0000"',
    '"\\x"',
    "true",
    "null",
    "[]",
    "{}",
    '"' + "x" * 50_000 + '"',
]


def _join(parts: list[bytes | str]) -> bytes:
    return b"".join(p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p for p in parts)


def deep(opening: str, closing: str) -> st.SearchStrategy[str]:
    """Brackets nested 1 to 100,000 deep, closed or not."""
    return st.tuples(st.integers(1, 100_000), st.booleans()).map(
        lambda t: opening * t[0] + (closing * t[0] if t[1] else "")
    )


def messy_bytes() -> st.SearchStrategy[bytes]:
    """Random bytes, and text spliced with BOMs, NULs, CR/CRLF, invalid UTF-8 and very long lines."""
    long_line = st.integers(1, 1_200_000).map(lambda n: b"a" * n)
    piece = st.one_of(st.text(max_size=200), st.binary(max_size=64), st.sampled_from(_TRICKY_BYTES), long_line)
    spliced = st.lists(piece, max_size=12).map(_join)
    return st.one_of(st.binary(max_size=4096), spliced)


def json_values() -> st.SearchStrategy[Any]:
    atoms = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
    return st.recursive(
        atoms,
        lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
        max_leaves=30,
    )


def json_captures() -> st.SearchStrategy[bytes]:
    """Random JSON, near-misses of the capture schema, deep and huge JSON, odd numbers and escapes."""
    near_miss = st.fixed_dictionaries(
        {},
        optional={
            "text": st.one_of(st.text(), json_values()),
            "source": st.one_of(st.text(max_size=20), json_values()),
            "captured_at": st.one_of(
                st.sampled_from(["2026-01-31T09:30:00Z", "2026-13-01", "yesterday", ""]), json_values()
            ),
            "tags": st.one_of(st.lists(st.text(max_size=10), max_size=4), json_values()),
            "Text": st.text(max_size=10),
            "extra": json_values(),
        },
    ).map(lambda d: json.dumps(d, allow_nan=True))
    spliced = st.lists(
        st.one_of(st.sampled_from(_JSON_ATOMS), st.sampled_from(list('{}[]:,"')), st.text(max_size=8)), max_size=12
    ).map("".join)
    in_text = st.sampled_from(_JSON_ATOMS).map(lambda a: '{"text": ' + a + "}")
    text = st.one_of(
        near_miss,
        json_values().map(lambda v: json.dumps(v)),
        spliced,
        in_text,
        deep("[", "]"),
        deep('{"text": ', "}"),
        deep("{", "}"),
    )
    return text.map(lambda s: s.encode("utf-8", "surrogatepass"))


def front_matters() -> st.SearchStrategy[bytes]:
    """Markdown with front matter that is valid, broken, empty, huge, deep, aliased or unterminated."""
    valid = json_values().map(
        lambda v: (
            json.dumps(v)
            if not isinstance(v, dict)
            else "\n".join(f"{json.dumps(k)}: {json.dumps(x)}" for k, x in v.items())
        )
    )
    scalar = st.sampled_from(_YAML_SCALARS).map(lambda s: f"key: {s}")
    broken = st.text(alphabet=st.sampled_from(list(":-[]{}!&*?|>'\"#%@` \n\tab")), max_size=80)
    huge = st.integers(1, 30_000).map(lambda n: "\n".join(f"k{i}: v{i}" for i in range(n)))
    bomb = st.integers(1, 12).map(
        lambda n: "a0: &a0 [x, x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]\n" for i in range(1, n))
    )
    nested = st.one_of(deep("[", "]"), deep("{a: ", "}"), deep("- ", ""))
    block = st.one_of(valid, scalar, broken, huge, bomb, nested, st.just(""), st.text(max_size=200))
    opening = st.sampled_from(["---\n", "---\r\n", "--- \n", "---", "\ufeff---\n", "\r---\n"])
    closing = st.sampled_from(["\n---\n", "\r\n---\r\n", "\n...\n", "\n---", "", "\n--- trailing\n"])
    body = st.one_of(st.just(""), st.just("   \n"), st.text(max_size=200), st.just("Alice works at Acme.\n"))
    return st.tuples(opening, block, closing, body).map(lambda t: "".join(t).encode("utf-8", "surrogatepass"))


def capture_files() -> st.SearchStrategy[tuple[str, bytes]]:
    """(extension, content) pairs: messy bytes, JSON captures and front matter under every extension."""
    extension = st.sampled_from([".txt", ".md", ".json", ".TXT", ".Md", ".markdown", ""])
    content = st.one_of(messy_bytes(), json_captures(), front_matters())
    return st.tuples(extension, content)


def _fits(name: bytes) -> bool:
    return 0 < len(name) <= NAME_MAX and b"/" not in name and b"\x00" not in name and name not in (b".", b"..")


def file_names() -> st.SearchStrategy[bytes]:
    """File names as bytes: newlines, control characters, 255 bytes, non-NFC forms, invalid UTF-8."""
    control = st.characters(min_codepoint=1, max_codepoint=31)
    chars = st.one_of(
        control,
        st.sampled_from(list("\n\r\t \u200b\u202e\ufeffé-._'\"`$\\{}()*?[]")),
        st.characters(exclude_categories=("Cs",)),
    )
    stem = st.text(alphabet=chars, min_size=1, max_size=60)
    non_nfc = st.sampled_from(["e\u0301t\u00e9", "\u212b", "\u1e9b\u0323", "ﬁle", "Å"]).map(
        lambda s: unicodedata.normalize("NFD", s)
    )
    suffix = st.sampled_from([".txt", ".md", ".json", ".txt\n", ".TXT", ""])
    text_name = st.tuples(st.one_of(stem, non_nfc), suffix).map(lambda t: os.fsencode(t[0] + t[1]))
    raw = st.tuples(st.binary(min_size=1, max_size=40), st.sampled_from([b".txt", b".md", b""])).map(
        lambda t: t[0] + t[1]
    )
    longest = st.tuples(st.sampled_from(["a", "é", "名", "🦀"]), suffix).map(lambda t: _longest(t[0], t[1]))
    return st.one_of(text_name, raw, longest).filter(_fits)


def _longest(char: str, suffix: str) -> bytes:
    """A name of exactly (or just under, for multi-byte characters) NAME_MAX bytes."""
    tail = os.fsencode(suffix)
    each = len(char.encode())
    return os.fsencode(char * ((NAME_MAX - len(tail)) // each)) + tail


# ---------------------------------------------------------------- documents

_DOC = Document(
    (
        "Grete Lindqvist moved the Jellyfin server to the garage NAS in March.",
        "The NAS runs Debian and backs up to a Hetzner storage box every night.",
    )
)
# Tokens that parsers of each format treat specially, spliced in at random places.
_DOCUMENT_TOKENS = [
    b"<<",
    b">>",
    b"/Length 999999999",
    b"/Filter /FlateDecode",
    b"stream\n",
    b"endstream",
    b"obj",
    b"R",
    b"%%EOF",
    b"xref\n0 99999\n",
    b"trailer",
    b"/Encrypt",
    b"/Type /Page",
    b"<w:p>",
    b"</w:p>",
    b"<!DOCTYPE x [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]>",
    b"&b;",
    b"<![CDATA[",
    b"<div>" * 2000,
    b"<table>",
    b"<script>",
    b"<!--",
    b"\x00",
    b"\nContent-Type: multipart/mixed; boundary=x\n",
    b"\n--x\n",
    b"\n--x--\n",
    b"Content-Transfer-Encoding: base64\n",
    b"=?utf-8?b?////?=",
    b"charset=x-nope",
    b"\r\n\r\n",
]


def _docx_with(template: bytes, xml: bytes) -> bytes:
    """The real .docx `template` with its document part replaced by `xml`."""
    import io
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(template))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in source.infolist():
            archive.writestr(item, xml if item.filename == "word/document.xml" else source.read(item))
    return buffer.getvalue()


def _document_seeds() -> list[tuple[str, bytes]]:
    global _SEEDS
    if _SEEDS is None:
        pdf = pdf_bytes(_DOC)
        _SEEDS = [
            (".pdf", pdf),
            (".pdf", pdf_bytes(_DOC, layout="columns")),
            (".pdf", pdf_bytes(_DOC, password="x")),
            (".pdf", pdf_bytes(_DOC, image_only=True)),
            (".html", html_bytes(_DOC)),
            (".docx", docx_bytes(_DOC)),
            (
                ".eml",
                eml_bytes(
                    _DOC,
                    attachments=[
                        Attachment("a.pdf", pdf, "application/pdf"),
                        Attachment("b.docx", docx_bytes(_DOC), "application/octet-stream"),
                    ],
                ),
            ),
            (".eml", eml_bytes(_DOC, html_alternative=True, charset="latin-1")),
        ]
    return _SEEDS


_SEEDS: list[tuple[str, bytes]] | None = None


def _mutated(seed: tuple[str, bytes], cuts: list[tuple[int, int, bytes]], truncate: int | None) -> tuple[str, bytes]:
    extension, data = seed
    out = bytearray(data)
    for at, drop, insert in cuts:
        at %= max(len(out), 1)
        out[at : at + drop] = insert
    if truncate is not None:
        out = out[: truncate % (len(out) + 1)]
    return extension, bytes(out)


def document_files() -> st.SearchStrategy[tuple[str, bytes]]:
    """(extension, content): real documents of every format, cut, with bytes dropped, flipped or spliced
    with the tokens their parsers treat specially; and Word files whose XML is deep, an entity bomb or junk."""
    seeds = _document_seeds()  # built here, not while drawing: the writers use the random module
    template = seeds[5][1]
    seed = st.sampled_from(seeds)
    insert = st.one_of(st.binary(max_size=16), st.sampled_from(_DOCUMENT_TOKENS))
    cut = st.tuples(st.integers(0, 10**7), st.integers(0, 64), insert)
    mutated = st.builds(_mutated, seed, st.lists(cut, max_size=6), st.one_of(st.none(), st.integers(0, 10**7)))
    xml = st.one_of(
        st.integers(1, 200_000).map(lambda n: b"<w:document><w:body>" + b"<w:p>" * n),
        st.sampled_from(_DOCUMENT_TOKENS).map(lambda t: b"<?xml version='1.0'?>" + t + b"<w:document/>"),
        st.just(
            b"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a '"
            + b"x" * 1000
            + b"'>"
            + b"".join(
                b"<!ENTITY a%d '%s'>" % (i, b"&a;" * 10 if i == 0 else b"&a%d;" % (i - 1) * 10) for i in range(8)
            )
            + b"]><d>&a7;</d>"
        ),
        st.binary(max_size=256),
    )
    return st.one_of(mutated, xml.map(lambda x: (".docx", _docx_with(template, x))))


def classify_document(extension: str, data: bytes, limits: Limits | None = None) -> Result:
    """Convert one document in this process (the child's own work) and name the outcome."""
    from membrane.formats import DOCUMENT_FORMATS

    started = time.perf_counter()
    limits = limits or Limits(
        max_bytes={
            "txt": 1_000_000,
            "md": 1_000_000,
            "pdf": 50_000_000,
            "docx": 20_000_000,
            "html": 5_000_000,
            "eml": 30_000_000,
        }
    )
    try:
        converted: Converted = convert_here(DOCUMENT_FORMATS[extension], data, limits)
    except ConversionRefused as exc:
        outcome = "rejected" if str(exc).strip() else "unexplained"
        return Result(outcome, exc.code, time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - the finding this classifier exists to report
        return Result("uncaught:" + type(exc).__name__, str(exc)[:200], time.perf_counter() - started)
    problem = (
        "empty text"
        if not converted.text.strip()
        else _storable({"text": converted.text, "metadata": dict(converted.metadata)})
    )
    seconds = time.perf_counter() - started
    return Result("parsed", extension, seconds) if problem is None else Result("unusable:" + problem, "", seconds)


# ---------------------------------------------------------------- model answers


def _entity() -> st.SearchStrategy[Any]:
    name = st.one_of(
        st.text(max_size=30),
        st.just(""),
        st.just("   "),
        st.just("x" * 201),
        st.just("\ud800"),
        st.just("a\nb"),
        json_values(),
    )
    role = st.one_of(st.sampled_from(["subject", "object", "OBJECT", " subject ", "verb", ""]), json_values())
    return st.fixed_dictionaries({}, optional={"name": name, "role": role, "type": st.text(max_size=5)})


def _relationship() -> st.SearchStrategy[Any]:
    relation = st.one_of(
        st.sampled_from(
            ["WORKS_AT", "works at", "deployedOn", "1ST", "", "____", "é", "x" * 70, "KNOWS`]->(x) DETACH DELETE x//"]
        ),
        st.text(max_size=20),
        json_values(),
    )
    endpoint = st.one_of(st.sampled_from(["Alice", "Acme", "alice", "", " "]), st.text(max_size=20), json_values())
    return st.fixed_dictionaries(
        {}, optional={"source": endpoint, "relation": relation, "target": endpoint, "weight": json_values()}
    )


def answer_objects() -> st.SearchStrategy[Any]:
    """Objects near the Extraction schema: keys missing, renamed or extra, wrong types, too many items."""
    items = st.one_of(
        st.lists(_entity(), max_size=8),
        json_values(),
        st.integers(30, 400).map(lambda n: [{"name": f"E{i}", "role": "subject"} for i in range(n)]),
    )
    rels = st.one_of(st.lists(_relationship(), max_size=8), json_values())
    return st.one_of(
        st.fixed_dictionaries(
            {}, optional={"entities": items, "relationships": rels, "Entities": items, "comment": st.text(max_size=10)}
        ),
        json_values(),
    )


def model_answers() -> st.SearchStrategy[str]:
    """Raw answers: random JSON, schema near-misses, wrapped in reasoning, fences or prose, cut off."""
    body = st.one_of(
        answer_objects().map(lambda v: json.dumps(v, allow_nan=True)),
        st.sampled_from(_JSON_ATOMS),
        deep("[", "]"),
        deep('{"entities": ', "}"),
        st.text(max_size=300),
    )
    wrap = st.sampled_from(
        [
            "{}",
            "<think>{}</think>{}",
            "<think>{}",
            "{}</think>",
            "```json\n{}\n```",
            "```{}",
            "Sure! Here: {} Done.",
            "<reasoning>a</reasoning><THINK>b</think>{}",
            "{}\n{}",
            "<think>" * 50 + "{}",
        ]
    )
    cut = st.one_of(st.none(), st.integers(0, 400))
    return st.tuples(body, wrap, cut).map(lambda t: _wrapped(*t))


def _wrapped(body: str, wrap: str, cut: int | None) -> str:
    text = wrap.replace("{}", body)
    return text if cut is None else text[:cut]


# ---------------------------------------------------------------- classifiers


@dataclass(frozen=True)
class Result:
    outcome: str  # parsed | rejected | uncaught:<type> | unusable:<why> | unexplained
    detail: str  # the rejection code or parsed format
    seconds: float

    @property
    def ok(self) -> bool:
        return self.outcome in ("parsed", "rejected")


def _storable(value: Any) -> str | None:
    """Why a parsed value could not be stored as UTF-8 JSON (None if it can)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        return type(exc).__name__
    return None


def _capture_problem(capture: Capture) -> str | None:
    if not capture.text.strip():
        return "empty text"
    return _storable({"text": capture.text, "metadata": dict(capture.metadata)})


def classify_capture(path: Path, inbox: InboxSettings) -> Result:
    """Read one capture file and name the outcome."""
    started = time.perf_counter()
    try:
        capture = read_capture(path, inbox)
    except (Rejection, CaptureVanished) as exc:
        outcome = "rejected" if str(exc).strip() else "unexplained"
        code = exc.code if isinstance(exc, Rejection) else "vanished"
        return Result(outcome, code, time.perf_counter() - started)
    except MembraneError as exc:
        return Result("uncaught:" + type(exc).__name__, str(exc)[:200], time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - the finding this classifier exists to report
        return Result("uncaught:" + type(exc).__name__, str(exc)[:200], time.perf_counter() - started)
    problem = _capture_problem(capture)
    seconds = time.perf_counter() - started
    return Result("parsed", capture.format, seconds) if problem is None else Result("unusable:" + problem, "", seconds)


def classify_answer(raw: str, rules: ExtractionRules) -> Result:
    """Parse one model answer and name the outcome."""
    started = time.perf_counter()
    try:
        extraction = parse_output(raw, rules)
    except InvalidOutput as exc:
        outcome = "rejected" if str(exc).strip() else "unexplained"
        return Result(outcome, str(exc).split(":", 1)[0][:60], time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - the finding this classifier exists to report
        return Result("uncaught:" + type(exc).__name__, str(exc)[:200], time.perf_counter() - started)
    problem = _extraction_problem(extraction)
    seconds = time.perf_counter() - started
    return Result("parsed", "", seconds) if problem is None else Result("unusable:" + problem, "", seconds)


def _extraction_problem(extraction: Extraction) -> str | None:
    return _storable(extraction.model_dump(mode="python"))


def write_capture(folder: Path, name: bytes, content: bytes) -> Path:
    """Write `content` under the exact byte name `name` in `folder`."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
        handle.write(content)
    return path
