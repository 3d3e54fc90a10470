"""ICD-10-CM reader: exact rendering on a hand-written fixture, then the real CDC XML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lexlora.corpora import icd10cm
from lexlora.corpora.document import Document
from lexlora.corpora.icd10cm import (
    CODE_LINE_RE,
    NOTE_LINE_RE,
    find_icd10cm_xml,
    read_icd10cm_documents,
)
from lexlora.errors import LexloraError

FIXTURE_XML = """\
<?xml version="1.0" encoding="utf-8"?>
<ICD10CM.tabular>
  <version>2026</version>
  <introduction><introSection type="title"><title>ignored</title></introSection></introduction>
  <chapter>
    <name>19</name>
    <desc>Injury, poisoning   and certain other consequences (S00-T88)</desc>
    <excludes2><note>chapter notes are not repeated in blocks</note></excludes2>
    <sectionIndex>
      <sectionRef first="S00" last="S01" id="S00-S01">Injuries to the head</sectionRef>
    </sectionIndex>
    <section id="S00-S01">
      <desc>Injuries to the head (S00-S01)</desc>
      <includes><note>injuries of ear</note><note>injuries of eye</note></includes>
      <codeAlso><note>any associated infection</note></codeAlso>
      <excludes1><note>burns (T20-T32)</note></excludes1>
      <excludes2><note>frostbite (T33-T34)</note></excludes2>
      <codeFirst><note>underlying condition</note></codeFirst>
      <useAdditionalCode><note>external cause code</note></useAdditionalCode>
      <inclusionTerm><note>Head trauma</note></inclusionTerm>
      <notes><note>A block note,
               wrapped   over lines.</note></notes>
      <diag>
        <name>S00</name>
        <desc>Superficial injury of head</desc>
        <excludes1><note>open wound of head (S01.-)</note></excludes1>
        <sevenChrNote><note>The appropriate 7th character is to be added</note></sevenChrNote>
        <sevenChrDef>
          <extension char="A">initial encounter</extension>
          <extension char="D">subsequent encounter</extension>
          <note>Old injury</note>
        </sevenChrDef>
        <diag>
          <name>S00.0</name>
          <desc>Superficial injury of scalp</desc>
          <inclusionTerm><note>Bruise of scalp</note><note>Hematoma of scalp</note></inclusionTerm>
          <diag placeholder="true">
            <name>S00.0X</name>
            <desc>Abrasion of scalp</desc>
            <includes><note>graze</note></includes>
            <excludes2><note>burn of scalp (T20.05)</note></excludes2>
            <codeFirst><note>any skin condition</note></codeFirst>
            <codeAlso><note>hair loss</note></codeAlso>
            <useAdditionalCode><note>code for cause</note></useAdditionalCode>
            <notes><note>Rarely used.</note></notes>
          </diag>
        </diag>
      </diag>
      <diag>
        <name>S01</name>
        <desc>Open wound of head</desc>
        <visualImpairment>
          <visCategory>
            <heading>Category of visual impairment</heading>
            <visRange>
              <heading>Visual acuity</heading>
              <visMax><heading>Maximum less than:</heading></visMax>
              <visMin><heading>Minimum equal to or better than:</heading></visMin>
            </visRange>
          </visCategory>
          <visCategory>
            <value>1</value>
            <visRange><visMax><value>6/18</value></visMax><visMin><value>6/60</value></visMin></visRange>
            <visRange><visMax><value>20/70</value></visMax><visMin><value>20/200</value></visMin></visRange>
          </visCategory>
          <visCategory>
            <value>5</value>
            <visRange><visMax><value>No light perception</value></visMax></visRange>
          </visCategory>
        </visualImpairment>
      </diag>
    </section>
    <section id="T07-T88">
      <desc> Injury, other (T07-T88)</desc>
      <notes><note>Header block without codes.</note></notes>
    </section>
  </chapter>
