"""The window query covers its window under every timestamp reading a server may apply (hypothesis)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from etl.intercom import covering_query
from etl.sandbox.intercom_query import Matching, compile_query

# zones with 23/25-hour days, a 30-minute DST shift, a skipped calendar day (Apia, 2011) and +14:00
ZONES = [
    "UTC",
    "America/Los_Angeles",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "Pacific/Kiritimati",
    "Asia/Kolkata",
    "America/St_Johns",
]
MATCHINGS = [
    *(("contacts", Matching(timezone=zone, contact_granularity="day")) for zone in ZONES),
    ("contacts", Matching(contact_granularity="second")),
    ("conversations", Matching(inclusive=True)),
    ("tickets", Matching(inclusive=False)),
]


@settings(max_examples=300, deadline=None)
@given(
    since=st.integers(1_293_840_000, 1_924_992_000),  # 2011 to 2031
    width=st.integers(1, 5 * 86_400),
    offset=st.floats(0, 1, exclude_max=True),
    matching=st.sampled_from(MATCHINGS),
)
@example(since=1_793_604_600, width=3_600, offset=0.0, matching=MATCHINGS[1])  # 23:30 on LA's 25-hour day
def test_every_moment_of_the_window_matches(
    since: int, width: int, offset: float, matching: tuple[str, Matching]
) -> None:
    """Any updated_at inside [since, until) is a search hit, at both edges and in between."""
    stream, mode = matching
    hit = compile_query(covering_query(since, since + width), stream, mode)
    for moment in (since, since + int(offset * width), since + width - 1):
        assert hit({"updated_at": moment})
