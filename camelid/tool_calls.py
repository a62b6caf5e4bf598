"""Tool calls: describing tools to a model in its own syntax, and reading the calls back from its reply.

The syntax comes from the chat template (`tool_format`), as llama-server recognises it:
- "hermes" (Qwen2.5, Qwen3, Hermes; templates with <tool_call>): the template lists the tools, and a
  call is <tool_call>{"name": ..., "arguments": {...}}</tool_call>, one block per call;
- "llama3" (Llama 3.1-3.3; <|python_tag|> or "ipython"): the template lists the tools, a call is
  {"name": ..., "parameters": {...}};
- "mistral" ([TOOL_CALLS]): [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...];
- "generic" (any other template): a system message lists the tools and asks for JSON, {"tool_call":
  {"name", "arguments"}} (or "tool_calls": [...]) or {"response": "text"}, and decoding is
  constrained to that JSON, with each call's arguments to its tool's parameter schema.
With tool_choice "required" or a named function, decoding is constrained to a call in every format.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from camelid.errors import CamelidError

FORMATS = ("hermes", "llama3", "mistral", "generic")
MAX_PARALLEL_CALLS = 4  # calls per reply with parallel_tool_calls: a small model would otherwise repeat calls until max_tokens


class ToolRequestError(CamelidError):
    """A request's tools or tool_choice that cannot be served; `param` names the field (a 400 on the server)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def plan(tools: Any, tool_choice: Any, parallel: bool, messages: list[dict], variables: dict, constraint: tuple | None,
         template_source: str, special_token) -> tuple[list[dict], tuple | None, str | None]:
    """How to run a chat request with tools: (the messages to render, the output constraint, the call
    format to parse the reply in, or None when no tool may be called). Sets variables["tools"] for
    templates with a tool syntax; constraint is the request's own (response_format), which tools
    exclude. special_token(text) gives the id of a special token spelled text, or None."""
    try:
        tools = check_tools(tools)
    except CamelidError as exc:
        raise ToolRequestError("tools", str(exc)) from None
    try:
        picked, required = chosen_tools(tools, tool_choice)
    except CamelidError as exc:
        raise ToolRequestError("tool_choice", str(exc)) from None
    fmt = tool_format(template_source)
    if fmt == "generic":
        messages = messages_for_generic(messages)
    if not picked:
        return messages, constraint, None
    if constraint is not None:
        raise ToolRequestError(constraint[2], f"{constraint[2]} cannot be combined with tools; leave one out.")
    if fmt == "generic":
        schema = generic_schema(picked, required, parallel)
        note = generic_system_text(picked, schema)
        if messages and messages[0]["role"] == "system":
            messages = [{"role": "system", "content": messages[0]["content"] + "\n\n" + note}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": note}, *messages]
        return messages, ("json", schema, "tools"), fmt
    variables["tools"] = picked
    messages = [with_argument_objects(m) for m in messages]
    if required:
        return messages, ("lark", native_lark(fmt, picked, parallel, special_token), "tools"), fmt
    return messages, None, fmt


def tool_format(template_source: str) -> str:
    """The tool-call syntax a chat template teaches its model (see the module docstring)."""
    if "<tool_call>" in template_source:
        return "hermes"
    if "[TOOL_CALLS]" in template_source:
        return "mistral"
    if "<|python_tag|>" in template_source or "ipython" in template_source:
        return "llama3"
    return "generic"


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI's function.arguments
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def openai(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def check_tools(tools: Any) -> list[dict]:
    """OpenAI's tools list, checked: [{"type": "function", "function": {"name", "description"?, "parameters"?}}]."""
    if not isinstance(tools, list) or not tools:
        raise CamelidError("tools must be a non-empty list of {\"type\": \"function\", \"function\": {...}} objects.")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise CamelidError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": ...}}}}.")
        if not isinstance(fn.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", fn["name"]):
            raise CamelidError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'.")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise CamelidError(f"tools[{i}].function.parameters must be a JSON schema object.")
        out.append({"type": "function", "function": {**fn, "parameters": params}})
    return out


def chosen_tools(tools: list[dict], tool_choice: Any) -> tuple[list[dict], bool]:
    """(the tools a reply may call, whether it must call one) for tool_choice auto, none, required or a named function."""
    if tool_choice in (None, "auto"):
        return tools, False
    if tool_choice == "none":
        return [], False
    if tool_choice == "required":
        return tools, True
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if name is None:
        raise CamelidError('tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}.')
    picked = [t for t in tools if t["function"]["name"] == name]
    if not picked:
        raise CamelidError(f"tool_choice names the function {name!r}, which is not among the tools.")
    return picked, True


def _call_schema(tool: dict, arguments_key: str = "arguments") -> dict:
    fn = tool["function"]
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, arguments_key: fn["parameters"]},
            "required": ["name", arguments_key], "additionalProperties": False}


