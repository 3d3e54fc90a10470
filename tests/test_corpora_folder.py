"""Folder reader: every supported format, every skip reason, determinism and root errors."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lexlora.corpora.document import CorpusReadReport
from lexlora.corpora.folder import read_folder_documents
from lexlora.errors import LexloraError


def minimal_pdf(*page_texts: str) -> bytes:
    """A valid PDF with one Helvetica text line per page, objects and xref written by hand."""
    n_pages = len(page_texts)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode(),
    ]
    for i, text in enumerate(page_texts):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


HTML = """<!DOCTYPE html>
<html><head><title>Lease   Agreement</title>
<style>body { color: red; }</style>
<script>var secret = "SCRIPT-TEXT";</script></head>
<body>
<nav><a href="/">NAV-TEXT Home</a></nav>
<h1>Lease</h1>
<p>The tenant shall
   pay rent monthly.</p>
<ul><li>Term: 12 months</li><li>Deposit: <b>two</b> months</li></ul>
<p>Signed<br>Landlord</p>
<!-- COMMENT-TEXT -->
<script>document.write("MORE-SCRIPT")</script>
</body></html>
"""


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "firm"
    (root / "ndas").mkdir(parents=True)
    (root / "leases" / "2024").mkdir(parents=True)
    (root / "misc").mkdir()
    (root / ".git").mkdir()
    (root / "notes.txt").write_text("\n\nMemo on filing deadlines\r\nSecond line.\n", "utf-8")
    (root / "ndas" / "mutual.md").write_text(
        "Intro paragraph before the heading.\n\n# Mutual NDA\n\nBoth parties agree.\n", "utf-8"
    )
    (root / "leases" / "2024" / "office.HTML").write_text(HTML, "utf-8")
    (root / "leases" / "scan.pdf").write_bytes(minimal_pdf("Page one text", "Page two text"))
    (root / "misc" / "empty.txt").write_text("  \n\t\n", "utf-8")
    (root / "misc" / "blob.txt").write_bytes(b"abc\x00\x01\x02def")
    (root / "misc" / "latin1.txt").write_bytes("Café contract".encode("latin-1"))
    (root / "misc" / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    (root / "misc" / "memo.docx").write_bytes(b"PK\x03\x04 not supported")
    (root / ".hidden.txt").write_text("hidden file", "utf-8")
    (root / ".git" / "config.txt").write_text("hidden folder", "utf-8")
    return root


def test_reads_supported_files_in_path_order(corpus: Path) -> None:
    docs = list(read_folder_documents(corpus))
    assert [d.id for d in docs] == [
        "folder:leases/2024/office.HTML",
        "folder:leases/scan.pdf",
        "folder:ndas/mutual.md",
        "folder:notes.txt",
    ]
    assert {d.source for d in docs} == {"folder:firm"}
    assert {d.licence for d in docs} == {"user-provided"}


def test_text_markdown_and_titles(corpus: Path) -> None:
    docs = {d.id: d for d in read_folder_documents(corpus)}
    txt = docs["folder:notes.txt"]
    assert txt.text == "Memo on filing deadlines\nSecond line."
    assert txt.title == "Memo on filing deadlines"
    assert txt.metadata == {
        "path": "notes.txt",
        "format": "txt",
        "bytes": (corpus / "notes.txt").stat().st_size,
        "category": "root",
    }
    md = docs["folder:ndas/mutual.md"]
    assert md.title == "Mutual NDA"
    assert md.text.startswith("Intro paragraph") and "Both parties agree." in md.text
    assert md.metadata["format"] == "md" and md.metadata["category"] == "ndas"


def test_html_drops_script_style_nav_and_keeps_blocks(corpus: Path) -> None:
    doc = next(d for d in read_folder_documents(corpus) if d.metadata["format"] == "html")
    assert doc.title == "Lease Agreement"
    assert doc.metadata["category"] == "leases"
    for hidden in ("SCRIPT-TEXT", "MORE-SCRIPT", "color: red", "NAV-TEXT", "COMMENT-TEXT"):
        assert hidden not in doc.text
    assert doc.text == (
        "Lease\n\n"
        "The tenant shall pay rent monthly.\n\n"
        "- Term: 12 months\n"
        "- Deposit: two months\n\n"
        "Signed\nLandlord"
    )


def test_pdf_pages_joined_with_blank_line(corpus: Path) -> None:
    doc = next(d for d in read_folder_documents(corpus) if d.metadata["format"] == "pdf")
    assert doc.text == "Page one text\n\nPage two text"
    assert doc.title == "Page one text"
    assert doc.metadata["bytes"] == (corpus / "leases" / "scan.pdf").stat().st_size


def test_skips_are_counted_and_warned(corpus: Path) -> None:
    report = CorpusReadReport()
    docs = list(read_folder_documents(corpus, report))
    assert report.read == len(docs) == 4
    assert report.skipped == {
        "binary": 1,
        "empty": 1,
        "not-utf8": 1,
        "unreadable-pdf": 1,
        "unsupported-extension": 1,
    }
    assert report.warnings == [
        "misc/blob.txt: skipped (binary)",
        "misc/broken.pdf: skipped (unreadable-pdf)",
        "misc/empty.txt: skipped (empty)",
        "misc/latin1.txt: skipped (not-utf8)",
        "misc/memo.docx: skipped (unsupported-extension)",
    ]
    assert report.n_skipped == 5
    assert not any("hidden" in w for w in report.warnings)


def test_pdf_without_text_is_empty(tmp_path: Path) -> None:
    (tmp_path / "blank.pdf").write_bytes(minimal_pdf(""))
    report = CorpusReadReport()
    assert list(read_folder_documents(tmp_path, report)) == []
    assert report.skipped == {"empty": 1}


def test_long_first_line_falls_back_to_stem(tmp_path: Path) -> None:
    (tmp_path / "long-clause.txt").write_text("x" * 121 + "\nrest", "utf-8")
    (tmp_path / "short.txt").write_text("y" * 120, "utf-8")
    titles = [d.title for d in read_folder_documents(tmp_path)]
    assert titles == ["long-clause", "y" * 120]


def test_deterministic(corpus: Path) -> None:
    first = [d.model_dump() for d in read_folder_documents(corpus)]
    second = [d.model_dump() for d in read_folder_documents(corpus)]
    assert first == second


def test_missing_root_and_file_root_are_user_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(LexloraError, match="nowhere: folder not found"):
        read_folder_documents(missing)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x", "utf-8")
    with pytest.raises(LexloraError, match=r"file\.txt: not a folder"):
        read_folder_documents(a_file)


class StillReading(Exception):
    """Not an OSError: the reader's own ``except OSError`` must not swallow it."""


