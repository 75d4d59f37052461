"""Intercom search query grammar for the sandbox: validation and evaluation (spec 2.16, the /search ops).

A query is a filter `{field, operator, value}` or a group `{operator: AND|OR, value: [query, ...]}`.
Limits (spec "Nesting & Limitations"): at most 2 levels of groups and at most 15 filters per group; both are
400 errors here. Operators: `= != IN NIN > < >= <= ~ !~ ^ $`, checked against the field's type per stream:
- contacts: date fields accept only `= > <` and match **by calendar day in the workspace timezone**
  (`=` the whole day, `>` from the start of the next day, `<` before the start of the day);
- conversations: `>`/`<` are documented as "Greater (or equal) than" / "Lower (or equal) than";
  `>=`/`<=` are not in the table and are refused;
- tickets: like conversations, plus `>=`/`<=` (spec: "You may use the <= or >= operators ... created_at").
`Matching` switches the sandbox to second precision (contacts) or strict `>`/`<` (conversations, tickets).
Dotted fields (`source.author.email`, `custom_attributes.plan`, `statistics.last_contact_reply_at`) are read
from the object; list fields (`contact_ids`, `tag_ids`, `tag_id`, `teammate_ids`) match when any element does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

MAX_NESTING = 2  # spec: "a limit of max 2 nested filters"
MAX_FILTERS_PER_GROUP = 15  # spec: "max 15 filters for each AND or OR group"
OPERATORS = frozenset({"=", "!=", "IN", "NIN", ">", "<", ">=", "<=", "~", "!~", "^", "$"})

DATE_FIELDS = {
    "contacts": {
        "created_at", "signed_up_at", "updated_at", "last_seen_at", "last_contacted_at", "last_replied_at",
        "last_email_opened_at", "last_email_clicked_at", "ios_last_seen_at", "android_last_seen_at",
    },
    "conversations": {
        "created_at", "updated_at", "waiting_since", "snoozed_until", "conversation_rating.requested_at",
        "conversation_rating.replied_at", "statistics.first_contact_reply_at",
        "statistics.last_contact_reply_at",
        "statistics.first_admin_reply_at", "statistics.last_admin_reply_at", "statistics.last_close_at",
    },
    "tickets": {"created_at", "updated_at", "snoozed_until"},
}  # fmt: skip
INTEGER_FIELDS = {
    "contacts": set(),
    "conversations": {
        "admin_assignee_id", "team_assignee_id", "conversation_rating.score", "statistics.count_reopens",
        "statistics.count_assignments", "statistics.count_conversation_parts",
    },
    "tickets": set(),
}  # fmt: skip
BOOLEAN_FIELDS = {
    "contacts": {"unsubscribed_from_emails", "marked_email_as_spam", "has_hard_bounced"},
    "conversations": {"open", "read", "ai_agent_participated"},
    "tickets": {"open"},
}
STRING_OPERATORS = frozenset({"=", "!=", "IN", "NIN", "~", "!~", "^", "$"})


class QueryError(ValueError):
    """A query Intercom would refuse with 400; `code` is the error code in the body."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Matching:
    """How the sandbox matches timestamps: the spec's behaviour by default."""

    timezone: str = "UTC"  # the workspace timezone (contact search day boundaries)
    contact_granularity: str = "day"  # "day" (spec) or "second"
    inclusive: bool = True  # conversations/tickets: ">"/"<" include equality (spec) or are strict


Predicate = Callable[[Mapping[str, Any]], bool]


def search_values(stream: str, obj: Mapping[str, Any], field: str) -> list[Any]:
    """The values of `field` on `obj` as search sees them (virtual list fields resolved); [] when absent."""
    if field == "contact_ids":
        return [c["id"] for c in (obj.get("contacts") or {}).get("contacts", [])]
    if field == "tag_ids":
        return [t["id"] for t in (obj.get("tags") or {}).get("tags", [])]
    if field == "tag_id":
        return [t["id"] for t in (obj.get("tags") or {}).get("data", [])]
    if field == "teammate_ids":
        return [t["id"] for t in (obj.get("teammates") or {}).get("teammates", [])]
    if field == "email_domain" and stream == "contacts":
        email = obj.get("email") or ""
        return [email.rsplit("@", 1)[1]] if "@" in email else []
    if field.startswith("ticket_attribute."):
        field = "ticket_attributes." + field.split(".", 1)[1]
    if field == "conversation_rating.score":
        field = "conversation_rating.rating"
    value: Any = obj
    for key in field.split("."):
        if not isinstance(value, Mapping) or key not in value:
            return []
        value = value[key]
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def compile_query(query: Any, stream: str, matching: Matching) -> Predicate:
    """Validate `query` for `stream` and return a predicate over raw objects; raises QueryError."""
    return _compile(query, stream, matching, depth=0)


def _compile(query: Any, stream: str, matching: Matching, depth: int) -> Predicate:
    if not isinstance(query, Mapping):
        raise QueryError("parameter_invalid", "query must be an object")
    operator = query.get("operator")
    if operator in ("AND", "OR"):
        children = query.get("value")
        if not isinstance(children, list) or not children:
            raise QueryError("parameter_invalid", f"{operator} needs a non-empty array of filters")
        if depth >= MAX_NESTING:
            raise QueryError("parameter_invalid", f"too many nested filters: at most {MAX_NESTING} levels")
        if len(children) > MAX_FILTERS_PER_GROUP:
            raise QueryError(
                "parameter_invalid",
                f"too many filters in an {operator} group: at most {MAX_FILTERS_PER_GROUP}",
            )
        preds = [_compile(child, stream, matching, depth + 1) for child in children]
        if operator == "AND":
            return lambda obj: all(p(obj) for p in preds)
        return lambda obj: any(p(obj) for p in preds)
    return _filter(query, stream, matching)


