"""Import of Agent Data Protocol trajectories (ADP 1.0.0 to 1.5.0, neulab/agent-data-protocol).

One ADP `Trajectory` object per record: `{schema_version, id, content: [action | observation],
details, available_custom_tools?, available_code_languages?, available_apis? (before 1.5.0)}`.
Validation follows ADP's pydantic models (extra fields forbidden on trajectory, actions and
observations) and raises `RecordError` with the exact field path, e.g. `content[3].class_`.

What the versions change (read from ADP's schema/SCHEMA.md and schema/trajectory.py; each version
still accepts the data of the ones before it):

  1.0.0-1.2.0  actions and observations may carry `tool_call_id`; an observation's id must match an
               earlier action's, each id is used by one action and answered by exactly one
               observation; an unlinked observation belongs to the action right before it
  1.3.0        a tool action (api_action / code_action) directly followed by an observation must
               carry a tool_call_id (adjacency alone no longer links them)
  1.4.0        `available_code_languages`: when present, exactly the set of code_action languages
  1.5.0        `available_apis` is renamed `available_custom_tools` (tools are declared per dataset
               in metadata.json, which is not part of a record)

ADP's current model accepts `available_custom_tools` and `available_code_languages` whatever a
record's version, and so does this importer (a converter stamping an older version still imports;
the languages must then match too); the 1.3.0 and 1.5.0 rules, which require or forbid something
older data did not, apply from their version on. Differences, on
purpose: a missing `schema_version` is read as the current 1.5.0 (as ADP does) and counted in
`notes`; `description` is optional everywhere; `CodeAction.language` is any printable non-empty
string (ADP's ~300-name list is not copied); TextObservation `source` is pinned to the current
values {user, agent, environment}; a `json_observation` class seen on one ADP commit is not part of
any released Trajectory and is rejected as an unknown class.

Mapping to an `EnvSample` (turn order = content order):

  MessageAction          assistant turn: [think block][description "\\n\\n"]content
  ApiAction / CodeAction assistant turn [think block][description] (only if either is non-empty),
                         then a tool_call turn: name = ApiAction.function, or for CodeAction
                         execute_ipython_cell (python, py, python3, ipython), execute_bash (bash, sh,
                         shell, console, commandline, zsh) or execute_<language>; content =
                         json.dumps(kwargs, ensure_ascii=False) (the record's key order) or the code.
  think block            "<|think|>" reasoning_content "<|end_think|>" (rendered with the think tokens)
  TextObservation        source user -> user turn, agent -> assistant turn, environment -> observation
                         turn named after the linked action's tool (by tool_call_id, else the action
                         right before it), else its `name`, else "environment"; `name` is kept as the
                         turn name for user / agent turns.
  ImageObservation       the annotation texts, one per line as "text (element_type)", by source as
                         above; the image itself cannot be represented and is counted in `notes`
  WebObservation         observation turn (tool of the linked action, else "browser"):
                         "URL: url" line, then axtree (html only when there is no axtree), then the
                         embedded image's annotation texts; html next to an axtree and images counted.
  reward                 the outcome reward is the last non-null `reward` of any content item.

Error flag rule (`observation_failed`): an environment observation linked to a tool call marks that
tool_call turn error=True when its text contains a line starting with
"Traceback (most recent call last):", or reports a non-zero "exit code N" / "exit status N" /
"exit_code=N", or its first non-blank line starts with "<Something>Error:", "<Something>Exception:",
"ERROR:" or "error:".
"""

from __future__ import annotations

import collections
import json
import re
from typing import Any, Optional

from agentic_jax.data.schema import (EnvSample, RecordError, Turn, _get, _name, _number, _unknown,
                                     describe)

ADP_VERSIONS = ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0")
ADP_DEFAULT_VERSION = "1.5.0"   # ADP reads a record without schema_version as its current version
LINKS_REQUIRED_FROM = (1, 3, 0)   # a tool action directly followed by an observation needs an id
CUSTOM_TOOLS_FROM = (1, 5, 0)     # available_apis renamed available_custom_tools
ACTION_CLASSES = ("api_action", "code_action", "message_action")
OBSERVATION_CLASSES = ("text_observation", "image_observation", "web_observation")
CLASSES = ACTION_CLASSES + OBSERVATION_CLASSES
SOURCES = ("user", "agent", "environment")
_TOP_FIELDS = {"schema_version", "id", "content", "details", "available_custom_tools",
               "available_code_languages"}