@contextmanager
def fails_after(seconds: int) -> Iterator[None]:
    """Raise StillReading in the block after ``seconds`` (a blocked open() included)."""

    def expire(*_):
        raise StillReading(f"still reading after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_only_regular_files_are_read_and_every_other_entry_is_counted(tmp_path: Path) -> None:
    root, outside = tmp_path / "firm", tmp_path / "private"
    (root / "ndas").mkdir(parents=True)
    outside.mkdir()
    (root / "ndas" / "mutual.txt").write_text("Both parties agree to keep secrets.", "utf-8")
    (root / "big.txt").write_text("x" * 2000, "utf-8")
    (outside / "id_rsa.txt").write_text("PRIVATE KEY", "utf-8")
    os.mkfifo(root / "pipe.txt")  # nobody ever writes: opening it for reading would block
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock.txt"))
        (root / "alias.txt").symlink_to(root / "ndas" / "mutual.txt")  # inside: read
        (root / "key.txt").symlink_to(outside / "id_rsa.txt")  # out of the folder: skipped
        (root / "gone.txt").symlink_to(root / "missing.txt")
        (root / "linked").symlink_to(outside, target_is_directory=True)
        report = CorpusReadReport()
        with fails_after(20):
            docs = list(read_folder_documents(root, report, max_file_bytes=1000))
    assert [d.id for d in docs] == ["folder:alias.txt", "folder:ndas/mutual.txt"]
    assert not any("PRIVATE" in d.text for d in docs)
    assert report.skipped == {
        "broken-link": 1,
        "link-outside-folder": 1,
        "linked-folder": 1,
        "not-a-regular-file": 2,
        "too-large": 1,
    }
    assert "pipe.txt: skipped (not-a-regular-file)" in report.warnings
    assert "big.txt: skipped (too-large)" in report.warnings
    assert "folder:big.txt" in [d.id for d in read_folder_documents(root)]  # default cap: 50 MB