def _number(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise QueryError("parameter_invalid", f"{field} expects a number, got {value!r}")
    try:
        return int(str(value))
    except ValueError:
        raise QueryError("parameter_invalid", f"{field} expects a number, got {value!r}") from None


def _filter(query: Mapping[str, Any], stream: str, matching: Matching) -> Predicate:
    field, operator, value = query.get("field"), query.get("operator"), query.get("value")
    if not isinstance(field, str) or not field:
        raise QueryError("parameter_invalid", "a filter needs a field")
    if operator not in OPERATORS:
        raise QueryError("parameter_invalid", f"unknown operator {operator!r}")
    if operator in ("IN", "NIN") and not isinstance(value, list):
        raise QueryError("parameter_invalid", f"{operator} on {field} needs an array value")
    if field in DATE_FIELDS[stream]:
        return _date_filter(stream, field, operator, value, matching)
    if field in INTEGER_FIELDS[stream]:
        return _integer_filter(stream, field, operator, value)
    if operator not in STRING_OPERATORS:
        raise QueryError("parameter_invalid", f"operator {operator} is not supported on {field}")
    if field == "tag_id" and operator not in ("=", "!="):
        raise QueryError("parameter_invalid", "tag_id supports only = and !=")
    is_bool = field in BOOLEAN_FIELDS[stream]
    if is_bool and operator not in ("=", "!=", "IN", "NIN"):
        raise QueryError("parameter_invalid", f"operator {operator} is not supported on boolean {field}")

    def norm(v: Any) -> Any:
        if is_bool:
            return v if isinstance(v, bool) else str(v).lower() == "true"
        return str(v)

    wanted = [norm(v) for v in value] if isinstance(value, list) else [norm(value)]
    tests: dict[str, Callable[[Any], bool]] = {
        "=": lambda v: v == wanted[0],
        "IN": lambda v: v in wanted,
        "~": lambda v: str(wanted[0]).lower() in str(v).lower(),
        "^": lambda v: str(v).lower().startswith(str(wanted[0]).lower()),
        "$": lambda v: str(v).lower().endswith(str(wanted[0]).lower()),
    }
    negated = {"!=": "=", "NIN": "IN", "!~": "~"}
    positive = tests[negated.get(operator, operator)]

    def predicate(obj: Mapping[str, Any]) -> bool:
        hit = any(positive(norm(v)) for v in search_values(stream, obj, field))
        return not hit if operator in negated else hit

    return predicate


def _integer_filter(stream: str, field: str, operator: str, value: Any) -> Predicate:
    if operator in ("~", "!~", "^", "$"):
        raise QueryError("parameter_invalid", f"operator {operator} is not supported on integer {field}")
    wanted = [_number(v, field) for v in value] if isinstance(value, list) else [_number(value, field)]
    compare: dict[str, Callable[[int], bool]] = {
        "=": lambda v: v == wanted[0],
        "!=": lambda v: v != wanted[0],
        "IN": lambda v: v in wanted,
        "NIN": lambda v: v not in wanted,
        ">": lambda v: v > wanted[0],
        "<": lambda v: v < wanted[0],
        ">=": lambda v: v >= wanted[0],
        "<=": lambda v: v <= wanted[0],
    }
    test = compare[operator]
    return lambda obj: any(test(int(v)) for v in search_values(stream, obj, field))


def day_start(moment: int, zone: ZoneInfo, days: int = 0) -> int:
    """Epoch seconds of local midnight starting the calendar day of `moment` (+ `days`) in `zone`."""
    local = datetime.fromtimestamp(moment, zone).date() + timedelta(days=days)
    return int(datetime(local.year, local.month, local.day, tzinfo=zone).timestamp())


def _date_filter(stream: str, field: str, operator: str, value: Any, matching: Matching) -> Predicate:
    allowed = {
        "contacts": {"=", ">", "<"},
        "conversations": {"=", ">", "<"},
        "tickets": {"=", ">", "<", ">=", "<="},
    }
    if operator not in allowed[stream]:
        raise QueryError("parameter_invalid", f"operator {operator} is not supported on date field {field}")
    at = _number(value, field)
    if stream == "contacts" and matching.contact_granularity == "day":
        # contact search matches timestamps by calendar day in the workspace timezone (spec 2.16)
        zone = ZoneInfo(matching.timezone)
        start, end = day_start(at, zone), day_start(at, zone, 1)
        day_tests: dict[str, Callable[[int], bool]] = {
            "=": lambda v: start <= v < end,
            ">": lambda v: v >= end,  # "> matches from the start of the next day"
            "<": lambda v: v < start,  # "< matches everything before the start of that day"
        }
        test = day_tests[operator]
    else:
        inclusive = matching.inclusive and stream != "contacts"
        second_tests: dict[str, Callable[[int], bool]] = {
            "=": lambda v: v == at,
            ">": (lambda v: v >= at) if inclusive else (lambda v: v > at),
            "<": (lambda v: v <= at) if inclusive else (lambda v: v < at),
            ">=": lambda v: v >= at,
            "<=": lambda v: v <= at,
        }
        test = second_tests[operator]
    return lambda obj: any(test(int(v)) for v in search_values(stream, obj, field))
