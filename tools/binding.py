"""What an approval is bound to: a digest of the tool's name and its call's arguments.

A gated call records the digest of the arguments it would run with; an approve-with-edits
decision records the digest of the edited ones; and the approved run refuses to go ahead
when the arguments it is about to run with no longer have that digest. Grants that allow
"these exact arguments" compare the same digest.
"""

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """``value`` as one canonical JSON text: sorted keys, no whitespace, non-ASCII kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def arguments_digest(tool_name: str, arguments: Any) -> str:
    """The hex sha256 of the tool's name, a newline and the canonical JSON of
    ``arguments``, which are the tool's validated arguments as JSON, defaults included
    (``CallFacts.arguments``): two calls that run the same get the same digest."""
    text = f"{tool_name}\n{canonical_json(arguments)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
