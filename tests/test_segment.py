"""Segmentation of legal text: sections, clauses and definitions with exact offsets."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

from lexlora.data.segment import (
    Section,
    find_definitions,
    segment_sections,
    split_clauses,
)

APACHE = """\
                                 Apache License
                           Version 2.0, January 2004

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION

   1. Definitions.

      "License" shall mean the terms and conditions for use, reproduction,
      and distribution as defined by Sections 1 through 9 of this document.

      "Legal Entity" shall mean the union of the acting entity and all
      other entities that control, are controlled by, or are under common
      control with that entity. For the purposes of this definition,
      "control" means (i) the power, direct or indirect, to cause the
      direction or management of such entity, or (ii) ownership of fifty
      percent (50%) or more of the outstanding shares.

   2. Grant of Copyright License. Subject to the terms and conditions of
      this License, each Contributor hereby grants to You a perpetual,
      worldwide, non-exclusive, no-charge, royalty-free, irrevocable
      copyright license to reproduce the Work.

   3. Redistribution. You may reproduce and distribute copies of the
      Work in any medium, provided that You meet the following conditions:

      (a) You must give any other recipients of the Work a copy of
          this License; and

      (b) You must cause any modified files to carry prominent notices
          stating that You changed the files; and

      (c) You must retain all copyright notices from the Source form.

   END OF TERMS AND CONDITIONS
"""

CONTRACT = """\
MASTER SERVICES AGREEMENT

ARTICLE I
DEFINITIONS

Section 1.1 "Affiliate" means any entity that controls, is controlled by, or is under common
control with a party, e.g. a subsidiary.

Section 1.2 “Confidential Information” means all non-public information disclosed by a party.

ARTICLE II – SERVICES

Section 2.1 Scope. The Provider shall perform the services described in each Statement of Work.

Section 2.2 Standards. The Provider shall:

(a) perform the services with due care;

(b) comply with all applicable laws, including:

(i) export control laws of the U.S. Government; and

(ii) data protection laws; and

(c) maintain adequate insurance.

Section 2.3 Subcontracting
The Provider may not subcontract without consent.

ARTICLE III
TERM AND TERMINATION

Section 3.1 Term. This Agreement begins on the Effective Date.
"""

DISCLAIMER = """\
NO WARRANTY

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
IN NO EVENT SHALL THE AUTHORS BE LIABLE FOR ANY CLAIM.

GNU GENERAL PUBLIC LICENSE