_OLD_TOP_FIELDS = _TOP_FIELDS | {"available_apis"}   # versions before CUSTOM_TOOLS_FROM
_ACTION_BASE = {"class_", "reasoning_content", "reward", "tool_call_id"}
_OBS_BASE = {"class_", "tool_call_id", "reward"}
_FIELDS = {
    "api_action": _ACTION_BASE | {"function", "kwargs", "description"},
    "code_action": _ACTION_BASE | {"language", "content", "description"},
    "message_action": _ACTION_BASE | {"content", "description"},
    "text_observation": _OBS_BASE | {"content", "source", "name"},
    "image_observation": _OBS_BASE | {"content", "annotations", "source"},
    "web_observation": _OBS_BASE | {"html", "axtree", "url", "image_observation", "viewport_size"},
}
_PYTHON = ("python", "py", "python3", "ipython")
_SHELL = ("bash", "sh", "shell", "console", "commandline", "zsh")
_NONE = type(None)
_SOURCE_ROLE = {"user": "user", "agent": "assistant", "environment": "observation"}

_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):", re.M)
_EXIT = re.compile(r"exit[ _](?:code|status)\W{0,3}(-?\d+)", re.I)
_ERROR_PREFIX = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception)|ERROR|error)\s*:")


def observation_failed(text: str) -> bool:
  """The documented error rule for a tool's output (module doc)."""
  if _TRACEBACK.search(text):
    return True
  # compared as text: int() refuses numbers over 4,300 digits, and "-0" / "000" are still 0
  if any(m.group(1).lstrip("-").strip("0") for m in _EXIT.finditer(text)):
    return True
  first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
  return bool(_ERROR_PREFIX.match(first))


def code_tool_name(language: str) -> str:
  if language.lower() in _PYTHON:
    return "execute_ipython_cell"
  if language.lower() in _SHELL:
    return "execute_bash"
  return f"execute_{language}"


def _think(item: dict, where: str, file: str, line: int) -> str:
  reasoning = _get(item, "reasoning_content", (str, _NONE), where, file, line, required=False)
  description = _get(item, "description", (str, _NONE), where, file, line, required=False)
  out = f"<|think|>{reasoning}<|end_think|>" if reasoning else ""
  return out + (description or "")


def _annotation_lines(obj: dict, where: str, file: str, line: int) -> list[str]:
  """Texts of an image observation's annotations (extra annotation keys are allowed, as in ADP)."""
  anns = _get(obj, "annotations", (list, _NONE), where, file, line, required=False) or []
  lines = []
  for j, a in enumerate(anns):
    aw = f"{where}annotations[{j}]"
    if not isinstance(a, dict):
      raise RecordError(file, line, aw, f"expected an object, got {describe(a)}")
    etype = _get(a, "element_type", str, aw + ".", file, line)
    box = _get(a, "bounding_box", dict, aw + ".", file, line)
    for k in ("x", "y", "width", "height"):
      _get(box, k, (int, float), f"{aw}.bounding_box.", file, line)
    text = _get(a, "text", (str, _NONE), aw + ".", file, line, required=False)
    if text:
      lines.append(f"{text} ({etype})")
  return lines


def _image_text(obj: dict, where: str, file: str, line: int, notes) -> str:
  _get(obj, "content", str, where, file, line, expected="a string (image path)")
  notes["image_observation: image pixels not represented"] += 1
  return "\n".join(_annotation_lines(obj, where, file, line))


def _nested_image(obj: dict, where: str, file: str, line: int, notes) -> str:
  _unknown(obj, _FIELDS["image_observation"], where, file, line)
  cls = _get(obj, "class_", str, where, file, line, required=False)
  if cls is not None and cls != "image_observation":
    raise RecordError(file, line, f"{where}class_", f"expected 'image_observation', got {cls!r}")
  source = _get(obj, "source", str, where, file, line, expected=f"one of {list(SOURCES)}")
  if source not in SOURCES:
    raise RecordError(file, line, f"{where}source", f"expected one of {list(SOURCES)}, got {source!r}")
  return _image_text(obj, where, file, line, notes)


def _web_text(obj: dict, where: str, file: str, line: int, notes) -> str:
  url = _get(obj, "url", (str, _NONE), where, file, line, required=False)
  axtree = _get(obj, "axtree", (str, _NONE), where, file, line, required=False)
  html = _get(obj, "html", (str, _NONE), where, file, line, required=False)
  image = _get(obj, "image_observation", (dict, _NONE), where, file, line, required=False)
  size = _get(obj, "viewport_size", (list, _NONE), where, file, line, required=False)
  if size is not None and (len(size) != 2 or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in size)):
    raise RecordError(file, line, f"{where}viewport_size", f"expected [width, height] integers or "
                      f"null, got {describe(size)}")
  parts = [f"URL: {url}"] if url else []
  if axtree:
    parts.append(axtree)
    if html:
      notes["web_observation: html not used (axtree kept)"] += 1
  elif html:
    parts.append(html)
  if image is not None:
    text = _nested_image(image, f"{where}image_observation.", file, line, notes)
    if text:
      parts.append(text)
  return "\n".join(parts)


