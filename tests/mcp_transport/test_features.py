"""Resources, templates, prompts and completion, called without the protocol."""

import pytest

from mcp_transport import features
from mcp_transport.features import Prompt, ResourceTemplate
from qmcp_site.errors import ApplicationError
from tests.factories import UserFactory
from users.principals import Principal


def _template(**kwargs):
    return ResourceTemplate(
        uri_template="qmcp://things/{kind}/{id}",
        name="thing",
        description="A thing.",
        mime_type="text/plain",
        read=lambda principal, uri, **variables: [{"uri": uri, "text": repr(variables)}],
        **kwargs,
    )


@pytest.mark.parametrize(
    "uri, variables",
    [
        ("qmcp://things/a/1", {"kind": "a", "id": "1"}),
        ("qmcp://things/a.b/x-y", {"kind": "a.b", "id": "x-y"}),
        ("qmcp://things/a/1/extra", None),
        ("qmcp://things/a", None),
        ("qmcp://things//1", None),
        ("xqmcp://things/a/1", None),
    ],
)
def test_template_pattern_matches_one_segment_per_variable(uri, variables):
    match = _template().pattern.match(uri)
    assert (match.groupdict() if match else None) == variables


def test_template_pattern_escapes_literal_parts():
    template = ResourceTemplate(
        uri_template="a.b/{x}", name="n", description="d", mime_type="t", read=lambda *a: []
    )
    assert template.pattern.match("a.b/1")
    assert not template.pattern.match("aXb/1")


@pytest.fixture
def registered(monkeypatch):
    """Registers throwaway items into copies of the registries, restored afterwards."""
    for name in ("RESOURCES", "TEMPLATES", "PROMPTS"):
        monkeypatch.setattr(features, name, dict(getattr(features, name)))
    return features.register


def test_resource_read_uses_templates_and_raises_not_found(registered):
    registered(_template())
    contents = features.resource_read(principal=None, uri="qmcp://things/a/1")
    assert contents == [{"uri": "qmcp://things/a/1", "text": repr({"kind": "a", "id": "1"})}]
    with pytest.raises(ApplicationError) as error:
        features.resource_read(principal=None, uri="qmcp://things/a")
    assert error.value.code == "not_found"


def test_completion_filters_by_prefix_and_caps_at_100(registered):
    words = [f"alpha{i}" for i in range(150)] + ["beta"]
    registered(
        Prompt(
            name="test_prompt",
            description="d",
            arguments=[{"name": "word", "required": True}],
            render=lambda principal, word: [],
            complete={"word": lambda principal, value: words},
        )
    )
    ref = {"type": "ref/prompt", "name": "test_prompt"}
    alpha = features.complete(principal=None, ref=ref, argument="word", value="alpha")
    assert len(alpha) == 100 and all(v.startswith("alpha") for v in alpha)
    assert features.complete(principal=None, ref=ref, argument="word", value="b") == ["beta"]
    assert features.complete(principal=None, ref=ref, argument="other", value="") == []
    assert features.complete(principal=None, ref={"type": "ref/x"}, argument="word", value="") == []


@pytest.mark.django_db
def test_prompt_get_reports_missing_and_unknown_arguments():
    principal = Principal.for_user(UserFactory())
    with pytest.raises(ApplicationError) as error:
        features.prompt_get(principal=principal, name="ensure_user", arguments={"nick": "x"})
    assert error.value.code == "invalid_arguments"
    assert "name" in error.value.message and "nick" in error.value.message
    result = features.prompt_get(
        principal=principal, name="ensure_user", arguments={"name": "Grace", "surname": "Hopper"}
    )
    assert "Grace Hopper" in result["messages"][-1]["content"]["text"]
    assert "email" not in result["messages"][-1]["content"]["text"]
