"""The new-run form, built from the recipe schema, and the check behind it.

Every form field is a key of ``tunelab.recipe.Recipe`` read from pydantic's JSON schema (its description is the help
text), so a key added to the recipe shows up in the form with no change here. A run is always a base recipe file
plus ``--set KEY=VALUE`` overrides: the keys the user changed. The form's check runs them through the same code as
``tunelab train`` (``set_override``, then ``Recipe`` validation) and maps each pydantic error back to its field, so the
page shows the error where it belongs and the command preview is the very command that will run.

Strategy and task are tagged unions (``strategy.method``, ``task.type``): their fields are shown for the chosen tag
only, and changing the tag replaces the whole section (``--set strategy={...}``), since the old method's keys would be
unknown keys of the new one.
"""

from __future__ import annotations

import json
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunelab.errors import RecipeError
from tunelab.recipe import Recipe, _check_shape, _yaml_float, read_recipe_file, set_override

# Keys shown open; every other key is folded away under "advanced" in its section.
ESSENTIAL = {"name", "model.name", "task.type", "data.dataset", "data.train", "data.columns", "data.limit",
             "strategy.method", "train.lr", "train.epochs", "train.max_steps", "train.batch_size", "train.eval_every",
             "eval.metric"}
UNIONS = {"strategy": "method", "task": "type"}
HIDDEN = {"output.dir"}  # the app sets it: runs go where the app looks for them
SECTIONS = ["run", "model", "task", "data", "strategy", "train", "eval", "optim", "generate", "output"]


@lru_cache(maxsize=1)
def fields() -> list[dict[str, Any]]:
    """One entry per recipe key: path, kind (text, bool, choice, yaml), choices, default, help, advanced, and
    ``when`` ({tag path: [tags]}) for the keys of one strategy method or task type."""
    schema = Recipe.model_json_schema()
    found: list[dict[str, Any]] = []
    _walk(schema, schema["$defs"], "", None, found)
    return found


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _walk(node: dict[str, Any], defs: dict[str, Any], prefix: str, when: dict | None, out: list[dict]) -> None:
    for key, prop in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if path in HIDDEN or (when and path in when):
            continue
        if "discriminator" in prop:
            tag = prop["discriminator"]["propertyName"]
            mapping: dict[str, str] = prop["discriminator"]["mapping"]
            default = Recipe.model_fields[key].get_default(call_default_factory=True)
            out.append(_leaf(f"{path}.{tag}", {"enum": sorted(mapping), "default": getattr(default, tag),
                                               "description": f"Which {key} to use; its options follow."}, when))
            for ref in dict.fromkeys(mapping.values()):
                tags = sorted(t for t, r in mapping.items() if r == ref)
                _walk(_resolve({"$ref": ref}, defs), defs, f"{path}.", {f"{path}.{tag}": tags}, out)
            continue
        options = [_resolve(o, defs) for o in prop.get("anyOf", [])]
        nested = [o for o in [_resolve(prop, defs), *options] if o.get("type") == "object" and "properties" in o]
        section = nested[0] if nested else None
        if section is not None:  # a nested section (model, data.split, task.head, train.early_stopping)
            _walk(section, defs, f"{path}.", when, out)
        else:
            out.append(_leaf(path, prop, when))


def _leaf(path: str, prop: dict[str, Any], when: dict | None) -> dict[str, Any]:
    options = prop.get("anyOf", [prop])
    types = {o.get("type") for o in options} - {None, "null"}
    enum = next((o["enum"] for o in options if "enum" in o), None)
    nullable = any(o.get("type") == "null" for o in options)
    kind = ("choice" if enum else "bool" if types == {"boolean"} else
            "yaml" if types & {"array", "object"} else "text")
    limits = [f"{sign} {o[k]}" for o in options for k, sign in
              (("exclusiveMinimum", ">"), ("minimum", "≥"), ("exclusiveMaximum", "<"), ("maximum", "≤")) if k in o]
    default = prop.get("default")
    help_parts = [prop.get("description", ""), ", ".join(limits), "YAML, e.g. [a, b] or {key: value}" if kind == "yaml"
                  else "", "may be empty (none)" if nullable else ""]
    section = path.split(".")[0] if "." in path else "run"
    return {"path": path, "kind": kind, "choices": [str(e) for e in enum] if enum else None,
            "default": "" if default is None and "default" not in prop else as_text(default),
            "help": " · ".join(p for p in help_parts if p), "when": when,
            # a chosen method's own keys stay open: picking a method is asking for its options
            "advanced": path not in ESSENTIAL and not path.startswith("strategy."),
            "section": section, "is_string": types == {"string"} and not enum}


