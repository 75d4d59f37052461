"""Contact → identity and Klaviyo profile (docs/design.md §4.2): E.164 phones, checked emails, stable
unique_ids."""

from __future__ import annotations

import pytest

from etl.models import Identity
from etl.profiles import contact_identity, normalize_email, normalize_phone, split_name, to_profile
from etl.snapshots import to_snapshot
from tests.pure_fixtures import contact

TAGS = {"11": "vip", "12": "churn-risk"}


def profile_of(raw: dict, region: str = "US", **kwargs):
    return to_profile(to_snapshot("contacts", raw), TAGS, region, **kwargs)


def test_populated_contact_maps_to_every_profile_field():
    """Every §4.2 profile field is filled from a fully populated contact."""
    profile, counts = profile_of(contact())
    assert counts == {}
    assert profile is not None
    assert profile.identity == Identity(
        email="jo@example.com", phone_number="+14155550100", contact_id="c-mail"
    )
    assert (profile.first_name, profile.last_name) == ("Jo", "Anne Smith")
    assert profile.image == "https://example.org/jo.jpg"
    assert dict(profile.location) == {"country": "United States", "region": "California"}
    assert dict(profile.properties) == {
        "intercom_contact_id": "c-mail",
        "intercom_contact_role": "user",
        "intercom_has_hard_bounced": False,
        "intercom_marked_email_as_spam": True,
        "intercom_unsubscribed_from_emails": False,
        "intercom_opted_out_subscription_types_count": 2,
        "intercom_custom_attributes": {"plan": "pro"},
        "intercom_tags": ["vip"],
    }


@pytest.mark.parametrize(
    ("avatar", "image"),
    [
        ({"type": "avatar", "image_url": "https://example.org/jo.jpg"}, "https://example.org/jo.jpg"),
        ("https://example.org/jo.jpg", "https://example.org/jo.jpg"),  # a bare URL, as met in the field
        ({"type": "avatar", "image_url": None}, None),
        ("", None),
        (None, None),
        (7, None),
    ],
)
def test_avatar_as_object_or_bare_string_gives_the_image(avatar, image):
    """The profile image is the avatar's image_url, or the avatar itself when Intercom sent a URL string."""
    profile, _ = profile_of(contact(avatar=avatar))
    assert profile is not None and profile.image == image


def test_the_same_avatar_in_either_shape_gives_the_same_unique_id():
    """An avatar that turns from object to string (same URL) is no change: the snapshot digest stays."""
    url = "https://example.org/jo.jpg"
    as_object = to_snapshot("contacts", contact(avatar={"type": "avatar", "image_url": url}))
    as_string = to_snapshot("contacts", contact(avatar=url))
    assert as_object.digest == as_string.digest


def test_tags_beyond_the_tenth_are_part_of_the_digest_and_the_profile():
    """A contact whose tags list was completed carries every tag; a change to the 11th changes the digest."""
    names = {str(n): f"tag-{n}" for n in range(1, 16)}
    refs = [{"type": "tag", "id": str(n)} for n in range(1, 15)]
    before = contact(tags={"type": "list", "data": refs, "total_count": 14, "has_more": False})
    after = contact(tags={"type": "list", "data": [*refs[:10], {"type": "tag", "id": "15"}, *refs[11:]]})
    first, second = to_snapshot("contacts", before), to_snapshot("contacts", after)
    assert first.digest != second.digest
    profile, _ = to_profile(second, names, "US")
    assert profile is not None
    assert profile.properties["intercom_tags"] == sorted(
        names[str(n)] for n in [*range(1, 11), 15, 12, 13, 14]
    )


def test_unique_id_is_stable_for_an_unchanged_contact_and_moves_with_content():
    """The same contact read twice keeps its unique_id; a changed field gives a new one."""
    first, _ = profile_of(contact())
    again, _ = profile_of(contact(updated_at=1))
    changed, _ = profile_of(contact(name="Jo Smith"))
    assert first is not None and again is not None and changed is not None
    assert first.unique_id == again.unique_id
    assert first.unique_id.startswith("intercom:contact:c-mail:")
    assert len(first.unique_id.rsplit(":", 1)[1]) == 16
    assert changed.unique_id != first.unique_id


def test_unique_ids_digest_the_default_names_and_are_those_earlier_versions_gave():
    """Profiles are built under the default keys whatever the job renames (property_names is applied when
    sending, tests/test_names.py), so a rename sends no unchanged profile again; and the digests are the ones
    versions that renamed at inference gave without names (pinned from them), so no profile looks changed
    after the upgrade."""
    with pytest.raises(TypeError, match="property_names"):
        profile_of(contact(), property_names={"intercom_tags": "tags"})
    before, _ = profile_of(contact())
    cleared = contact(
        tags={"data": []},
        custom_attributes={},
        opted_out_subscription_types={"type": "list", "data": [], "total_count": 0},
    )
    after, _ = profile_of(cleared, before=before)
    assert before is not None and after is not None
    assert before.unique_id == "intercom:contact:c-mail:cc3d2739205b1094"
    assert after.unique_id == "intercom:contact:c-mail:598350e127d173f8"


