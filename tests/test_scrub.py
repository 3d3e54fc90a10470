"""Personal-data scrubbing: realistic documents, each format, and licence text that must survive."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lexlora.data.scrub import ScrubResult, luhn_valid, scrub_text
from lexlora.errors import LexloraError
from lexlora.recipe import PII_TYPES


def nonzero(result: ScrubResult) -> dict[str, int]:
    return {kind: n for kind, n in result.counts.items() if n}


CLINICAL_NOTE = (
    "Patient: Maria L. Gonzalez    MRN: 00123456    DOB: 03/14/1962\n"
    "Seen on March 3, 2024 for follow-up of type 2 diabetes (HbA1c 7.2%). Lives at 42 Oak Street, "
    "Apt 3B, Springfield, IL 62704; contact (217) 555-0142 or maria.gonzalez@example.com.\n"
    "SSN 123-45-6789 on file. Metformin 500 mg twice daily; recheck in 3 months. "
    "Date of Birth confirmed as March 14, 1962."
)
CLINICAL_NOTE_SCRUBBED = (
    "Patient: Maria L. Gonzalez    MRN: [MRN]    DOB: [DOB]\n"
    "Seen on March 3, 2024 for follow-up of type 2 diabetes (HbA1c 7.2%). Lives at [ADDRESS]; "
    "contact [PHONE] or [EMAIL].\n"
    "SSN [SSN] on file. Metformin 500 mg twice daily; recheck in 3 months. "
    "Date of Birth confirmed as [DOB]."
)

NOTICE_CLAUSE = (
    "12.3 Notices. All notices under this Agreement shall be in writing and delivered to: "
    "(a) if to Licensor, Acme Legal Services LLC, "
    "1600 Pennsylvania Avenue NW, Washington, DC 20500, "
    "Attn: General Counsel, email: notices@acme-legal.com, fax: +1 202-555-0187 ext. 12; "
    "(b) if to Licensee, Beta Corp., PO Box 1234, Boston, MA 02110, "
    "email: legal+contracts@mail.beta.co.uk, tel. +44 20 7946 0958. "
    "This Agreement is dated as of March 1, 2024 and Section 2.1.3 survives termination."
)
NOTICE_CLAUSE_SCRUBBED = (
    "12.3 Notices. All notices under this Agreement shall be in writing and delivered to: "
    "(a) if to Licensor, Acme Legal Services LLC, "
    "[ADDRESS], "
    "Attn: General Counsel, email: [EMAIL], fax: [PHONE]; "
    "(b) if to Licensee, Beta Corp., [ADDRESS], "
    "email: [EMAIL], tel. [PHONE]. "
    "This Agreement is dated as of March 1, 2024 and Section 2.1.3 survives termination."
)

CAPTION = (
    "UNITED STATES DISTRICT COURT\n"
    "SOUTHERN DISTRICT OF NEW YORK\n\n"
    "JOHN Q. PUBLIC,\n"
    "                    Plaintiff,\n"
    "        v.                                  Case No. 1:24-cv-01234 (JMF)\n"
    "ACME CORP.,\n"
    "                    Defendant.\n\n"
    "Plaintiff John Q. Public (SSN: 219-09-9999; D.O.B. 1971-07-04), residing at "
    "221 West 57th Street, Apt 12C, New York, NY 10019, tel. 212.555.0199, accessed the service "
    "from IP address 203.0.113.42 and 2001:db8:85a3::8a2e:370:7334 and paid with card "
    "4111 1111 1111 1111 on January 5, 2023. Filed 01/02/24, Page 1 of 20."
)
CAPTION_SCRUBBED = CAPTION.replace(
    "(SSN: 219-09-9999; D.O.B. 1971-07-04), residing at "
    "221 West 57th Street, Apt 12C, New York, NY 10019, tel. 212.555.0199",
    "(SSN: [SSN]; D.O.B. [DOB]), residing at [ADDRESS], tel. [PHONE]",
).replace(
    "from IP address 203.0.113.42 and 2001:db8:85a3::8a2e:370:7334 and paid with card "
    "4111 1111 1111 1111",
    "from IP address [IP] and [IP] and paid with card [CARD]",
)

LICENCE_TEXT = (
    "                                 Apache License\n"
    "                           Version 2.0, January 2004\n"
    "                        http://www.apache.org/licenses/LICENSE-2.0\n\n"
    "Copyright (C) 1989, 1991 Free Software Foundation, Inc.\n"
    "This is version 2.0.1 of the library; see Section 2.1.3, Section 12.3.4 and section 3.1.2.1.\n"
    "2.1.1.1. As a Result of Contributions. Build 1.0.0.0 was released on 2004-01-15.\n"
    "This Agreement is dated as of March 1, 2024. Zip 02111. The meeting is at 12:30:45.\n"
    "Order reference 4111 1111 1111 1112. ISBN 978-0-12-345678-9. GPL-2.0+ and LGPL-2.1+.\n"
    "See Table 2 Chi Square and the Chapter 11 Bankruptcy Court; "
    "DFARS 252.227-7013 and DFARS 252-227-7013; FAR 52.227-19.\n"
)


def test_clinical_note() -> None:
    result = scrub_text(CLINICAL_NOTE)
    assert result.text == CLINICAL_NOTE_SCRUBBED
    assert nonzero(result) == {"ADDRESS": 1, "DOB": 2, "EMAIL": 1, "MRN": 1, "PHONE": 1, "SSN": 1}


def test_contract_notice_clause() -> None:
    result = scrub_text(NOTICE_CLAUSE)
    assert result.text == NOTICE_CLAUSE_SCRUBBED
    assert nonzero(result) == {"ADDRESS": 2, "EMAIL": 2, "PHONE": 2}


def test_court_filing_caption() -> None:
    result = scrub_text(CAPTION)
    assert CAPTION_SCRUBBED != CAPTION
    assert result.text == CAPTION_SCRUBBED
    assert nonzero(result) == {"ADDRESS": 1, "CARD": 1, "DOB": 1, "IP": 2, "PHONE": 1, "SSN": 1}


def test_counts_cover_every_type_sorted() -> None:
    result = scrub_text("nothing personal here")
    assert list(result.counts) == sorted(PII_TYPES)
    assert set(result.counts.values()) == {0}
    assert result.text == "nothing personal here"


def test_licence_text_is_unchanged() -> None:
    result = scrub_text(LICENCE_TEXT)
    assert result.text == LICENCE_TEXT
    assert nonzero(result) == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write to jane.doe+lex@mail.example.co.uk today.", "Write to [EMAIL] today."),
        ("<FOO.Bar@Example.ORG>", "<[EMAIL]>"),
        ("call (555) 123-4567 now", "call [PHONE] now"),
        ("call 555-123-4567.", "call [PHONE]."),
        ("call 555.123.4567,", "call [PHONE],"),
        ("call 555 123 4567", "call [PHONE]"),
        ("call +1 555 123 4567", "call [PHONE]"),
        ("call 1-800-555-0199 ext. 12 today", "call [PHONE] today"),
        ("call +44 20 7946 0958", "call [PHONE]"),
        ("SSN 123-45-6789 and 123 45 6789", "SSN [SSN] and [SSN]"),
        ("SSN: 123456789; Social Security No. 987654321", "SSN: [SSN]; Social Security No. [SSN]"),
        ("MRN: 00123456", "MRN: [MRN]"),
        ("MRN 123-456-789", "MRN [MRN]"),
        ("Medical Record Number: A1234567", "Medical Record Number: [MRN]"),
        ("Med. Rec. #: 778899", "Med. Rec. #: [MRN]"),
        ("DOB: 03/14/1962", "DOB: [DOB]"),
        ("Date of Birth: March 14, 1962", "Date of Birth: [DOB]"),
        ("born on 14 March 1962", "born on [DOB]"),
        ("D.O.B. 1962-03-14", "D.O.B. [DOB]"),
        ("1600 Pennsylvania Avenue NW, Washington, DC 20500.", "[ADDRESS]."),
        ("59 Temple Place, Suite 330, Boston, MA 02111-1307", "[ADDRESS]"),
        ("123 Main St., Apt 4B, Springfield, IL 62704", "[ADDRESS]"),
        ("send it to PO Box 1234.", "send it to [ADDRESS]."),
        ("One Microsoft Way, Redmond, WA 98052-6399", "[ADDRESS]"),
        ("Acme\n500 Oracle Parkway\nRedwood City, CA 94065\n", "Acme\n[ADDRESS]\n"),
        ("host 192.168.1.20, gateway 10.0.0.1.", "host [IP], gateway [IP]."),
        ("from fe80::1ff:fe23:4567:890a and 2001:db8::1", "from [IP] and [IP]"),
        ("Visa 4111-1111-1111-1111", "Visa [CARD]"),
        ("Amex 3782 822463 10005 or 378282246310005", "Amex [CARD] or [CARD]"),
        ("MC 5555555555554444.", "MC [CARD]."),
    ],
)
def test_each_format(text: str, expected: str) -> None:
    assert scrub_text(text).text == expected


@pytest.mark.parametrize(
    "text",
    [
        "invalid SSNs 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567, 123-45-0000",
        "123456789 is just a number without a label",
        "versions 2.0.1 and 1.2.3.4.5, address 256.1.1.1, 01.02.03.04",
        "card 4111 1111 1111 1112 fails Luhn",
        "loopback ::1, a::b, C++ std::vector, 10:30:00",
        "Copyright (C) 1989, 1991 Free Software Foundation",
        "see 28 U.S.C. 1331 and Rule 12 of the Rules",
        "lives near Osborn 12/03/2004",
        "version 1.0.0.0 and Version: 2.1.8.7",
        "within 30 Business Days of March 1, 2024",
        "http://www.apache.org/licenses/LICENSE-2.0",
    ],
)
def test_not_personal_data(text: str) -> None:
    assert scrub_text(text).text == text


def test_label_wins_over_pattern_and_placeholders_stay_whole() -> None:
    result = scrub_text("MRN 123-45-6789; mail john.5551234567@example.com; 42 Oak St 555-123-4567")
    assert result.text == "MRN [MRN]; mail [EMAIL]; [ADDRESS] [PHONE]"
    assert nonzero(result) == {"ADDRESS": 1, "EMAIL": 1, "MRN": 1, "PHONE": 1}


def test_scrubbing_twice_changes_nothing_more() -> None:
    for text in (CLINICAL_NOTE, NOTICE_CLAUSE, CAPTION):
        once = scrub_text(text).text
        again = scrub_text(once)
        assert again.text == once
        assert nonzero(again) == {}


def test_types_restricts_scrubbing() -> None:
    text = "Email a@b.com or call (555) 123-4567, SSN 123-45-6789."
    result = scrub_text(text, types=["EMAIL"])
    assert result.text == "Email [EMAIL] or call (555) 123-4567, SSN 123-45-6789."
    assert nonzero(result) == {"EMAIL": 1}
    assert list(result.counts) == sorted(PII_TYPES)
    both = scrub_text(text, types=("PHONE", "SSN"))
    assert both.text == "Email a@b.com or call [PHONE], SSN [SSN]."
    assert scrub_text(text, types="EMAIL").text == result.text
    assert scrub_text(text, types=[]).text == text


def test_unknown_type_is_a_user_error() -> None:
    valid = "EMAIL, PHONE, SSN, MRN, DOB, ADDRESS, IP, CARD"
    with pytest.raises(LexloraError, match=rf"'FAX'.*{valid}"):
        scrub_text("x", types=["EMAIL", "FAX"])
    with pytest.raises(LexloraError, match="'email'"):
        scrub_text("x", types=["email"])


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112")
    assert not luhn_valid("79927398710")


def _licence_file(key: str) -> Path | None:
    spec = importlib.util.find_spec("licensedcode")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "data" / "licenses" / f"{key}.LICENSE"
    return path if path.exists() else None


@pytest.mark.parametrize(("key", "addresses"), [("gpl-2.0", 2), ("apache-2.0", 0), ("mit", 0)])
def test_real_licences_lose_only_the_fsf_address(key: str, addresses: int) -> None:
    path = _licence_file(key)
    if path is None:
        pytest.skip("licensedcode licence data not installed")
    text = path.read_text(encoding="utf-8").split("\n---\n", 1)[1]
    result = scrub_text(text)
    assert nonzero(result) == ({"ADDRESS": addresses} if addresses else {})
    fsf = "51 Franklin Street, Fifth Floor, Boston, MA 02110-1301 USA"
    assert result.text == text.replace(fsf, "[ADDRESS]")