You may copy this program.
"""


def outline(sections: list[Section]) -> list[tuple[int, str | None, str | None]]:
    return [(s.level, s.number, s.heading) for s in sections]


def assert_spans(text: str, sections: list[Section]) -> None:
    """Spans are in bounds, ordered, start at a heading line, end on a non-space, nest."""
    open_: list[Section] = []
    previous = -1
    for s in sections:
        assert 0 <= s.start <= s.body_start <= s.end <= len(text)
        assert s.start < s.end and s.start >= previous
        assert not text[s.start].isspace() and not text[s.end - 1].isspace()
        line_start = text.rfind("\n", 0, s.start) + 1
        assert text[line_start : s.start].strip() == ""  # the span starts its heading line
        assert s.end == len(text) or text[s.end :].strip() == "" or text[s.end].isspace()
        while open_ and open_[-1].level >= s.level:
            open_.pop()
        if s.level > 0:
            parent = open_[-1]
            assert parent.level == s.level - 1
            assert parent.start < s.start and s.end <= parent.end
        open_.append(s)
        previous = s.start


# ----------------------------------------------------------------------------- sections


def test_apache_style_hard_wrapped_and_indented() -> None:
    sections = segment_sections(APACHE)
    assert outline(sections) == [
        (0, None, "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"),
        (0, "1", "Definitions"),
        (0, "2", "Grant of Copyright License"),
        (0, "3", "Redistribution"),
        (1, "(a)", None),
        (1, "(b)", None),
        (1, "(c)", None),
        (0, None, "END OF TERMS AND CONDITIONS"),
    ]
    assert_spans(APACHE, sections)
    definitions, grant, redistribution, a, *_, c, end = sections[1:]
    assert APACHE[definitions.start : definitions.body_start].rstrip() == "1. Definitions."
    assert APACHE[definitions.body_start :].startswith('"License" shall mean')
    assert APACHE[definitions.end - 20 : definitions.end] == "the outstanding shares."[-20:]
    assert APACHE[grant.body_start :].startswith("Subject to the terms")
    assert APACHE[grant.start : grant.end].endswith("reproduce the Work.")
    assert a.body_start == a.start  # a numbered paragraph without a title is its own body
    assert APACHE[a.start : a.end].endswith("this License; and")
    assert redistribution.end == c.end
    assert (
        APACHE[c.start : c.end] == "(c) You must retain all copyright notices from the Source form."
    )
    assert APACHE[end.start : end.end] == "END OF TERMS AND CONDITIONS"


def test_contract_article_section_paragraph_nesting() -> None:
    sections = segment_sections(CONTRACT)
    assert outline(sections) == [
        (0, None, "MASTER SERVICES AGREEMENT"),
        (0, "I", "DEFINITIONS"),
        (1, "1.1", None),
        (1, "1.2", None),
        (0, "II", "SERVICES"),
        (1, "2.1", "Scope"),
        (1, "2.2", "Standards"),
        (2, "(a)", None),
        (2, "(b)", None),
        (3, "(i)", None),
        (3, "(ii)", None),
        (2, "(c)", None),
        (1, "2.3", "Subcontracting"),
        (0, "III", "TERM AND TERMINATION"),
        (1, "3.1", "Term"),
    ]
    assert_spans(CONTRACT, sections)
    by_number = {s.number: s for s in sections}
    article1 = by_number["I"]
    assert CONTRACT[article1.start : article1.body_start].split() == ["ARTICLE", "I", "DEFINITIONS"]
    assert CONTRACT[article1.start : article1.end].endswith("disclosed by a party.")
    assert CONTRACT[by_number["2.1"].body_start :].startswith("The Provider shall perform")
    assert CONTRACT[by_number["2.3"].body_start :].startswith("The Provider may not")
    b = by_number["(b)"]
    assert CONTRACT[b.start : b.end].endswith("(ii) data protection laws; and")


def test_keyword_heading_forms() -> None:
    text = (
        "Section 3. Grant of Rights\nLicensor grants a licence.\n\n"
        "SECTION 4 - TERMINATION\nEither party may terminate.\n\n"
        "Article IV – Warranties\nNone are given.\n\n"
        "ARTICLE 2\n\nThe parties agree.\n\n"
        "Clause 7: Confidentiality\nKeep secrets.\n\n"
        "§ 4 Governing Law\nThe laws of England apply.\n"
    )
    assert [(s.number, s.heading) for s in segment_sections(text)] == [
        ("3", "Grant of Rights"),
        ("4", "TERMINATION"),
        ("IV", "Warranties"),
        ("2", None),
        ("7", "Confidentiality"),
        ("4", "Governing Law"),
    ]
    assert_spans(text, segment_sections(text))


def test_marker_styles_and_roman_letter_ambiguity() -> None:
    text = (
        "1. Scope\n\n1.1 General. Text.\n\n2.3.1 Deep item.\n\n"
        "A. Upper letter item.\n\n"
        "(g) seventh;\n(h) eighth;\n(i) ninth, a letter after (h);\n\n"
        "a) first;\nb) second:\n\n(i) roman one;\n(ii) roman two;\n(iv) roman four.\n"
    )
    sections = segment_sections(text)
    got = [(s.level, s.number) for s in sections]
    assert got[:4] == [(0, "1"), (1, "1.1"), (2, "2.3.1"), (3, "A")]
    assert [n for _, n in got[4:]] == ["(g)", "(h)", "(i)", "a)", "b)", "(i)", "(ii)", "(iv)"]
    levels = dict(zip([n for _, n in got[4:7]], [lv for lv, _ in got[4:7]], strict=True))
    assert levels["(g)"] == levels["(h)"] == levels["(i)"]  # (i) after (h) is the letter i
    roman = sections[-3:]
    assert roman[0].level == roman[1].level == roman[2].level == sections[-4].level + 1
    assert_spans(text, sections)


def test_wrapped_line_starting_with_a_number_is_not_a_heading() -> None:
    text = (
        "1. Licence. You may use the software under version\n"
        "2.0 of the License, and in Section\n"
        "3. the remaining terms apply.\n"
        "Section 2.1 of this Agreement is not a heading either.\n"
    )
    assert [s.number for s in segment_sections(text)] == ["1"]


def test_shallower_decimal_closes_deeper_one_and_list_lead_ins_split() -> None:
    text = "10.1 Liability\nIBM is liable only for:\n1) bodily injury;\n\n13. General\nText.\n"
    assert [(s.level, s.number) for s in segment_sections(text)] == [
        (0, "10.1"),
        (1, "1)"),
        (0, "13"),
    ]
    text = "The Licensee shall:\n(a) pay; and\n(b) deliver.\n"
    assert [text[s:e] for s, e in split_clauses(text)] == [
        "The Licensee shall:",
        "(a) pay; and",
        "(b) deliver.",
    ]


def test_all_caps_heading_versus_shouted_disclaimer() -> None:
    sections = segment_sections(DISCLAIMER)
    assert outline(sections) == [
        (0, None, "NO WARRANTY"),
        (0, None, "GNU GENERAL PUBLIC LICENSE"),
    ]
    assert_spans(DISCLAIMER, sections)
    no_warranty = sections[0]
    assert DISCLAIMER[no_warranty.body_start :].startswith("THE SOFTWARE IS PROVIDED")
    assert DISCLAIMER[no_warranty.start : no_warranty.end].endswith("FOR ANY CLAIM.")
    shouted = (
        "Intro text.\n\n"
        "THE SOFTWARE IS PROVIDED AS IS AND ANY EXPRESS OR\n"
        "IMPLIED WARRANTIES ARE DISCLAIMED.\n\n"
        "THIS SOFTWARE IS PROVIDED BY THE AUTHORS.\n\n"
        "THE ACCOMPANYING PROGRAM IS PROVIDED UNDER THE TERMS OF THIS PUBLIC LICENSE "
        '("AGREEMENT"), WITHOUT WARRANTY.\n\n'
        "LIMITED WARRANTY\n"
        "Acme warrants the media for 90 days.\n"
    )
    assert outline(segment_sections(shouted)) == [(0, None, "LIMITED WARRANTY")]


def test_underlined_headings_and_crlf() -> None:
    text = "1. Definitions\r\n--------------\r\n\r\n1.1. Term\r\n    means a thing.\r\n"
    sections = segment_sections(text)
    assert outline(sections) == [(0, "1", "Definitions"), (1, "1.1", None)]
    assert text[sections[1].start : sections[1].end] == "1.1. Term\r\n    means a thing."
    assert_spans(text, sections)


def test_empty_and_unstructured_text() -> None:
    assert segment_sections("") == []
    assert segment_sections("Permission is hereby granted, free of charge.\n") == []


# ----------------------------------------------------------------------------- clauses


def test_split_clauses_abbreviations_and_section_numbers() -> None:
    text = (
        "The Licensee, e.g. Acme Inc. and its affiliates, may use the U.S. Government "
        "materials under Section 2.1 of this Agreement. See No. 5 for details, i.e. the "
        "schedule. Fees are due monthly etc. and are final. Payment is due! Is it?\n"
    )
    clauses = [text[s:e] for s, e in split_clauses(text)]
    assert clauses == [
        "The Licensee, e.g. Acme Inc. and its affiliates, may use the U.S. Government "
        "materials under Section 2.1 of this Agreement.",
        "See No. 5 for details, i.e. the schedule.",
        "Fees are due monthly etc. and are final.",
        "Payment is due!",
        "Is it?",
    ]


def test_split_clauses_paragraphs_wrapping_and_bounds() -> None:
    text = (
        "   2. Grant. Subject to the terms of\n      this License, You may copy it.\n"
        '\n   \n      Heading without stop\n\n  Next paragraph (with a closing quote.)" Done'
    )
    spans = split_clauses(text)
    assert [text[s:e] for s, e in spans] == [
        "2. Grant.",
        "Subject to the terms of\n      this License, You may copy it.",
        "Heading without stop",
        'Next paragraph (with a closing quote.)"',
        "Done",
    ]
    start = text.index("Subject")
    sub = split_clauses(text, start, text.index("Heading") + 7)
    assert [text[s:e] for s, e in sub] == [
        "Subject to the terms of\n      this License, You may copy it.",
        "Heading",
    ]
    assert split_clauses("  \n\n ---- \n") == []
    assert all(e > s for s, e in spans)


def test_split_clauses_breaks_after_heading_line_without_stop() -> None:
    text = "Section 3. Grant of Rights\nLicensor hereby grants a licence.\n"
    assert [text[s:e] for s, e in split_clauses(text)] == [
        "Section 3. Grant of Rights",
        "Licensor hereby grants a licence.",
    ]


# ----------------------------------------------------------------------------- definitions


def test_definitions_quoted_curly_single_and_phrased() -> None:
    text = (
        '"Licensor" shall mean the copyright owner or entity authorized by\n'
        "    the copyright owner that is granting the License.\n\n"
        "“Affiliate” means any entity under common control, e.g. a subsidiary. Other text.\n\n"
        "'Work' shall mean the work of authorship.\n\n"
        'The term "Software" means the programs listed in Schedule A.\n\n'
        'As used herein, "Agreement" refers to this document and its schedules.\n\n'
        'This notice applies to the files (the "Files") listed below.\n'
    )
    defs = find_definitions(text)
    assert [d.term for d in defs] == [
        "Licensor",
        "Affiliate",
        "Work",
        "Software",
        "Agreement",
        "Files",
    ]
    spans = [text[d.start : d.end] for d in defs]
    assert spans[0] == (
        '"Licensor" shall mean the copyright owner or entity authorized by\n'
        "    the copyright owner that is granting the License."
    )
    assert spans[1] == "“Affiliate” means any entity under common control, e.g. a subsidiary."
    assert spans[2] == "'Work' shall mean the work of authorship."
    assert spans[3] == 'The term "Software" means the programs listed in Schedule A.'
    assert spans[4] == 'As used herein, "Agreement" refers to this document and its schedules.'
    assert spans[5] == 'This notice applies to the files (the "Files") listed below.'


def test_definitions_in_numbered_and_apache_text() -> None:
    defs = {d.term: APACHE[d.start : d.end] for d in find_definitions(APACHE)}
    assert set(defs) == {"License", "Legal Entity", "control"}
    assert defs["Legal Entity"].endswith("common\n      control with that entity.")
    assert defs["control"].startswith('For the purposes of this definition,\n      "control" means')
    contract = {d.term: CONTRACT[d.start : d.end] for d in find_definitions(CONTRACT)}
    assert contract["Affiliate"] == (
        '"Affiliate" means any entity that controls, is controlled by, or is under common\n'
        "control with a party, e.g. a subsidiary."
    )
    assert contract["Confidential Information"].startswith("“Confidential Information” means")


def test_unquoted_definitions_only_in_definitions_section() -> None:
    text = (
        "Section 1 -- Definitions.\n\n"
        "  a. Licensed Material means the artistic or literary work to which the\n"
        "     Licensor applied this Public License.\n\n"
        "  b. You means the individual exercising the Licensed Rights.\n\n"
        "Section 2 -- Scope.\n\n"
        "  a. Other Thing means nothing here, since this is not a definitions section.\n"
    )
    defs = find_definitions(text)
    assert [(d.term, text[d.start : d.end]) for d in defs] == [
        (
            "Licensed Material",
            "Licensed Material means the artistic or literary work to which the\n"
            "     Licensor applied this Public License.",
        ),
        ("You", "You means the individual exercising the Licensed Rights."),
    ]


def test_definition_continues_into_its_list() -> None:
    text = (
        '"Modifications" means any of the following:\n\n'
        "    (a) any file that results from a change; or\n\n"
        "    (b) any new file.\n\n"
        "Other text.\n"
    )
    (d,) = find_definitions(text)
    assert text[d.start : d.end] == text[: text.index("any new file.") + len("any new file.")]


# ----------------------------------------------------------------------------- real licences


def licenses_dir() -> Path | None:
    """The licence texts shipped with scancode's ``licensedcode`` package, if installed."""
    spec = importlib.util.find_spec("licensedcode")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "licenses"


