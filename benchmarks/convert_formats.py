"""Text quality and speed of the document converters MemBrane could use.

Builds sample files with the libraries themselves (tests/support/documents.py:
PDFs written by pypdf, .docx by python-docx, a saved blog page, an e-mail)
from passages of config/eval/real.jsonl, in three sizes (5, 40 and 289
passages), and converts each with every candidate importable here:

    pdf   pypdf, pdfminer.six, markitdown (which reads PDFs with pdfminer.six)
    html  trafilatura, justext, lxml (all text, the baseline), markitdown
    docx  python-docx, stdlib zipfile + XML (the baseline), markitdown
    eml   stdlib email (the only candidate; its speed)

and with MemBrane's own converter as the daemon runs it ("membrane (child)":
membrane.formats in its child process, spawn and imports included).

Quality, against the words the document really holds (for web pages: the
article, its title and byline, not the menus, banner and footer around it):
recall (share of those words found), precision (share of the output's words
that are among them: boilerplate lowers it), and order (rapidfuzz ratio of
the two texts with whitespace collapsed, 0-100). Speed: the median of
--repeat timed conversions after an untimed warm-up. A row whose output
holds under half the document's words is marked failed.

markitdown is heavy (onnxruntime, magika; about 270 MB), so it is read from
--extra-path when given, never from MemBrane's own environment:

    .venv/bin/pip install --target /tmp/markitdown 'markitdown[pdf,docx]'
    .venv/bin/python benchmarks/convert_formats.py --extra-path /tmp/markitdown [--repeat 5]
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import re
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import exit_code, mark  # noqa: E402

from tests.support.documents import Document, docx_bytes, eml_bytes, html_bytes, pdf_bytes, real_paragraphs  # noqa: E402

SIZES = {"small": 5, "medium": 40, "large": 289}
_WORD = re.compile(r"\w+")

Converter = Callable[[bytes, Path], str]


# ---------------------------------------------------------------- candidates


def _pypdf(data: bytes, path: Path) -> str:
    from pypdf import PdfReader

    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def _pdfminer(data: bytes, path: Path) -> str:
    from pdfminer.high_level import extract_text

    return str(extract_text(io.BytesIO(data)))


def _trafilatura(data: bytes, path: Path) -> str:
    import trafilatura

    return trafilatura.extract(data.decode("utf-8"), include_comments=False) or ""


def _justext(data: bytes, path: Path) -> str:
    import justext

    paragraphs = justext.justext(data, justext.get_stoplist("English"))
    return "\n\n".join(p.text for p in paragraphs if not p.is_boilerplate)


def _lxml_all(data: bytes, path: Path) -> str:
    import lxml.html

    tree = lxml.html.fromstring(data)
    for bad in tree.xpath("//script|//style"):
        bad.drop_tree()
    return str(tree.text_content())


def _python_docx(data: bytes, path: Path) -> str:
    import docx

    word = docx.Document(io.BytesIO(data))
    parts = [p.text for p in word.paragraphs]
    parts += ["\t".join(cell.text for cell in row.cells) for table in word.tables for row in table.rows]
    return "\n".join(parts)


def _zip_xml(data: bytes, path: Path) -> str:
    from xml.etree import ElementTree

    namespace = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        root = ElementTree.fromstring(archive.read("word/document.xml"))
    return "\n".join("".join(t.text or "" for t in p.iter(namespace + "t")) for p in root.iter(namespace + "p"))


def _stdlib_email(data: bytes, path: Path) -> str:
    import email
    from email import policy

    message = email.message_from_bytes(data, policy=policy.default)
    body = message.get_body(preferencelist=("plain",))
    return f"{message['subject']}\n\n{body.get_content() if body is not None else ''}"


def _membrane(fmt: str) -> Converter:
    from membrane.formats import Limits, convert_isolated

    limits = Limits(max_bytes={"pdf": 50_000_000, "docx": 20_000_000, "html": 5_000_000, "eml": 30_000_000})

    def convert(data: bytes, path: Path) -> str:
        return convert_isolated(fmt, data, limits, timeout_s=120, memory_bytes=1 << 30).text

    return convert


def _markitdown() -> Converter | None:
    try:
        from markitdown import MarkItDown
    except ImportError:
        return None
    converter = MarkItDown()

    def convert(data: bytes, path: Path) -> str:
        return str(converter.convert(str(path)).text_content)

    return convert


def candidates() -> dict[str, dict[str, Converter]]:
    markitdown = _markitdown()
    found: dict[str, dict[str, Converter]] = {
        "pdf": {"pypdf": _pypdf, "pdfminer.six": _pdfminer},
        "html": {"trafilatura": _trafilatura, "justext": _justext, "lxml (all text)": _lxml_all},
        "docx": {"python-docx": _python_docx, "zipfile + XML": _zip_xml},
        "eml": {"email (stdlib)": _stdlib_email},
    }
    if markitdown is not None:
        for fmt in ("pdf", "html", "docx"):
            found[fmt]["markitdown"] = markitdown
    for fmt, converters in found.items():
        converters["membrane (child)"] = _membrane(fmt)
    return found


# ---------------------------------------------------------------- samples and scores


def samples(folder: Path) -> list[tuple[str, str, Path, str]]:
    """(format, sample, file, the text it truly holds): every format in every size,
    and the PDF layouts that tell readers apart (words spaced by gaps, two columns)."""
    out = []
    medium = Document(tuple(real_paragraphs(SIZES["medium"])))
    truth = medium.text.encode("cp1252", "replace").decode("cp1252")
    for layout in ("gaps", "columns"):
        path = folder / f"medium-{layout}.pdf"
        path.write_bytes(pdf_bytes(medium, layout=layout))
        out.append(("pdf", f"medium, {layout}", path, truth))
    for size, count in SIZES.items():
        document = Document(
            tuple(real_paragraphs(count)), date=datetime(2024, 3, 5, 9, 30, tzinfo=UTC), url="https://example.org/notes"
        )
        pdf_truth = document.text.encode("cp1252", "replace").decode("cp1252")
        heading = f"{document.title}\n\nBy {document.author}\n\n"
        parts = {
            "pdf": (pdf_bytes(document), pdf_truth),
            "html": (html_bytes(document), heading + document.text),
            "docx": (
                docx_bytes(document),
                document.title
                + "\n"
                + "\n".join(
                    (f"Part {i // 3 + 1}\n" if i and i % 3 == 0 else "") + p for i, p in enumerate(document.paragraphs)
                ),
            ),
            "eml": (eml_bytes(document), document.title + "\n\n" + document.text),
        }
        for fmt, (data, truth) in parts.items():
            path = folder / f"{size}.{fmt}"
            path.write_bytes(data)
            out.append((fmt, size, path, truth))
    return out


def _words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def quality(output: str, truth: str) -> dict[str, float]:
    from rapidfuzz import fuzz

    got, want = collections.Counter(_words(output)), collections.Counter(_words(truth))
    common = sum((got & want).values())
    return {
        "recall": round(common / max(sum(want.values()), 1), 3),
        "precision": round(common / max(sum(got.values()), 1), 3),
        "order": round(fuzz.ratio(" ".join(output.split()), " ".join(truth.split())), 1),
    }


def measure(convert: Converter, path: Path, truth: str, repeat: int) -> dict[str, Any]:
    data = path.read_bytes()
    output = convert(data, path)  # warm-up, and the output judged
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        convert(data, path)
        seconds.append(time.perf_counter() - started)
    row = {
        **quality(output, truth),
        "ms": round(statistics.median(seconds) * 1000, 2),
        "bytes": len(data),
        "text_chars": len(truth),
    }
    return mark(row, [f"recall {row['recall']} < 0.5"] if row["recall"] < 0.5 else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", help="comma-separated formats (pdf, html, docx, eml)")
    parser.add_argument("--extra-path", help="a pip --target folder holding markitdown")
    args = parser.parse_args()
    if args.extra_path:
        sys.path.append(args.extra_path)
    rows = []
    with tempfile.TemporaryDirectory(prefix="membrane-convert-") as tmp:
        found = candidates()
        for fmt, size, path, truth in samples(Path(tmp)):
            if args.only and fmt not in args.only.split(","):
                continue
            for name, convert in found[fmt].items():
                try:
                    row = measure(convert, path, truth, args.repeat)
                except Exception as exc:  # noqa: BLE001 - a candidate that cannot read the sample is a row
                    row = mark({}, [f"{type(exc).__name__}: {exc}"[:200]])
                row = {"format": fmt, "size": size, "library": name, **row}
                rows.append(row)
                print(json.dumps(row), flush=True)
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
