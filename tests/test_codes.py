"""SPEC §1: what a bag code is. Each rule is a table; the first broken rule names the message."""

import pytest

from traitortrack.domain.codes import InvalidBagCode, normalize_code

EMPTY = "QR code cannot be empty"
TOO_LONG = "QR code too long (max 100 characters)"
TOO_SHORT = "QR code too short (min 4 characters)"
INVALID = "QR code contains invalid characters"
BAD_PARENT = "Parent bag QR must be format SB##### (e.g., SB00001) or M444-##### (e.g., M444-00001)"
BAD_CHILD = "Child bag QR must be 4-20 alphanumeric characters"

ALL_KINDS = pytest.mark.parametrize("kind", ["parent", "child", None])


def refusal(raw, kind=None) -> str:
    with pytest.raises(InvalidBagCode) as caught:
        normalize_code(raw, kind)
    return str(caught.value)


def test_invalid_bag_code_is_a_value_error():
    assert issubclass(InvalidBagCode, ValueError)


@pytest.mark.parametrize(
    ("raw", "kind", "expected"),
    [
        (" sb12345\n", "parent", "SB12345"),
        ("m444-00001", "parent", "M444-00001"),
        ("SB00001", "parent", "SB00001"),
        ("SB99999", "parent", "SB99999"),
        ("M444-99999", "parent", "M444-99999"),
        ("\tSB12345\r\n", "parent", "SB12345"),
        ("abc123", "child", "ABC123"),
        ("  child01  ", "child", "CHILD01"),
        ("1234", "child", "1234"),
        ("A" * 20, "child", "A" * 20),
        ("sb12345", "child", "SB12345"),
        ("m444-00001", None, "M444-00001"),
        ("any-code-9", None, "ANY-CODE-9"),
        ("abcd", None, "ABCD"),
    ],
)
def test_valid_codes_are_stripped_and_upper_cased(raw, kind, expected):
    assert normalize_code(raw, kind) == expected


def test_kind_defaults_to_a_plain_lookup():
    assert normalize_code("x-1-y") == "X-1-Y"


@ALL_KINDS
@pytest.mark.parametrize("raw", [None, ""])
def test_missing_code_is_empty(raw, kind):
    assert refusal(raw, kind) == EMPTY


@ALL_KINDS
@pytest.mark.parametrize("raw", [" ", "   ", "\t", "\r\n", " \t\r\n "])
def test_whitespace_only_code_is_too_short(raw, kind):
    assert refusal(raw, kind) == TOO_SHORT


@ALL_KINDS
@pytest.mark.parametrize("raw", ["A", "AB", "ABC", " AB ", "S-1"])
def test_code_under_four_characters_is_too_short(raw, kind):
    assert refusal(raw, kind) == TOO_SHORT


@pytest.mark.parametrize("raw", ["A" * 100, " " + "A" * 100 + "\n", "A-" * 50])
def test_one_hundred_characters_is_the_longest_lookup_code(raw):
    assert normalize_code(raw) == raw.strip()


@ALL_KINDS
@pytest.mark.parametrize("raw", ["A" * 101, "a" * 101, "!" * 101, "A" * 10_240, "A" * 1_000_000])
def test_code_over_one_hundred_characters_is_too_long(raw, kind):
    assert refusal(raw, kind) == TOO_LONG


def test_length_is_checked_before_characters():
    assert refusal("<" * 101) == TOO_LONG
    assert refusal("<>") == TOO_SHORT


@ALL_KINDS
@pytest.mark.parametrize(
    "raw",
    [
        "SB12345!",
        "<script>",
        "SB 12345",
        "SB_12345",
        "SB.12345",
        "SB12\x00345",
        "SB12345\x00",
        "\x00SB12345",
        "SB\x0712345",
        "SB\uff11\uff12\uff13\uff14\uff15",  # fullwidth digits
        "SB\u0661\u0662\u0663\u0664\u0665",  # Arabic-Indic digits
        "SB\u06f1\u06f2\u06f3\u06f4\u06f5",  # extended Arabic-Indic (Persian) digits
        "SB१२३४५",  # Devanagari digits
        "\uff33\uff2212345",  # fullwidth letters
        "\u0421\u041112345",  # Cyrillic letters
        "SB12345é",
        "SB12345\u200b",  # zero-width space is not whitespace
        "'; DROP TABLE bag; --",
    ],
)
def test_characters_outside_ascii_letters_digits_and_dash_are_invalid(raw, kind):
    assert refusal(raw, kind) == INVALID


@ALL_KINDS
@pytest.mark.parametrize(
    "raw",
    [
        "\u017fb12345",  # LATIN SMALL LETTER LONG S upper-cases to "S"
        "sb1234\u0131",  # DOTLESS I upper-cases to "I"
        "\ufb00\ufb00\ufb00\ufb00",  # the "ff" ligature upper-cases to "FF"
        "stra\u00dfe",  # sharp s upper-cases to "SS"
    ],
)
def test_non_ascii_letters_stay_invalid_even_when_upper_case_makes_them_ascii(raw, kind):
    assert refusal(raw, kind) == INVALID


def test_length_counts_what_was_scanned_not_what_upper_case_expands_it_to():
    # 34 "ffi" ligatures upper-case to 102 ASCII letters; the scanned code is simply invalid.
    assert refusal("\ufb03" * 34) == INVALID


@ALL_KINDS
@pytest.mark.parametrize("raw", [123, 12345.0, ["SB12345"], {"code": "SB12345"}, b"SB12345"])
def test_non_string_codes_are_refused_with_a_message(raw, kind):
    assert refusal(raw, kind) == INVALID


@pytest.mark.parametrize(
    "raw",
    [
        "SB123456",
        "SB1234",
        "SB-12345",
        "M44412345",
        "M445-12345",
        "SB1234A",
        "SBA2345",
        "XB12345",
        "SS12345",
        "M444-1234",
        "M444-123456",
        "M444--12345",
        "M444-0000A",
        "12345",
        "ABC123",
        "SB12345-",
    ],
)
def test_parent_must_be_sb_or_m444_with_five_digits(raw):
    assert refusal(raw, "parent") == BAD_PARENT


@pytest.mark.parametrize("raw", ["A" * 21, "ABC-123", "M444-00001", "SB-12345", "----", "A" * 99])
def test_child_must_be_four_to_twenty_letters_or_digits(raw):
    assert refusal(raw, "child") == BAD_CHILD


@pytest.mark.parametrize("length", [4, 5, 19, 20])
def test_child_of_four_to_twenty_characters_is_valid(length):
    assert normalize_code("c" * length, "child") == "C" * length


def test_dash_is_never_part_of_a_child_even_where_a_lookup_allows_it():
    assert normalize_code("AB-12") == "AB-12"
    assert refusal("AB-12", "child") == BAD_CHILD


@pytest.mark.parametrize(
    ("raw", "kind", "expected"),
    [
        ("", "parent", EMPTY),
        ("   ", "parent", TOO_SHORT),
        ("SB" + "1" * 99, "parent", TOO_LONG),
        ("SB!", "parent", TOO_SHORT),
        ("SB1!", "parent", INVALID),
        ("sb12", "parent", BAD_PARENT),
        ("SB-1", "child", BAD_CHILD),
        ("ab\x00c", "child", INVALID),
    ],
)
def test_first_broken_rule_decides_the_message(raw, kind, expected):
    assert refusal(raw, kind) == expected