def _calls_schema(tools: list[dict], parallel: bool, arguments_key: str = "arguments") -> dict:
    one = {"anyOf": [_call_schema(t, arguments_key) for t in tools]}
    return {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS} if parallel else one


def generic_schema(tools: list[dict], required: bool, parallel: bool) -> dict:
    """The JSON a generic-format reply must be: a call (or calls), or, unless one is required, a text response."""
    key = "tool_calls" if parallel else "tool_call"
    call = {"type": "object", "properties": {key: _calls_schema(tools, parallel)}, "required": [key], "additionalProperties": False}
    if required:
        return call
    response = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"], "additionalProperties": False}
    return {"anyOf": [call, response]}


def generic_system_text(tools: list[dict], schema: dict) -> str:
    """The system text that describes the tools to a model whose template has no syntax of its own."""
    listed = json.dumps([t["function"] for t in tools], ensure_ascii=False, indent=2)
    return ("You can call these tools:\n" + listed + "\n\nRespond in JSON format, either with `tool_call` (a request to call "
            "tools) or with `response` (a reply to the user's request), following this schema:\n"
            + json.dumps(schema, ensure_ascii=False))


def native_lark(fmt: str, tools: list[dict], parallel: bool, token_id) -> str:
    """A llguidance Lark grammar that forces a call in the model's own syntax (tool_choice required or named).
    token_id(text) gives the id of a special token spelled text, or None (then it is matched as text)."""
    def literal(text: str) -> str:
        tid = token_id(text)
        return f"<[{tid}]>" if tid is not None else json.dumps(text)

    if fmt == "hermes":
        one = f'{literal("<tool_call>")} "\\n" %json {json.dumps(_calls_schema(tools, False))} "\\n" {literal("</tool_call>")}'
        return f"start: call{{1,{MAX_PARALLEL_CALLS}}}\ncall: {one} \"\\n\"?\n" if parallel else f"start: {one}\n"
    if fmt == "mistral":
        return f'start: {literal("[TOOL_CALLS]")} %json {json.dumps(_calls_schema(tools, True))}\n'
    return f"start: %json {json.dumps(_calls_schema(tools, False, 'parameters'))}\n"  # llama3


def parse_reply(text: str, fmt: str) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a reply in the given syntax; a reply that holds no well-formed call is all content."""
    calls: list[ToolCall] = []

    def add(obj: Any, arguments_key: str = "arguments") -> bool:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return False
        args = obj.get(arguments_key, obj.get("arguments", obj.get("parameters", {})))
        calls.append(ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
        return True

    stripped = text.strip()
    if fmt == "generic":
        try:
            obj = json.loads(stripped)
        except ValueError:
            return text, []
        if isinstance(obj, dict) and isinstance(obj.get("response"), str):
            return obj["response"], []
        found = obj.get("tool_calls", [obj.get("tool_call")]) if isinstance(obj, dict) else []
        if isinstance(found, list) and found and all(add(c) for c in found):
            return None, calls
        return text, []
    if fmt == "hermes":
        blocks = list(re.finditer(r"<tool_call>\s*(.*?)\s*</tool_call>", text, re.DOTALL))
        for b in blocks:
            try:
                if not add(json.loads(b.group(1))):
                    return text, []
            except ValueError:
                return text, []
        if not blocks:
            return text, []
        rest = re.sub(r"<tool_call>.*?</tool_call>", "", text, flags=re.DOTALL).strip()
        return rest or None, calls
    if fmt == "mistral":
        head, sep, tail = text.partition("[TOOL_CALLS]")
        if not sep:
            return text, []
        try:
            found = json.loads(tail.strip())
        except ValueError:
            return text, []
        if not isinstance(found, list) or not found or not all(add(c) for c in found):
            return text, []
        return head.strip() or None, calls
    body = stripped.removeprefix("<|python_tag|>").strip()  # llama3
    try:
        obj = json.loads(body)
    except ValueError:
        return text, []
    return (None, calls) if add(obj, "parameters") else (text, [])


def messages_for_generic(messages: list[dict]) -> list[dict]:
    """The history for a template without tool syntax: an assistant's calls as the JSON it answered, a
    tool's result as a user message."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": _arguments(c)} for c in m["tool_calls"]]
            content = json.dumps({"tool_calls": calls} if len(calls) > 1 else {"tool_call": calls[0]}, ensure_ascii=False)
            out.append({"role": "assistant", "content": content})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": json.dumps({"tool_response": {"id": m.get("tool_call_id"), "content": m["content"]}},
                                                              ensure_ascii=False)})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def with_argument_objects(message: dict) -> dict:
    """A message whose tool calls carry their arguments as objects, as native templates print them with tojson."""
    if not message.get("tool_calls"):
        return message
    calls = [{**c, "function": {**c.get("function", {}), "arguments": _arguments(c)}} for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def _arguments(call: dict) -> Any:
    args = call.get("function", {}).get("arguments", "{}")
    try:
        return json.loads(args) if isinstance(args, str) else args
    except ValueError:
        return args