def as_text(value: Any) -> str:
    """A recipe value as the form shows it (and as ``--set`` would write it back)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _get(raw: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return False, None
        raw = raw[part]
    return True, raw


def base_texts(raw: dict[str, Any]) -> dict[str, str]:
    """The form's starting values: every key the base recipe sets, as text."""
    texts = {}
    for field in fields():
        found, value = _get(raw, field["path"])
        if found and (field["kind"] == "yaml" or not isinstance(value, dict)):
            texts[field["path"]] = as_text(value)
    return texts


def read_base(path: str | None) -> dict[str, Any]:
    """The base recipe as a raw mapping ({} for none); a bad file is a RecipeError naming it."""
    if not path:
        return {}
    raw = read_recipe_file(Path(path).expanduser())
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections (model, data, ...)")
    return raw


def _yaml_value(field: dict[str, Any], text: str) -> str:
    """The ``--set`` value for a field's text: empty means none (null); a string that YAML would read as something
    else (a number, true, a date) is quoted so the recipe gets the string."""
    if text.strip() == "":
        return "null"
    if field["is_string"]:
        try:
            if yaml.safe_load(text) != text:
                return json.dumps(text)
        except yaml.YAMLError:
            return json.dumps(text)
    return text


def overrides(raw: dict[str, Any], values: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The ``--set`` list for the form's values against the base (only what changed), and per-field errors of
    values that are not even YAML."""
    by_path = {f["path"]: f for f in fields()}
    base = base_texts(raw)
    sets: list[str] = []
    errors: dict[str, str] = {}
    replaced = set()
    for section, tag in UNIONS.items():
        tag_path = f"{section}.{tag}"
        chosen = values.get(tag_path) or base.get(tag_path) or by_path[tag_path]["default"]
        if chosen == (base.get(tag_path) or by_path[tag_path]["default"]):
            replaced.add(tag_path)  # unchanged: no --set for the tag, and its own keys go one by one
            continue
        whole: dict[str, Any] = {tag: chosen}
        for path, text in values.items():
            field = by_path.get(path)
            if not path.startswith(f"{section}.") or path == tag_path or not text.strip() or not field:
                continue
            if field["when"] and chosen not in field["when"].get(tag_path, [chosen]):
                continue
            try:
                value = yaml.safe_load(_yaml_value(field, text))
            except yaml.YAMLError:
                errors[path] = "not valid YAML; quote it"
                continue
            node = whole
            *parents, last = path.split(".")[1:]
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        sets.append(f"{section}={json.dumps(whole)}")
        replaced.add(section)
    for path, text in values.items():
        field = by_path.get(path)
        if field is None or path.split(".")[0] in replaced or path in replaced or text == base.get(path, ""):
            continue
        sets.append(f"{path}={_yaml_value(field, text)}")
    return sets, errors


def validate(raw: dict[str, Any], sets: list[str]) -> dict[str, str]:
    """Errors by field path ('' for the whole recipe, a section name for a section) of the base plus overrides,
    exactly as ``tunelab train`` would judge them."""
    errors: dict[str, str] = {}
    try:
        _check_shape(raw, "recipe")
        raw = _yaml_float(json.loads(json.dumps(raw, default=str)))
    except RecipeError as err:
        return {"": str(err)}
    for assignment in sets:
        try:
            set_override(raw, assignment)
        except RecipeError as err:
            errors[assignment.split("=", 1)[0]] = str(err)
    try:
        Recipe.model_validate(raw)
    except ValidationError as err:
        for e in err.errors():
            path = _field_of(e["loc"])
            if e["type"].startswith("union_tag_") and path in UNIONS:  # an unknown method or type: at its select
                path = f"{path}.{UNIONS[path]}"
            errors.setdefault(path, e["msg"].removeprefix("Value error, "))
    return errors


def _field_of(loc: tuple) -> str:
    """A pydantic error location as a form path: the union tag pydantic adds (strategy.lora.r) and validator
    wrappers dropped; a location below any field (a list item) goes to its field."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and "[" in p)]
    if len(parts) > 1 and parts[0] in UNIONS:
        mapping = {f["path"] for f in fields() if f["path"].startswith(f"{parts[0]}.")}
        if ".".join(parts[:2]) not in mapping and not any(m.startswith(".".join(parts[:2]) + ".") for m in mapping):
            parts = [parts[0], *parts[2:]]
    known = {f["path"] for f in fields()}
    while parts and ".".join(parts) not in known and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def command(base: str, sets: list[str], out: str, name: str) -> list[str]:
    """The ``tunelab train`` arguments for a run: base recipe, overrides, the app's output folder, the run name."""
    return ["train", base, *[a for s in sets for a in ("--set", s)], "--set", f"output.dir={out}", "--name", name]


def shown(argv: list[str]) -> str:
    """The command as a person would type it."""
    return "tunelab " + shlex.join(argv)
