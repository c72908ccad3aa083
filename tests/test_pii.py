"""PII scrubbing: e-mail local parts replaced, phone numbers removed, look-alike numbers untouched."""

import pytest

from openhcx.data.pii import scrub_emails, scrub_phones, scrub_pii

PHONES = [
    "010-1234-5678",
    "010 1234 5678",
    "01012345678",
    "010.1234.5678",
    "011-123-4567",
    "02-123-4567",
    "02-1234-5678",
    "031-123-4567",
    "064-1234-5678",
    "070-1234-5678",
    "0505-123-4567",
    "(02) 123-4567",
    "(031)123-4567",
    "+82 10 1234 5678",
    "+82-10-1234-5678",
    "+821012345678",
    "+82-2-123-4567",
    "+82 (0)10-1234-5678",
    "+1 415 555 0123",
    "+1-415-555-0123",
    "+44 20 7946 0958",
    "+33 1 23 45 67 89",
    "+49 30 123456",
    "(415) 555-0123",
    "415-555-0123",
    "415.555.0123",
    "1-800-555-0199",
]


@pytest.mark.parametrize("phone", PHONES)
def test_phone_numbers_are_removed_with_korean_particles_attached(phone):
    assert scrub_phones(f"연락처는 {phone}로 주세요.") == ("연락처는 로 주세요.", 1)
    assert scrub_phones(f"Call {phone}, thanks") == ("Call , thanks", 1)


NOT_PHONES = [
    "2024-01-15",
    "2024.01.15",
    "2024/01/15",
    "15-01-2024",
    "01-15-2024",
    "2024-01-15T10:30:00",
    "2024년 1월 15일 오후 3시 30분",
    "12:30:45",
    "v1.2.3",
    "10.2.1234",
    "version 2.10.1024.5678",
    "192.168.0.1",
    "10.0.0.1",
    "$1,234,567.89",
    "1,234,567원",
    "12 345 678 EUR",
    "1,000,000,000",
    "3.14159265358979",
    "1234567890123",
    "ISBN 978-3-16-148410-0",
    "ISBN 9783161484100",
    "978-0-306-40615-7",
    "2019-2020",
    "1990-2000",
    "주문번호 20240115-0001",
    "계좌 352-0123-4567-83",
    "4111 1111 1111 1111",
    "+3.5%",
    "+10 points",
    "(2024) 123-4567",
    "1588-1234",
]


@pytest.mark.parametrize("text", NOT_PHONES)
def test_dates_times_versions_ips_amounts_and_ids_are_kept(text):
    assert scrub_phones(f"값: {text} 입니다") == (f"값: {text} 입니다", 0)


def test_several_phones_in_one_text_are_counted():
    text = "서울 02-123-4567, 휴대폰 010-9876-5432, 미국 +1 415 555 0123 (2024-01-15 기준)"
    assert scrub_phones(text) == ("서울 , 휴대폰 , 미국  (2024-01-15 기준)", 3)


def test_email_keeps_domain_and_gets_fixed_local_part():
    text = "문의: hong.gildong@naver.com, foo+bar@mail.example.co.kr. 끝"
    assert scrub_emails(text) == ("문의: <EMAIL>@naver.com, <EMAIL>@mail.example.co.kr. 끝", 2)


def test_email_touching_korean_text():
    assert scrub_emails("주소는hong@naver.com으로 보내세요") == ("주소는<EMAIL>@naver.com으로 보내세요", 1)


@pytest.mark.parametrize("text", ["@username", "a @ b.com", "user@localhost", "x@y", "version@2.0"])
def test_email_negatives(text):
    assert scrub_emails(text) == (text, 0)


def test_digits_in_an_email_are_not_taken_for_a_phone():
    result = scrub_pii("메일 01012345678@hanmail.net 전화 010-1234-5678 끝")
    assert (result.text, result.emails, result.phones) == ("메일 <EMAIL>@hanmail.net 전화  끝", 1, 1)
