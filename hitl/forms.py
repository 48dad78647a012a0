"""The reviewer pages' forms: the decision, reviewer settings, and "approve with edits",
whose fields are generated from the tool's input schema.

The edit form only turns what the browser sends into JSON values; the tool's input model
validates them (``human_request_respond`` with ``arguments``), so the schema stays the one
authority on what a call may carry.
"""

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django import forms

from hitl.models import HumanResponse, ReviewerSettings

FIELD_PREFIX = "arg-"


class ResponseForm(forms.Form):
    decision = forms.ChoiceField(choices=HumanResponse.Decision.choices)
    option = forms.CharField(required=False, max_length=200, strip=False)
    answer = forms.CharField(required=False)
    comment = forms.CharField(required=False)
    # With an approval: a grant (hitl.grants), checked by GrantTerms.of.
    grant_hours = forms.CharField(required=False)
    grant_arguments = forms.CharField(required=False)


class ExtendForm(forms.Form):
    seconds = forms.TypedChoiceField(
        coerce=int,
        choices=[(900, "15 minutes"), (3600, "1 hour"), (4 * 3600, "4 hours"), (86400, "1 day")],
    )


class DelegateForm(forms.Form):
    """Hand a request to a colleague: one of ``candidates`` (see
    ``hitl.services.delegate_candidates``), with an optional note."""

    to = forms.ModelChoiceField(queryset=None, label="Hand to", empty_label="Choose a colleague")
    comment = forms.CharField(required=False, max_length=2000, label="Note (optional)")

    def __init__(self, *args, candidates, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["to"].queryset = candidates.order_by("email")
        self.fields["to"].label_from_instance = lambda user: user.email


class ReportPeriodForm(forms.Form):
    """The audit-only report's period: two dates, both included; the last 7 days unless
    given."""

    DEFAULT_DAYS = 7

    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, data=None, *, today):
        self.default = {"start": today - timedelta(days=self.DEFAULT_DAYS - 1), "end": today}
        given = data is not None and any(data.get(name) for name in ("start", "end"))
        super().__init__(data if given else None, initial=self.default)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("start") and cleaned.get("end") and cleaned["start"] > cleaned["end"]:
            raise forms.ValidationError("The period must start before it ends.")
        return cleaned

    def period(self):
        """(start, end): the valid dates given, else the default."""
        if self.is_bound and self.is_valid():
            return self.cleaned_data["start"], self.cleaned_data["end"]
        return self.default["start"], self.default["end"]


class ReviewerSettingsForm(forms.ModelForm):
    chat_webhook_url = forms.URLField(
        required=False,
        assume_scheme="https",
        label="My chat webhook URL",
        help_text="An incoming webhook; empty means the team's QMCP_CHAT_WEBHOOK_URL.",
    )

    class Meta:
        model = ReviewerSettings
        fields = ["notify_via", "chat_webhook_url", "chat_format"]
        labels = {
            "notify_via": "Tell me about requests by",
            "chat_webhook_url": "My chat webhook URL",
            "chat_format": "Chat format",
        }


@dataclass
class ArgumentField:
    """One input of the edit form, from one property of the input schema."""

    name: str
    label: str
    widget: str  # "text", "number", "checkbox", "select", "date", "json"
    value: Any
    required: bool
    description: str = ""
    choices: tuple = ()
    step: str = ""

    @property
    def html_name(self) -> str:
        return FIELD_PREFIX + self.name

    @property
    def html_id(self) -> str:
        return "id_" + FIELD_PREFIX + self.name

    @property
    def shown(self) -> str:
        if self.widget == "json":
            return "" if self.value is None else json.dumps(self.value, ensure_ascii=False)
        return "" if self.value is None else str(self.value)


def _kind(prop: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The JSON type of a property (``anyOf`` with null reduced to its other branch)."""
    options = prop.get("anyOf")
    if options:
        concrete = [o for o in options if o.get("type") != "null"]
        if len(concrete) == 1:
            return _kind({**prop, **concrete[0], "anyOf": None})
        return "json", prop
    return prop.get("type", "json"), prop


def argument_fields(schema: dict[str, Any], values: dict[str, Any]) -> list[ArgumentField]:
    """The edit form's inputs for an input schema, filled with ``values``."""
    required = set(schema.get("required", []))
    fields = []
    for name, prop in (schema.get("properties") or {}).items():
        kind, prop = _kind(prop)
        value = values.get(name, prop.get("default"))
        field = ArgumentField(
            name=name,
            label=prop.get("title") or name.replace("_", " ").capitalize(),
            widget="text",
            value=value,
            required=name in required,
            description=prop.get("description", ""),
        )
        if "enum" in prop:
            field.widget, field.choices = "select", tuple(prop["enum"])
        elif kind == "integer":
            field.widget, field.step = "number", "1"
        elif kind == "number":
            field.widget, field.step = "number", "any"
        elif kind == "boolean":
            field.widget = "checkbox"
        elif kind == "string" and prop.get("format") == "date":
            field.widget = "date"
        elif kind != "string":
            field.widget = "json"
        fields.append(field)
    return fields


def edited_arguments(
    schema: dict[str, Any], data, original: dict[str, Any]
) -> dict[str, Any] | str:
    """The arguments the edit form describes, or a message naming a field that is not JSON.

    A field left empty is left out, unless the call had it: then it is sent empty (None for
    non-strings), and the tool's model says whether that is allowed.
    """
    arguments: dict[str, Any] = {}
    for field in argument_fields(schema, original):
        raw = data.get(field.html_name)
        if field.widget == "checkbox":
            if raw is not None or field.name in original:
                arguments[field.name] = raw is not None
            continue
        raw = (raw or "").strip()
        if raw == "":
            if field.name in original:
                arguments[field.name] = "" if field.widget in ("text", "select") else None
            continue
        if field.widget == "number":
            try:
                arguments[field.name] = int(raw) if field.step == "1" else float(raw)
            except ValueError:
                arguments[field.name] = raw  # the model reports the bad number
        elif field.widget == "json":
            try:
                arguments[field.name] = json.loads(raw)
            except ValueError:
                return f"{field.label}: not valid JSON."
        else:
            arguments[field.name] = raw
    return arguments
