"""An LLM agent over MCP: any OpenAI-compatible chat-completions API (the ``openai``
package) deciding which tools to call on QMCP and any other Streamable HTTP MCP servers.

Needs the ``agent`` extra (``pip install 'qmcp-client[agent]'``); imports no Django. Run it
as ``qmcp agent`` or ``python -m qmcp_client.agent`` (see :mod:`qmcp_client.agent.cli`), or
from Python::

    async with ToolBox([ServerSpec.qmcp(url, token)], on_log=console.log) as tools:
        agent = Agent(ChatModel(LLMSettings(model="gpt-4o-mini")), tools, Console())
        await agent.ask("Check if Arkadiy Dobkin is present as a user, if not then add him")
"""

import importlib

# Imported on first use, so that ``--help`` works before the extra is installed.
_EXPORTS = {
    "Agent": "loop",
    "ChatModel": "llm",
    "Console": "console",
    "LLMError": "llm",
    "LLMSettings": "settings",
    "ServerSpec": "servers",
    "StepLimitReached": "loop",
    "ToolBox": "servers",
    "ToolOutcome": "servers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'qmcp_client.agent' has no attribute {name!r}")
    return getattr(importlib.import_module(f"qmcp_client.agent.{_EXPORTS[name]}"), name)