LICENSES = licenses_dir()
SAMPLE = [
    "apache-2.0", "gpl-2.0", "gpl-3.0", "lgpl-2.1", "mpl-2.0", "mpl-1.1", "cc-by-4.0",
    "cc-by-sa-3.0", "epl-1.0", "epl-2.0", "mit", "bsd-new", "artistic-2.0", "cddl-1.0",
    "eupl-1.2", "agpl-3.0", "apsl-2.0", "osl-3.0", "zpl-2.1", "ofl-1.1",
]  # fmt: skip


def load_license(name: str) -> str:
    assert LICENSES is not None
    raw = (LICENSES / f"{name}.LICENSE").read_text(encoding="utf-8")
    if raw.startswith("---"):  # YAML front matter between the first two '---' lines
        end = raw.find("\n---", 3)
        raw = raw[raw.find("\n", end + 1) + 1 :] if end >= 0 else raw
    return raw


@pytest.mark.slow
def test_real_licences_invariants() -> None:
    if LICENSES is None or not LICENSES.is_dir():
        pytest.skip(f"licensedcode licence texts not installed (looked for {LICENSES})")
    names = [n for n in SAMPLE if (LICENSES / f"{n}.LICENSE").is_file()]
    assert len(names) >= 15
    total_sections = 0
    for name in names:
        text = load_license(name)
        sections = segment_sections(text)
        assert_spans(text, sections)
        total_sections += len(sections)
        for s in sections:
            clauses = split_clauses(text, s.start, s.end)
            assert clauses and clauses[0][0] == s.start
            for (a, b), (c, _) in itertools.pairwise(clauses):
                assert s.start <= a < b <= c <= s.end
                assert not text[a].isspace() and not text[b - 1].isspace()
        for d in find_definitions(text):
            assert 0 <= d.start < d.end <= len(text) and d.term
            assert not text[d.start].isspace() and not text[d.end - 1].isspace()
    assert total_sections > 200
    apache = segment_sections(load_license("apache-2.0"))
    assert [s.heading for s in apache if s.number == "4"] == ["Redistribution"]
    cc = segment_sections(load_license("cc-by-4.0"))
    assert [s.level for s in cc if s.number == "a"][:3] == [1, 1, 3]  # a. / a. / 1. a.
