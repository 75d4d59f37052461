"""Contact snapshot → Klaviyo profile, and the identity (email / E.164 phone) events are keyed by.

Pure: no I/O. A profile's values are sent as they are, 0 and false included; a tracked property that the
contact's previous profile had and this one has not (tags removed, a custom attribute cleared) is listed in
`Profile.unset`, because Klaviyo's bulk import only sets what it is given (docs/design.md §4.2).
Counts returned beside results use the keys `dropped:invalid_email`, `dropped:invalid_phone`,
`skipped:no_identifier` and `truncated`; the pipeline adds them to the run report.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from etl.limits import fit_properties, is_blank
from etl.models import Identity, Profile, Snapshot
from etl.snapshots import digest, email, obj, text

MAX_EMAIL_CHARS = 100  # Klaviyo rejects longer email addresses on profiles
EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# The regions phonenumbers parses national numbers of (its SUPPORTED_REGIONS), for checking
# default_phone_region in jobs.yaml without importing phonenumbers (~0.05 s of CPU): only a phone to parse
# loads it. tests/test_startup.py pins the two equal, so a phonenumbers upgrade that adds one says so.
_PHONE_REGION_CODES = """
    AC AD AE AF AG AI AL AM AO AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR
    BS BT BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC
    EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GT GU GW GY HK
    HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB
    LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY
    MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PR PS PT PW PY QA RE RO RS
    RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TA TC TD TG TH TJ TK TL
    TM TN TO TR TT TV TW TZ UA UG US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW
"""
PHONE_REGIONS = frozenset(_PHONE_REGION_CODES.split())

PROFILE_PROPERTY_KEYS = (  # docs/design.md §4.2, the keys of Klaviyo's native Intercom integration
    "intercom_contact_id",
    "intercom_contact_role",
    "intercom_has_hard_bounced",
    "intercom_marked_email_as_spam",
    "intercom_unsubscribed_from_emails",
    "intercom_opted_out_subscription_types_count",
    "intercom_custom_attributes",
    "intercom_tags",
)


def normalize_email(value: Any) -> str | None:
    """The trimmed, lower-cased address, or None when absent, malformed or longer than Klaviyo accepts."""
    candidate = email(value)
    if candidate is None or len(candidate) > MAX_EMAIL_CHARS or not EMAIL_SHAPE.fullmatch(candidate):
        return None
    return candidate


def normalize_phone(value: Any, default_phone_region: str) -> str | None:
    """The number in E.164, or None when absent or not a valid number (national numbers use the region)."""
    candidate = text(value)
    if candidate is None:
        return None
    return _e164(candidate, default_phone_region)


@functools.lru_cache(maxsize=16_384)  # parsing costs ~0.3 ms; a contact's number is met again and again
def _e164(candidate: str, default_phone_region: str) -> str | None:
    import phonenumbers

    try:
        number = phonenumbers.parse(candidate, default_phone_region.upper() or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def contact_identity(
    contact: Snapshot | Mapping[str, Any], default_phone_region: str
) -> tuple[Identity | None, dict[str, int]]:
    """The identity of a contact (snapshot, its data, or the raw contact); None when it has no identifier.

    Counts the email or phone dropped as invalid; skipping is counted by whoever skips (`to_profile`, `diff`).
    """
    data = contact.data if isinstance(contact, Snapshot) else contact
    counts: dict[str, int] = {}
    raw_email, raw_phone = text(data.get("email")), text(data.get("phone"))
    address = normalize_email(raw_email)
    phone = normalize_phone(raw_phone, default_phone_region)
    if raw_email is not None and raw_email.strip() and address is None:
        counts["dropped:invalid_email"] = 1
    if raw_phone is not None and raw_phone.strip() and phone is None:
        counts["dropped:invalid_phone"] = 1
    if address is None and phone is None:
        return None, counts
    return Identity(email=address, phone_number=phone, contact_id=text(data.get("id"))), counts


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """First word → first name, the rest → last name ("Mary Ann Smith" → "Mary", "Ann Smith")."""
    words = (name or "").split()
    if not words:
        return None, None
    return words[0], " ".join(words[1:]) or None


def to_profile(
    contact: Snapshot,
    tags: Mapping[str, str],
    default_phone_region: str,
    before: Profile | None = None,
) -> tuple[Profile | None, dict[str, int]]:
    """The Klaviyo profile of a contact snapshot (docs/design.md §4.2); None without an email or phone.

    Canonical: under the default property keys, as the outbox keeps it; a job's `property_names` are applied
    when it is sent (`etl.klaviyo.rename`). So the unique_id, a digest of this content, does not depend on
    the names: renaming a property does not send unchanged profiles again, and with no names configured the
    digests are those that versions renaming at inference gave.

    `before` is the profile of the contact's previous state: its tracked properties that are empty or absent
    now are listed in `unset`, and take part in the unique_id (a profile that differs only in what it removes
    is another upsert).
    """
    identity, counts = contact_identity(contact, default_phone_region)
    if identity is None:
        return None, {**counts, "skipped:no_identifier": 1}
    data = contact.data
    first_name, last_name = split_name(text(data.get("name")))
    places = {key: text(value) for key, value in obj(data.get("location")).items()}
    location = {key: value for key, value in places.items() if value is not None}
    tag_names = sorted({tags[ident] for ident in data.get("tag_ids") or [] if ident in tags})
    values = (
        contact.object_id,
        data.get("role"),
        data.get("has_hard_bounced"),
        data.get("marked_email_as_spam"),
        data.get("unsubscribed_from_emails"),
        data.get("opted_out_count"),
        data.get("custom_attributes"),
        tag_names,
    )
    raw_properties = dict(zip(PROFILE_PROPERTY_KEYS, values, strict=True))
    fitted = fit_properties(raw_properties, empty=is_blank)
    if fitted.truncations:
        counts["truncated"] = fitted.truncations
    image = text(data.get("avatar"))
    content: dict[str, Any] = {
        "email": identity.email,
        "phone_number": identity.phone_number,
        "first_name": first_name,
        "last_name": last_name,
        "image": image,
        "location": location,
        "properties": fitted.properties,
    }
    unset: tuple[str, ...] = ()
    if before is not None:
        unset = tuple(
            sorted(
                key
                for key in before.properties
                if key in PROFILE_PROPERTY_KEYS and key not in fitted.properties
            )
        )
    if unset:  # only then: an unchanged profile keeps the unique_id it was sent under
        content["unset"] = list(unset)
    profile = Profile(
        unique_id=f"intercom:contact:{contact.object_id}:{digest(content)[:16]}",
        identity=identity,
        first_name=first_name,
        last_name=last_name,
        image=image,
        location=location,
        properties=fitted.properties,
        unset=unset,
    )
    return profile, counts