</ICD10CM.tabular>
"""

EXPECTED_S00_S01 = "\n".join(
    [
        "Injuries to the head (S00-S01)",
        "Chapter 19: Injury, poisoning and certain other consequences (S00-T88)",
        "Includes: injuries of ear",
        "Includes: injuries of eye",
        "Code also: any associated infection",
        "Excludes1: burns (T20-T32)",
        "Excludes2: frostbite (T33-T34)",
        "Code first: underlying condition",
        "Use additional code: external cause code",
        "Inclusion term: Head trauma",
        "Note: A block note, wrapped over lines.",
        "",
        "S00 Superficial injury of head",
        "  Excludes1: open wound of head (S01.-)",
        "  7th character note: The appropriate 7th character is to be added",
        "  7th character: A initial encounter",
        "  7th character: D subsequent encounter",
        "  7th character note: Old injury",
        "  S00.0 Superficial injury of scalp",
        "    Inclusion term: Bruise of scalp",
        "    Inclusion term: Hematoma of scalp",
        "    S00.0X Abrasion of scalp",
        "      Includes: graze",
        "      Excludes2: burn of scalp (T20.05)",
        "      Code first: any skin condition",
        "      Code also: hair loss",
        "      Use additional code: code for cause",
        "      Note: Rarely used.",
        "S01 Open wound of head",
        "  Note: Category of visual impairment 1: Maximum less than: 6/18, 20/70; "
        "Minimum equal to or better than: 6/60, 20/200",
        "  Note: Category of visual impairment 5: Maximum less than: No light perception",
    ]
)


@pytest.fixture
def fixture_xml(tmp_path: Path) -> Path:
    path = tmp_path / "tabular.xml"
    path.write_text(FIXTURE_XML, encoding="utf-8")
    return path


def test_fixture_renders_every_note_kind_exactly(fixture_xml: Path) -> None:
    docs = list(read_icd10cm_documents(fixture_xml))
    assert [d.id for d in docs] == ["icd10cm:S00-S01", "icd10cm:T07-T88"]
    head = docs[0]
    assert head.text == EXPECTED_S00_S01
    assert head.title == "Injuries to the head (S00-S01)"
    assert head.metadata == {
        "chapter": "19",
        "chapter_title": "Injury, poisoning and certain other consequences (S00-T88)",
        "block": "S00-S01",
        "first": "S00",
        "last": "S01",
        "n_codes": 4,
    }
    assert head.source == icd10cm.SOURCE
    assert head.licence == "public domain (US government work)"


def test_fixture_block_without_codes_has_no_blank_line(fixture_xml: Path) -> None:
    doc = list(read_icd10cm_documents(fixture_xml))[1]
    assert doc.text == (
        "Injury, other (T07-T88)\n"
        "Chapter 19: Injury, poisoning and certain other consequences (S00-T88)\n"
        "Note: Header block without codes."
    )
    # No sectionRef for this block: first/last come from the block id.
    assert (doc.metadata["first"], doc.metadata["last"], doc.metadata["n_codes"]) == (
        "T07",
        "T88",
        0,
    )


def test_line_regexes_classify_fixture_lines(fixture_xml: Path) -> None:
    body = EXPECTED_S00_S01.split("\n\n", 1)[1].split("\n")
    codes = [m.group(2) for line in body if (m := CODE_LINE_RE.match(line))]
    assert codes == ["S00", "S00.0", "S00.0X", "S01"]
    for line in body:
        assert bool(CODE_LINE_RE.match(line)) != bool(NOTE_LINE_RE.match(line)), line


def test_missing_or_invalid_xml_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(LexloraError, match="not found"):
        read_icd10cm_documents(tmp_path / "nope.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<ICD10CM.tabular><chapter>", encoding="utf-8")
    with pytest.raises(LexloraError, match="invalid XML"):
        list(read_icd10cm_documents(bad))
    wrong = tmp_path / "wrong.xml"
    wrong.write_text("<other/>", encoding="utf-8")
    with pytest.raises(LexloraError, match=r"ICD10CM\.tabular"):
        list(read_icd10cm_documents(wrong))


def test_missing_package_says_how_to_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(icd10cm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LexloraError, match="lexlora corpora fetch icd10cm"):
        find_icd10cm_xml()


# --- the real CDC April 2026 tabular XML -------------------------------------------------------


@pytest.fixture(scope="module")
def real_xml() -> Path:
    try:
        return find_icd10cm_xml()
    except LexloraError as exc:
        pytest.skip(f"simple-icd-10-cm package not installed: {exc}")


@pytest.fixture(scope="module")
def real_docs(real_xml: Path) -> dict[str, Document]:
    return {doc.id: doc for doc in read_icd10cm_documents(real_xml)}


def test_real_xml_has_297_blocks(real_docs: dict[str, Document]) -> None:
    assert len(real_docs) == 297
    assert all(doc.text and doc.title for doc in real_docs.values())


def test_real_a00_a09_rendering(real_docs: dict[str, Document]) -> None:
    doc = real_docs["icd10cm:A00-A09"]
    assert doc.title == "Intestinal infectious diseases (A00-A09)"
    lines = doc.text.split("\n")
    assert lines[:3] == [
        "Intestinal infectious diseases (A00-A09)",
        "Chapter 1: Certain infectious and parasitic diseases (A00-B99)",
        "",
    ]
    assert "A00 Cholera" in lines
    i = lines.index("  A00.0 Cholera due to Vibrio cholerae 01, biovar cholerae")
    assert lines[i + 1] == "    Inclusion term: Classical cholera"
    # A04 carries two Excludes1 notes in the XML.
    j = lines.index("A04 Other bacterial intestinal infections")
    assert lines[j + 1 : j + 3] == [
        "  Excludes1: bacterial foodborne intoxications, NEC (A05.-)",
        "  Excludes1: tuberculous enteritis (A18.32)",
    ]
    assert "  Includes: infection or foodborne intoxication due to any Salmonella species" in (
        doc.text
    )
    assert doc.metadata == {
        "chapter": "1",
        "chapter_title": "Certain infectious and parasitic diseases (A00-B99)",
        "block": "A00-A09",
        "first": "A00",
        "last": "A09",
        "n_codes": doc.metadata["n_codes"],
    }
    assert doc.metadata["n_codes"] == sum(1 for line in lines if CODE_LINE_RE.match(line))


def test_real_seven_character_lines(real_docs: dict[str, Document]) -> None:
    text = real_docs["icd10cm:S00-S09"].text
    assert (
        "\n  7th character: A initial encounter\n  7th character: D subsequent encounter\n" in text
    )


def test_real_chapters(real_docs: dict[str, Document]) -> None:
    chapters = {doc.metadata["chapter"] for doc in real_docs.values()}
    assert chapters == {str(n) for n in range(1, 23)}
    z = real_docs["icd10cm:Z00-Z13"]
    assert z.metadata["chapter"] == "21"
    assert z.text.split("\n")[1].startswith("Chapter 21: Factors influencing health status")


def test_real_code_count_matches_diag_elements(
    real_xml: Path, real_docs: dict[str, Document]
) -> None:
    n_diag = len(re.findall(r"<diag[\s>]", real_xml.read_text(encoding="utf-8")))
    assert n_diag > 40_000
    assert sum(doc.metadata["n_codes"] for doc in real_docs.values()) == n_diag
    rendered = sum(
        1 for doc in real_docs.values() for line in doc.text.split("\n") if CODE_LINE_RE.match(line)
    )
    assert rendered == n_diag


def test_real_every_line_follows_the_format(real_docs: dict[str, Document]) -> None:
    for doc in real_docs.values():
        header, _, body = doc.text.partition("\n\n")
        header_lines = header.split("\n")
        assert header_lines[0] == doc.title
        assert header_lines[1].startswith(f"Chapter {doc.metadata['chapter']}: ")
        for line in header_lines[2:]:
            match = NOTE_LINE_RE.match(line)
            assert match and match.group(1) == "", (doc.id, line)
        depth = -1
        for line in body.split("\n") if body else []:
            code, note = CODE_LINE_RE.match(line), NOTE_LINE_RE.match(line)
            assert bool(code) != bool(note), (doc.id, line)
            indent = len((code or note).group(1))
            assert indent % 2 == 0, (doc.id, line)
            if code:
                assert indent // 2 <= depth + 1, (doc.id, line)
                depth = indent // 2
            else:
                assert indent // 2 == depth + 1, (doc.id, line)
            assert "  " not in line.strip(), (doc.id, line)


def test_real_ids_are_deterministic(real_xml: Path) -> None:
    first = [(d.id, d.text) for d in read_icd10cm_documents(real_xml)]
    second = [(d.id, d.text) for d in read_icd10cm_documents()]
    assert first == second
    assert len({doc_id for doc_id, _ in first}) == 297
