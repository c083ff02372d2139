"""What the Kubernetes API server and the container runtime accept, as plain functions.

Each function answers one question about one string (a name, a label, an image reference,
a cron schedule, a quantity) and says what is wrong in words, never quoting the value.
The limits are the API server's own (``k8s.io/apimachinery`` validation, the CronJob and
Job controllers' name rules) and the kernel's (``MAX_ARG_STRLEN``); the e2e test
``tests/e2e/test_limits.py`` sends objects at each limit to a real API server.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

#: A DNS-1123 label (namespaces, most names that end up in a hostname or a label value).
DNS_LABEL_MAX = 63
#: A DNS-1123 subdomain (most object names).
DNS_SUBDOMAIN_MAX = 253
#: A CronJob's name: its Jobs are named ``<cronjob>-<11 characters>`` and a Job's name is a
#: label value (63).
CRONJOB_NAME_MAX = 52
#: A Job's name: the controller puts it in the ``batch.kubernetes.io/job-name`` label.
JOB_NAME_MAX = 63
#: A label value, and the name part of a label or annotation key.
LABEL_VALUE_MAX = 63
#: All annotations of one object together (keys and values, in bytes).
ANNOTATIONS_MAX_BYTES = 256 * 1024
#: int32 fields (replicas, HPA policy values, ttlSecondsAfterFinished, …).
INT32_MAX = 2**31 - 1
#: The kernel's limit on one argument or environment string (``NAME=value`` plus its NUL).
MAX_ARG_STRLEN = 131072

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def dns_label_problem(value: str, limit: int = DNS_LABEL_MAX) -> str | None:
    """Why ``value`` is not a DNS-1123 label of at most ``limit`` characters, or None."""
    if len(value) > limit:
        return f"is {len(value)} characters long; at most {limit} are allowed"
    if not _DNS_LABEL.match(value):
        return (
            "must be a DNS label: lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def dns_subdomain_problem(value: str, limit: int = DNS_SUBDOMAIN_MAX) -> str | None:
    """Why ``value`` is not a DNS-1123 subdomain of at most ``limit`` characters, or None."""
    if len(value) > limit:
        return f"is {len(value)} characters long; at most {limit} are allowed"
    if not value or any(not _DNS_LABEL.match(part) for part in value.split(".")):
        return (
            "must be a DNS name: dot-separated parts of lower-case letters, digits and '-', "
            "each starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None."""
    if len(value) > LABEL_VALUE_MAX:
        return f"label value is {len(value)} characters long; at most {LABEL_VALUE_MAX} allowed"
    if not _LABEL_VALUE.match(value):
        return (
            "label value must be empty or letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label or annotation key (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return "key has an empty prefix before '/'"
        why = dns_subdomain_problem(prefix)
        if why:
            return f"key prefix {why}"
    if len(name) > LABEL_VALUE_MAX:
        return f"key name is {len(name)} characters long; at most {LABEL_VALUE_MAX} allowed"
    if not _QUALIFIED_NAME.match(name):
        return (
            "key must be letters, digits, '-', '_' and '.' (after an optional DNS prefix "
            "and '/'), starting and ending with a letter or digit"
        )
    return None


def annotations_size(annotations: dict[str, str]) -> int:
    """Bytes the API server counts for a set of annotations (keys and values)."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def env_problem(name: str, value: str) -> str | None:
    """Why an environment variable cannot reach a process (the kernel's limits), or None."""
    if "\0" in value:
        return "contains a NUL character, which no process environment can hold"
    size = len(name.encode()) + 1 + len(value.encode()) + 1
    if size > MAX_ARG_STRLEN:
        return (
            f"NAME=value is {size - 1} bytes; the kernel refuses environment strings over "
            f"{MAX_ARG_STRLEN - 1} bytes (MAX_ARG_STRLEN), so the container would not start"
        )
    return None


# ----------------------------------------------------------------------- images

# The distribution reference grammar: [host[:port]/]path[:tag][@digest].
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"^(?:(?P<host>{_HOST})/)?(?P<path>{_PATH_PART}(?:/{_PATH_PART})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}))?$",
    re.ASCII,
)
_NAME_MAX = 255


def image_problem(image: str) -> str | None:
    """Why ``image`` is not a container image reference a runtime can pull, or None."""
    match = _IMAGE.match(image)
    if match is None:
        # The first path part is a host only with a '.', a ':' or "localhost" in it; a
        # reference whose first part looks like a host but is not one fails above too.
        return (
            "must be an image reference such as registry.example.com/team/agent:1.2 "
            "(lower-case repository path, optional tag of letters, digits, '_', '.' and '-', "
            "optional @sha256:digest)"
        )
    host = match["host"]
    # In "team/agent" the first part is no host (no '.', ':' or localhost) but the
    # repository's first path part, which must then be lower-case.
    registry = "." in host or ":" in host or host == "localhost" or "[" in host if host else True
    if not registry and host != host.lower():
        return "the repository path must be lower-case"
    name = f"{host}/{match['path']}" if host else match["path"]
    if len(name) > _NAME_MAX:
        return f"the repository name is {len(name)} characters long; at most {_NAME_MAX} allowed"
    return None


# ----------------------------------------------------------------------- quantities

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(text: str) -> Decimal | None:
    """A Kubernetes resource quantity (``500m``, ``1Gi``, ``1e3``) as a number, or None."""
    match = _QUANTITY.match(text.strip()) if len(text) <= 64 else None
    if match is None:
        return None
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
        return None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    if suffix:
        exponent = int(suffix[1:])
        if abs(exponent) > 100:
            return None
        return number.scaleb(exponent)
    return number


# ----------------------------------------------------------------------- cron

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_CRON_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i for i, m in enumerate(_MONTHS, 1)}),
    ("day of week", 0, 6, {d: i for i, d in enumerate(_DAYS)}),
)
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_EVERY = re.compile(r"^@every ([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


def cron_problem(schedule: str) -> str | None:
    """Why ``schedule`` is not a schedule a CronJob accepts (five fields, or @hourly…)."""
    text = schedule.strip()
    if text.startswith(("TZ=", "CRON_TZ=")):
        return "must not set a time zone (TZ=…): Kubernetes refuses it in the schedule"
    if text.startswith("@"):
        if text.lower() in _DESCRIPTORS or _EVERY.match(text):
            return None
        return f"unknown descriptor; use five fields or one of {', '.join(sorted(_DESCRIPTORS))}"
    fields = text.split()
    if len(fields) != 5:
        return f"must have 5 fields (minute hour day-of-month month day-of-week), not {len(fields)}"
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        why = _cron_field_problem(value, low, high, names)
        if why:
            return f"{name} field: {why}"
    return None


def _cron_field_problem(value: str, low: int, high: int, names: dict[str, int]) -> str | None:
    for part in value.split(","):
        span, slash, step = part.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            return "a step (/N) must be a positive number"
        if span in ("*", "?"):
            continue
        start_text, dash, end_text = span.partition("-")
        bounds = []
        for number in (start_text, end_text) if dash else (start_text,):
            parsed = names.get(number.lower()) if not number.isdigit() else int(number)
            if parsed is None:
                return f"must be numbers from {low} to {high}, '*', ranges, steps and lists"
            if not low <= parsed <= high:
                return f"{parsed} is outside {low}-{high}"
            bounds.append(parsed)
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            return "a range must not run backwards"
    return None