def _kwargs_text(kwargs: dict, where: str, file: str, line: int) -> str:
  """The call's arguments as the tool_call text. The reader has checked decoded JSON already; this
  guards direct callers against what json.dumps or the tokenizer cannot take."""
  try:
    text = json.dumps(kwargs, ensure_ascii=False)
    text.encode("utf-8")
  except RecursionError:
    raise RecordError(file, line, f"{where}kwargs", "nested too deeply") from None
  except UnicodeEncodeError as e:
    raise RecordError(file, line, f"{where}kwargs", "invalid text: lone surrogate at character "
                      f"{e.start} of the arguments as JSON") from None
  except (TypeError, ValueError) as e:  # not JSON data, or an int over 4,300 digits
    raise RecordError(file, line, f"{where}kwargs", f"not JSON data: {e}") from None
  return text


def _version(obj: dict, file: str, line: int, notes) -> tuple[str, tuple[int, ...]]:
  version = _get(obj, "schema_version", str, "", file, line, required=False)
  if version is None:
    notes[f"schema_version missing (read as {ADP_DEFAULT_VERSION})"] += 1
    version = ADP_DEFAULT_VERSION
  elif version not in ADP_VERSIONS:
    raise RecordError(file, line, "schema_version",
                      f"unsupported ADP version {version!r}; supported: {list(ADP_VERSIONS)}")
  return version, tuple(int(x) for x in version.split("."))


def _top_level(obj: dict, version: str, vt: tuple, file: str, line: int) -> dict:
  """Checks the trajectory's own fields; returns `details`."""
  if vt >= CUSTOM_TOOLS_FROM and "available_apis" in obj:
    raise RecordError(file, line, "available_apis", f"renamed available_custom_tools in ADP "
                      f"{'.'.join(map(str, CUSTOM_TOOLS_FROM))} (this record: {version})")
  _unknown(obj, _TOP_FIELDS if vt >= CUSTOM_TOOLS_FROM else _OLD_TOP_FIELDS, "", file, line,
           f" in ADP {version}")
  details = _get(obj, "details", dict, "", file, line, required=False) or {}
  for key in ("available_apis", "available_custom_tools", "available_code_languages"):
    names = _get(obj, key, (list, _NONE), "", file, line, required=False) or []
    for j, n in enumerate(names):
      if not isinstance(n, str):
        raise RecordError(file, line, f"{key}[{j}]", f"expected a string, got {describe(n)}")
  return details


def _check_links(content: list, calls: dict, answered: dict, vt: tuple, version: str, file: str,
                 line: int) -> None:
  """The tool_call_id rules that need the whole trajectory (module doc)."""
  if vt >= LINKS_REQUIRED_FROM:
    for i in range(len(content) - 1):
      item, nxt = content[i], content[i + 1]
      if (item.get("class_") in ("api_action", "code_action") and item.get("tool_call_id") is None
          and nxt.get("class_") in OBSERVATION_CLASSES):
        raise RecordError(file, line, f"content[{i}].tool_call_id", "missing; a tool action "
                          "followed by its observation needs one from ADP "
                          f"{'.'.join(map(str, LINKS_REQUIRED_FROM))} on (this record: {version}; "
                          "older versions linked by adjacency)")
  for call_id, (i, _, _) in calls.items():
    if call_id not in answered:
      raise RecordError(file, line, f"content[{i}].tool_call_id", f"{call_id!r} has no observation "
                        "with the same tool_call_id")


def _check_languages(obj: dict, content: list, file: str, line: int) -> None:
  listed = obj.get("available_code_languages")
  if listed is None:
    return
  used = {item["language"] for item in content if item.get("class_") == "code_action"}
  missing, unused = sorted(used - set(listed)), sorted(set(listed) - used)
  if missing:
    raise RecordError(file, line, "available_code_languages", f"lacks {missing}, used by "
                      "code_action items (it must list exactly the languages used)")
  if unused:
    raise RecordError(file, line, "available_code_languages", f"lists {unused}, used by no "
                      "code_action item (it must list exactly the languages used)")


