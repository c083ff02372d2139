"""Turn JSON-schema errors into one-line problems a person can act on.

jsonschema's own messages echo the offending value (``'abc' is not of type
'integer'``).  A misplaced token would then end up on stderr, so these messages
never include a value from the input; they name the field and say what it must be.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError as SchemaError

from stackgen.common.errors import Problem

_JSON_TYPES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}

# Friendly words for the patterns stackgen's schemas use.
_PATTERN_WORDS = {
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": "a DNS label: lower-case letters, digits and '-'",
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$": (
        "a DNS name: dot-separated parts of lower-case letters, digits and '-', "
        "each starting and ending with a letter or digit"
    ),
    "^1\\.(2[5-9]|3[0-7])\\.[0-9]+$": "a Kubernetes version from 1.25 to 1.37, such as 1.33.0",
    "^[0-9.]+(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$": (
        "a Kubernetes quantity such as 500m, 2, 1Gi or 512Mi"
    ),
    "^([a-z0-9.-]+/)?[a-z0-9-]+$": "a resource name such as cpu, memory or example.com/gpu",
    "^[^/]": "a path relative to the overlay folder",
    "^/": "an absolute path",
    "^[^\\s]+$": "a single word without spaces",
    "^[A-Za-z_][A-Za-z0-9_]*$": "an environment variable name",
    "^[A-Za-z0-9][A-Za-z0-9_.-]*$": "a queue key: letters, digits, '_', '.' and '-'",
    "^[A-Za-z0-9_.-]+$": "letters, digits, '_', '.' and '-'",
    "^[^,]*$": "text without commas",
    "^https?://[^\\s]+$": "an http(s) URL",
    "^(https://|ssh://|git@)[^\\s]+$": "a repository URL (https://, ssh:// or git@)",
    "^[-._a-zA-Z0-9]+$": "a Secret key: letters, digits, '-', '_' and '.'",
}


def format_path(parts: Iterable[Any]) -> str:
    """Render a JSON path as ``queues[1].hpa.scaleUp``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` when a close candidate exists, else ``""``."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _describe_type(instance: Any) -> str:
    for json_type, words in _JSON_TYPES.items():
        if json_type == "integer" and isinstance(instance, bool):
            continue
        if jsonschema.Draft202012Validator.TYPE_CHECKER.is_type(instance, json_type):
            if json_type == "integer":
                return "an integer"
            return words
    return "something else"


def _expected_types(value: str | Sequence[str]) -> str:
    types = [value] if isinstance(value, str) else list(value)
    return " or ".join(_JSON_TYPES.get(t, t) for t in types)


def _problems_for(error: SchemaError, file: str) -> Iterator[Problem]:
    path = list(error.absolute_path)
    value: Any = error.validator_value
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = sorted(schema.get("properties", {}))
        for key in sorted(k for k in error.instance if k not in known):
            hint = did_you_mean(str(key), known) if known else ""
            yield Problem(file, format_path([*path, key]), f"unknown key{hint}")
        return
    if error.validator == "required":
        missing = [k for k in value if isinstance(error.instance, dict) and k not in error.instance]
        for key in missing:
            yield Problem(file, format_path([*path, key]), "is required")
        return
    schema_path = list(error.schema_path)
    if len(schema_path) >= 2 and schema_path[-2] == "propertyNames":
        # A bad key: jsonschema validates the key itself as the instance.
        name = str(error.instance)
        yield Problem(file, format_path([*path, name]), _bad_key(name, error.validator, value))
        return
    yield Problem(file, format_path(path), _message(error, value, schema))


def _bad_key(name: str, validator: Any, value: Any) -> str:
    if validator == "enum" and isinstance(value, list):
        choices = [str(v) for v in value]
        hint = did_you_mean(name, choices)
        return hint[2:] if hint else f"not one of: {', '.join(choices)}"
    return f"bad key name: must be {pattern_words(value)}"


def _message(error: SchemaError, value: Any, schema: dict[str, Any]) -> str:
    """What one field's value must be, in words (never quoting the value)."""
    validator = error.validator
    if validator == "enum" and isinstance(value, list):
        hint = ""
        if isinstance(error.instance, str):
            hint = did_you_mean(error.instance, [str(v) for v in value])
        return f"must be one of: {', '.join(str(v) for v in value)}{hint}"
    if validator in {"minProperties", "maxProperties"} and "properties" in schema:
        return f"must set exactly one of: {', '.join(schema['properties'])}"
    words: dict[str, Callable[[], str]] = {
        "const": lambda: f"must be {value!r}",
        "type": lambda: f"must be {_expected_types(value)}, not {_describe_type(error.instance)}",
        "pattern": lambda: f"must be {pattern_words(value)}",
        "minimum": lambda: f"must be at least {value}",
        "maximum": lambda: f"must be at most {value}",
        "minItems": lambda: f"must have at least {value} item{'s' if value != 1 else ''}",
        "minLength": lambda: (
            "must not be empty" if value == 1 else f"must be at least {value} characters"
        ),
        "maxLength": lambda: f"must be at most {value} characters",
        "exclusiveMinimum": lambda: f"must be more than {value}",
        "exclusiveMaximum": lambda: f"must be less than {value}",
        "maxItems": lambda: f"must have at most {value} item{'s' if value != 1 else ''}",
        "uniqueItems": lambda: "must not list the same item twice",
        "minProperties": lambda: f"must set at least {value} key{'s' if value != 1 else ''}",
        "maxProperties": lambda: f"must set at most {value} key{'s' if value != 1 else ''}",
    }
    say = words.get(str(validator))
    # Anything else (oneOf, not, …): words, never the schema's own text.
    return say() if say else "does not have a form this field accepts (see `stackgen schema`)"


def pattern_words(pattern: object) -> str:
    """What a schema pattern asks for, in words (never the regular expression itself)."""
    return _PATTERN_WORDS.get(
        str(pattern), "in the form this field accepts (see `stackgen schema`)"
    )


def schema_problems(instance: Any, schema: dict[str, Any], file: str) -> list[Problem]:
    """Validate ``instance`` against ``schema``; return sorted, de-duplicated problems."""
    validator = jsonschema.Draft202012Validator(schema)
    seen: set[Problem] = set()
    problems: list[Problem] = []
    for error in validator.iter_errors(instance):
        for problem in _problems_for(error, file):
            if problem not in seen:
                seen.add(problem)
                problems.append(problem)
    return sorted(problems, key=lambda p: _path_key(p.path))


def _path_key(path: str) -> tuple[str, ...]:
    # Sort queues[2] before queues[10].
    return tuple(
        part.zfill(6) if part.isdigit() else part
        for part in path.replace("[", ".").replace("]", "").split(".")
    )
