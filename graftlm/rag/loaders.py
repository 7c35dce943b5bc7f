"""Files to documents: txt, md, html (text only), pdf (pypdf), jsonl ({"id"?, "text", "metadata"?} per line)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from graftlm.errors import GraftError

SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
            ".html": "html", ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl"}


class _HTMLText(HTMLParser):
    """Visible text; headings become markdown headings and blocks become paragraphs, so chunking sees them."""

    _BLOCKS = {"p", "div", "section", "article", "li", "tr", "table", "ul", "ol", "br", "pre", "blockquote",
               "header", "footer", "main", "nav", "aside", "dd", "dt", "figure"}
    _SKIP = {"script", "style", "head", "noscript", "template", "svg"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.title: str | None = None
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skip += 1
        if tag == "title":
            self._in_title = True
        if len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCKS:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP and self.skip:
            self.skip -= 1
        if tag == "title":
            self._in_title = False
        if (len(tag) == 2 and tag[0] == "h" and tag[1] in "123456") or tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self._in_title and self.title is None:
            self.title = data.strip() or None
        if not self.skip:
            self.parts.append(" ".join(data.split()) if data.strip() else (" " if data else ""))

    def text(self) -> str:
        raw = "".join(self.parts)
        paragraphs = [" ".join(p.split()) for p in raw.split("\n\n")]
        return "\n\n".join(p for p in paragraphs if p)


def html_to_text(html: str) -> tuple[str, str | None]:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text(), parser.title


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GraftError(f"{path.name}: not UTF-8 text (byte {e.start}): {e.reason}") from e


def load_file(path: str | Path) -> list[dict]:
    """Documents from one file, each {"id", "text", "metadata"}; a GraftError names what is wrong."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise GraftError(f"{path.name}: unsupported file type {path.suffix!r}; supported: "
                         f"{', '.join(sorted(SUFFIXES))}")
    if not path.is_file():
        raise GraftError(f"{path}: no such file")
    meta = {"source": path.name}
    if kind in ("text", "markdown"):
        docs = [{"id": path.name, "text": _read_text(path), "metadata": meta}]
    elif kind == "html":
        text, title = html_to_text(_read_text(path))
        docs = [{"id": path.name, "text": text, "metadata": {**meta, **({"title": title} if title else {})}}]
    elif kind == "pdf":
        docs = [_load_pdf(path, meta)]
    else:
        docs = _load_jsonl(path, meta)
    for d in docs:
        if not d["text"].strip():
            raise GraftError(f"{path.name}: no text found" + (f" (document {d['id']!r})" if kind == "jsonl" else ""))
    return docs


def _load_pdf(path: Path, meta: dict) -> dict:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except Exception as e:  # noqa: BLE001 - a damaged PDF can break pypdf in many ways; all mean "unreadable"
        raise GraftError(f"{path.name}: not a readable PDF: {type(e).__name__}: {e}") from e
    return {"id": path.name, "text": "\n\n".join(p for p in pages if p),
            "metadata": {**meta, "pages": len(pages)}}


def jsonl_rows(name: str, text: str):
    """(line number, parsed value) of each non-blank line; invalid JSON is a GraftError naming the line."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise GraftError(f"{name} line {lineno}: invalid JSON: {e.msg}") from e


def _load_jsonl(path: Path, meta: dict) -> list[dict]:
    docs = []
    for lineno, row in jsonl_rows(path.name, _read_text(path)):
        if not isinstance(row, dict):
            raise GraftError(f"{path.name} line {lineno}: expected an object with a \"text\" field")
        text = row.get("text")
        if not isinstance(text, str):
            raise GraftError(f"{path.name} line {lineno}: field \"text\" must be a string")
        metadata = row.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise GraftError(f"{path.name} line {lineno}: field \"metadata\" must be an object")
        doc_id = row.get("id", f"{path.name}:{lineno}")
        if not isinstance(doc_id, (str, int)):
            raise GraftError(f"{path.name} line {lineno}: field \"id\" must be a string")
        docs.append({"id": str(doc_id), "text": text, "metadata": {**meta, **metadata}})
    if not docs:
        raise GraftError(f"{path.name}: no documents (empty file)")
    return docs