def parse_adp_record(obj: Any, *, file: str = "<memory>", line: int = 0,
                     source: Optional[str] = None,
                     notes: Optional[collections.Counter] = None) -> EnvSample:
  """Validates one decoded ADP trajectory and converts it (module doc). `source` names the
  sample's source (default: `details.dataset`, else "adp"); `notes` counts what was not represented."""
  notes = notes if notes is not None else collections.Counter()
  if not isinstance(obj, dict):
    raise RecordError(file, line, "<record>", f"expected a JSON object, got {describe(obj)}")
  version, vt = _version(obj, file, line, notes)
  details = _top_level(obj, version, vt, file, line)
  sid = _name(obj, "id", "", file, line)
  content = _get(obj, "content", list, "", file, line)
  if not content:
    raise RecordError(file, line, "content", "expected at least one action or observation")
  if source is None:
    dataset = details.get("dataset")
    source = dataset if isinstance(dataset, str) and dataset and dataset.isprintable() else "adp"

  turns: list[Turn] = []
  calls: dict[str, tuple[int, int, str]] = {}   # tool_call_id -> (content index, turn index, tool)
  answered: dict[str, int] = {}                 # tool_call_id -> content index of its observation
  previous_call: Optional[tuple[int, str]] = None  # (turn index, tool) of the item just before
  reward: Optional[float] = None
  for i, item in enumerate(content):
    where = f"content[{i}]."
    if not isinstance(item, dict):
      raise RecordError(file, line, f"content[{i}]", f"expected an object, got {describe(item)}")
    cls = _get(item, "class_", str, where, file, line, expected=f"one of {list(CLASSES)}")
    if cls not in CLASSES:
      raise RecordError(file, line, f"{where}class_", f"unknown class {cls!r}; expected one of "
                        f"{list(CLASSES)}")
    _unknown(item, _FIELDS[cls], where, file, line)
    r = _number(item.get("reward"), f"{where}reward", file, line)
    reward = r if r is not None else reward
    call_id = _get(item, "tool_call_id", (str, _NONE), where, file, line, required=False)
    this_call = None
    if cls in ACTION_CLASSES:
      thought = _think(item, where, file, line)
      if cls == "message_action":
        if call_id is not None:
          raise RecordError(file, line, f"{where}tool_call_id",
                            "a message_action is not a tool call and cannot have a tool_call_id")
        text = _get(item, "content", str, where, file, line)
        if thought and not thought.endswith("<|end_think|>"):
          thought += "\n\n"
        turns.append(Turn("assistant", thought + text))
      else:
        if cls == "api_action":
          tool = _name(item, "function", where, file, line)
          call = _kwargs_text(_get(item, "kwargs", dict, where, file, line), where, file, line)
        else:
          tool = code_tool_name(_name(item, "language", where, file, line))
          call = _get(item, "content", str, where, file, line)
        if thought:
          turns.append(Turn("assistant", thought))
        turns.append(Turn("tool_call", call, tool))
        this_call = (len(turns) - 1, tool)
        if call_id is not None:
          if call_id in calls:
            raise RecordError(file, line, f"{where}tool_call_id", f"duplicate tool_call_id "
                              f"{call_id!r} (also content[{calls[call_id][0]}])")
          calls[call_id] = (i, len(turns) - 1, tool)
    else:
      linked = previous_call
      if call_id is not None:
        if call_id not in calls:
          raise RecordError(file, line, f"{where}tool_call_id", f"{call_id!r} does not match any "
                            "preceding action's tool_call_id")
        if call_id in answered:
          raise RecordError(file, line, f"{where}tool_call_id", f"second observation for "
                            f"{call_id!r} (first: content[{answered[call_id]}])")
        answered[call_id] = i
        linked = calls[call_id][1:]
      if cls == "web_observation":
        role, name = "observation", (linked[1] if linked else "browser")
        text = _web_text(item, where, file, line, notes)
      else:
        src = _get(item, "source", str, where, file, line, expected=f"one of {list(SOURCES)}")
        if src not in SOURCES:
          raise RecordError(file, line, f"{where}source",
                            f"expected one of {list(SOURCES)}, got {src!r}")
        role = _SOURCE_ROLE[src]
        if cls == "text_observation":
          # "" is as good as null here (ADP converters write both); anything else is a name
          name = _get(item, "name", (str, _NONE), where, file, line, required=False) or None
          name = name and _name(item, "name", where, file, line)
          text = _get(item, "content", str, where, file, line)
        else:
          name, text = None, _image_text(item, where, file, line, notes)
        if role == "observation":
          name = linked[1] if linked else (name or "environment")
        else:
          linked = None  # a user / agent message is not the result of the call
      if cls != "text_observation" and not text:
        notes[f"{cls}: no text to represent (item dropped)"] += 1
      else:
        turns.append(Turn(role, text, name or None))
        if linked is not None and observation_failed(text):
          k, tool = linked
          turns[k] = Turn("tool_call", turns[k].content, tool, True)
    previous_call = this_call
  _check_links(content, calls, answered, vt, version, file, line)
  _check_languages(obj, content, file, line)
  if not turns:
    raise RecordError(file, line, "content", "no representable text in any item (images only?)")
  return EnvSample(sid, source, tuple(turns), reward)
