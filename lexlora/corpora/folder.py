"""A user's own folder of documents (.txt, .md, .html/.htm, .pdf) as a corpus.

Files are found recursively, hidden (dot-prefixed) files and folders ignored, and read in order of
relative POSIX path. Only regular files are read, each up to ``max_file_bytes``; a symbolic link is
followed only when it resolves to a regular file inside the root (a link out of the folder could
pull private files into training data), and linked sub-folders are not entered. Each readable
file becomes one :class:`Document` with id ``folder:<relative path>``; ``metadata["category"]``
is the first sub-folder under the root (or ``"root"``), so a firm can stratify by ``ndas/``,
``leases/``, ...

Files that cannot be used are skipped and counted in a :class:`CorpusReadReport`, never raised:
``empty`` (no text after extraction, e.g. a whitespace-only file or a scanned PDF without a text
layer), ``binary`` (NUL bytes in the first 8 KB of a text file), ``not-utf8``, ``unreadable-pdf``
(pypdf cannot parse it, or it has no pages), ``unsupported-extension``, ``unreadable`` (OS error),
``not-a-regular-file`` (FIFO, socket, device), ``too-large``, ``link-outside-folder``,
``broken-link``, ``linked-folder`` and ``unreadable-folder`` (a sub-folder that cannot be listed,
counted once: its documents are unknown).
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bs4 import BeautifulSoup
from bs4.element import NavigableString, PreformattedString, Tag
from pypdf import PdfReader

from lexlora.corpora.document import CorpusReadReport, Document
from lexlora.errors import LexloraError

LICENCE = "user-provided"
FORMATS: dict[str, str] = {
    ".txt": "txt",
    ".md": "md",
    ".markdown": "md",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
MAX_TITLE_CHARS = 120
BINARY_SNIFF_BYTES = 8192
DEFAULT_MAX_FILE_BYTES = 50_000_000

_DROP_TAGS = frozenset({"script", "style", "nav", "noscript", "template", "head"})
# Blocks separated by a blank line; line-level blocks by a single newline.
_PARAGRAPH_TAGS = frozenset(
    {
        "p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote",
        "pre", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "figure",
        "form", "fieldset", "address", "hr", "body",
    }
)  # fmt: skip
_LINE_TAGS = frozenset({"li", "tr", "dt", "dd", "caption", "figcaption", "option"})
_CELL_TAGS = frozenset({"td", "th"})
_MD_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$")


class _Skip(Exception):
    """Internal: the current file is skipped for ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_folder_documents(
    root: Path,
    report: CorpusReadReport | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Iterator[Document]:
    """Documents from every supported file under ``root``; ``report`` collects counts/warnings.

    The root is checked immediately (a missing root or a file is a LexloraError); files are read
    lazily while iterating. A file over ``max_file_bytes`` is skipped (``too-large``).
    """
    root = Path(root)
    if not root.exists():
        raise LexloraError(f"{root}: folder not found")
    if not root.is_dir():
        raise LexloraError(f"{root}: not a folder")
    if max_file_bytes < 1:
        raise LexloraError(f"max_file_bytes {max_file_bytes}: expected at least 1")
    report = report if report is not None else CorpusReadReport()
    return _iter_documents(root, report, max_file_bytes)


def _iter_documents(root: Path, report: CorpusReadReport, max_bytes: int) -> Iterator[Document]:
    source = f"folder:{root.resolve().name or root.resolve().as_posix()}"
    for rel in _list_files(root, report):
        try:
            doc = _read_file(root, rel, source, max_bytes)
        except _Skip as skip:
            report.skip(rel, skip.reason)
            continue
        report.read += 1
        yield doc


def _list_files(root: Path, report: CorpusReadReport) -> list[str]:
    """Relative POSIX paths of the non-hidden files under ``root``, sorted; sub-folders that
    cannot be listed and linked sub-folders are counted in ``report``."""
    found: list[str] = []

    def unlistable(error: OSError) -> None:
        report.skip(Path(error.filename).relative_to(root).as_posix(), "unreadable-folder")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        base = Path(dirpath).relative_to(root)
        visible = [d for d in dirnames if not d.startswith(".")]
        for d in visible:
            if (Path(dirpath) / d).is_symlink():
                report.skip((base / d).as_posix(), "linked-folder")
        dirnames[:] = [d for d in visible if not (Path(dirpath) / d).is_symlink()]
        found.extend((base / f).as_posix() for f in filenames if not f.startswith("."))
    return sorted(found)


def _read_file(root: Path, rel: str, source: str, max_bytes: int) -> Document:
    path = root / rel
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise _Skip("unsupported-extension")
    data = _read_regular_file(root, path, max_bytes)
    if fmt == "pdf":
        text, title = _pdf_text(data), None
    else:
        text, title = _text_and_title(_decode(data), fmt)
    if not text.strip():
        raise _Skip("empty")
    parts = rel.split("/")
    return Document(
        id=f"folder:{rel}",
        title=_pick_title(title, text, path.stem),
        text=text,
        metadata={
            "path": rel,
            "format": fmt,
            "bytes": len(data),
            "category": parts[0] if len(parts) > 1 else "root",
        },
        source=source,
        licence=LICENCE,
    )


def _read_regular_file(root: Path, path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is (or links, inside ``root``, to) a regular file of at most
    ``max_bytes``; otherwise _Skip. Never blocks: the file is opened non-blocking (a FIFO opens at
    once) and checked with fstat on the opened descriptor, not on the name."""
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling, or a loop
            raise _Skip("broken-link") from None
        if not target.is_relative_to(root.resolve()):
            raise _Skip("link-outside-folder")
        path = target
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # devices are not even opened
            raise _Skip("not-a-regular-file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise _Skip("unreadable") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Skip("not-a-regular-file")
        if info.st_size > max_bytes:
            raise _Skip("too-large")
        try:
            data = f.read(max_bytes + 1)
        except OSError:
            raise _Skip("unreadable") from None
    if len(data) > max_bytes:  # grew while being read
        raise _Skip("too-large")
    return data


def _decode(data: bytes) -> str:
    """UTF-8 text with normalised newlines; ``binary``/``not-utf8``/``empty`` raise _Skip."""
    if not data.strip():
        raise _Skip("empty")
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise _Skip("binary")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _Skip("not-utf8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _text_and_title(raw: str, fmt: str) -> tuple[str, str | None]:
    """Plain text and a preferred title (markdown ``# heading`` or HTML ``<title>``)."""
    if fmt == "html":
        return _html_text_and_title(raw)
    text = raw.strip()
    if fmt == "md":
        for line in text.split("\n"):
            if match := _MD_HEADING.match(line):
                return text, match.group(1)
    return text, None


def _pick_title(preferred: str | None, text: str, stem: str) -> str:
    """The preferred title, else the first non-empty line, if ≤ 120 chars; else the file stem."""
    first_line = next((line for line in text.split("\n") if line.strip()), "")
    for candidate in (preferred, first_line):
        candidate = " ".join((candidate or "").split())
        if 0 < len(candidate) <= MAX_TITLE_CHARS:
            return candidate
    return stem


def _html_text_and_title(raw: str) -> tuple[str, str | None]:
    soup = BeautifulSoup(raw, "html.parser")
    title = soup.title.get_text() if soup.title else None
    for tag in soup.find_all(sorted(_DROP_TAGS)):
        tag.decompose()
    return _html_blocks_to_text(soup), title


def _html_blocks_to_text(soup: BeautifulSoup) -> str:
    """Visible text, one line per paragraph/heading/list item; blank lines between paragraphs.

    Walks the tree with an explicit stack (deeply nested HTML must not hit the recursion limit).
    Breaks are ints (1 = newline, 2 = blank line); adjacent breaks merge to the strongest.
    """
    out: list[str | int] = []
    stack: list[object] = list(reversed(list(soup.children)))
    while stack:
        node = stack.pop()
        if isinstance(node, int):
            out.append(node)
        elif isinstance(node, PreformattedString):
            continue  # comments, doctype, CDATA, processing instructions
        elif isinstance(node, NavigableString):
            out.append(str(node) if _in_pre(node) else _squash(node))
        elif isinstance(node, Tag):
            stack.extend(_open_tag(node, out))
    return _tidy_lines(_join_breaks(out))


def _open_tag(tag: Tag, out: list[str | int]) -> list[object]:
    """Emit the tag's opening break; return what to push (closing break, children reversed)."""
    if tag.name == "br":
        out.append(-1)  # a forced newline: adds to, rather than merges with, a pending break
        return []
    brk = 2 if tag.name in _PARAGRAPH_TAGS else 1 if tag.name in _LINE_TAGS else 0
    out.append(brk)
    if tag.name == "li":
        out.append("- ")
    elif tag.name in _CELL_TAGS:
        out.append(" ")
    return [brk, *reversed(list(tag.children))]


def _join_breaks(parts: list[str | int]) -> str:
    """Join text parts, turning each run of breaks between visible text into 1 or 2 newlines."""
    text: list[str] = []
    pending = 0
    for part in parts:
        if isinstance(part, int):
            pending = min(pending + 1, 2) if part < 0 else max(pending, part)
        elif part.strip():
            if text and pending:
                text.append("\n" * pending)
            text.append(part)
            pending = 0
        elif not pending:
            text.append(part)
    return "".join(text)


def _in_pre(node: NavigableString) -> bool:
    return any(parent.name == "pre" for parent in node.parents)


def _squash(text: str) -> str:
    """Collapse runs of whitespace (including newlines) to one space, as a browser does."""
    return re.sub(r"\s+", " ", text)


def _tidy_lines(text: str) -> str:
    """Collapse spaces in each line and runs of blank lines to one blank line; strip."""
    lines = [" ".join(line.split()) for line in text.split("\n")]
    tidy: list[str] = []
    for line in lines:
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return "\n".join(tidy).strip()


def _pdf_text(data: bytes) -> str:
    """Text of every page, pages joined with a blank line; unparseable PDFs raise _Skip."""
    if not data.strip():
        raise _Skip("empty")
    try:
        with _quiet_pypdf():
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                reader.decrypt("")
            pages = [page.extract_text() or "" for page in reader.pages]
    except Exception:  # pypdf raises many exception types on malformed input
        raise _Skip("unreadable-pdf") from None
    if not pages:
        raise _Skip("unreadable-pdf")
    texts = [_tidy_lines(page) for page in pages]
    return "\n\n".join(t for t in texts if t)


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """Silence pypdf's log warnings about malformed files (they are reported as skips)."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