def test_invalid_phone_is_dropped_and_counted_never_sent():
    """An invalid phone is left off the profile and counted; the email still identifies it."""
    profile, counts = profile_of(contact(phone="12345"))
    assert profile is not None
    assert profile.identity.phone_number is None
    assert counts == {"dropped:invalid_phone": 1}


def test_contact_without_email_or_valid_phone_has_no_profile():
    """No email and an invalid phone → no profile, counted as skipped:no_identifier."""
    profile, counts = profile_of(contact(email=None, phone="not a number"))
    assert profile is None
    assert counts == {"dropped:invalid_phone": 1, "skipped:no_identifier": 1}


def test_phone_only_contact_is_identified_by_phone():
    """A contact with only a valid phone gets a profile keyed by that phone."""
    profile, _ = profile_of(contact(email="", phone="+44 20 7946 0958"))
    assert profile is not None
    assert profile.identity == Identity(phone_number="+442079460958", contact_id="c-mail")


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("(415) 555-0100", "US", "+14155550100"),
        ("030 1234567", "DE", "+49301234567"),
        ("+1 415 555 0100", "DE", "+14155550100"),
        ("555", "US", None),
        ("", "US", None),
        (None, "US", None),
        ("phone", "US", None),
        ("0301234567", "", None),
    ],
)
def test_phone_numbers_normalize_to_e164_with_the_default_region(raw, region, expected):
    """National numbers are read in default_phone_region; invalid ones give None."""
    assert normalize_phone(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Jo@Example.COM ", "jo@example.com"),
        ("no-at-sign", None),
        ("a@b", None),
        ("two words@example.com", None),
        ("x" * 89 + "@example.com", None),  # 101 characters: over Klaviyo's limit
        ("x" * 88 + "@example.com", "x" * 88 + "@example.com"),
        (None, None),
        (42, None),
    ],
)
def test_emails_are_trimmed_lowercased_and_checked(raw, expected):
    """Emails are trimmed and lower-cased; malformed or over-long ones give None."""
    assert normalize_email(raw) == expected


def test_contact_identity_accepts_snapshot_data_and_raw_contacts():
    """contact_identity reads a snapshot, its data or a raw contact alike."""
    snapshot = to_snapshot("contacts", contact())
    expected = Identity(email="jo@example.com", phone_number="+14155550100", contact_id="c-mail")
    assert contact_identity(snapshot, "US") == (expected, {})
    assert contact_identity(snapshot.data, "US") == (expected, {})
    assert contact_identity(contact(), "US") == (expected, {})


def test_contact_identity_counts_an_invalid_email():
    """A malformed email is dropped and counted; no skip is counted there (the caller decides)."""
    assert contact_identity({"id": "1", "email": "nope"}, "US") == (None, {"dropped:invalid_email": 1})


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Jo", ("Jo", None)), (" Jo  Smith ", ("Jo", "Smith")), ("", (None, None)), (None, (None, None))],
)
def test_split_name(name, expected):
    """The first word is the first name, the rest the last name."""
    assert split_name(name) == expected


def test_sparse_contact_leaves_empty_values_out():
    """A contact with only an email yields a profile without empty properties or location."""
    profile, _ = profile_of({"id": "9", "email": "a@example.com"})
    assert profile is not None
    assert (profile.first_name, profile.last_name, profile.image) == (None, None, None)
    assert dict(profile.location) == {}
    assert dict(profile.properties) == {"intercom_contact_id": "9"}


def test_zero_and_false_are_profile_values_while_empty_ones_are_not_sent():
    """A profile keeps 0 and false (people segment on them); null, "" and empty lists/objects are not sent."""
    raw = contact(
        opted_out_subscription_types={"type": "list", "data": [], "total_count": 0},
        custom_attributes={},
        tags={"data": []},
        role="",
    )
    profile, _ = profile_of(raw)
    assert profile is not None
    assert dict(profile.properties) == {
        "intercom_contact_id": "c-mail",
        "intercom_has_hard_bounced": False,
        "intercom_marked_email_as_spam": True,
        "intercom_unsubscribed_from_emails": False,
        "intercom_opted_out_subscription_types_count": 0,
    }
    assert profile.unset == ()


def test_what_the_previous_profile_had_and_this_one_has_not_is_unset():
    """Tags removed and attributes emptied since the previous profile: their (default) keys are unset; a
    property still present, 0 included, is not; the unset set takes part in the unique_id."""
    before, _ = profile_of(contact())
    cleared = contact(
        tags={"data": []},
        custom_attributes={},
        opted_out_subscription_types={"type": "list", "data": [], "total_count": 0},
    )
    after, _ = profile_of(cleared, before=before)
    alone, _ = profile_of(cleared)
    assert before is not None and after is not None and alone is not None
    assert after.unset == ("intercom_custom_attributes", "intercom_tags")
    assert after.properties["intercom_opted_out_subscription_types_count"] == 0
    assert alone.unset == () and alone.properties == after.properties
    assert after.unique_id != alone.unique_id
    same, _ = profile_of(contact(updated_at=5), before=before)
    assert same is not None and same.unset == () and same.unique_id == before.unique_id
