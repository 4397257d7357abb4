#!/usr/bin/env python3
"""Writes docs/crds.md, the CRD reference, from the generated CRDs in charts/policyserve/crds/.

The descriptions are the `///` comments on the Rust types in crds/src (the same text
`kubectl explain` shows), so the reference follows the types: `make crds` regenerates the
YAML from the types, `make docs` this page from the YAML, and `make lint` (--check) fails when
the page is stale.

    scripts/gen-crd-docs.py            # write docs/crds.md
    scripts/gen-crd-docs.py --check    # exit 1 when docs/crds.md is not up to date
"""

import argparse
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRD_DIR = ROOT / "charts" / "policyserve" / "crds"
OUTPUT = ROOT / "docs" / "crds.md"

# Kinds in reading order: the one users write first.
ORDER = ["PolicyService", "OptimizationProfile"]

# Fields whose inner structure is a standard Kubernetes type, documented elsewhere.
STANDARD = {
    "conditions": "a list of metav1.Condition (type, status, reason, message, observedGeneration, "
    "lastTransitionTime); see [conditions.md](conditions.md)",
}


def one_line(text):
    """A description as one Markdown table cell."""
    return " ".join((text or "").split()).replace("|", "\\|")


def type_of(schema):
    if "enum" in schema:
        return "enum: " + ", ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"[]{type_of(schema.get('items', {}))}"
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    if kind == "object" and "additionalProperties" in schema:
        return f"map[string]{type_of(schema['additionalProperties'])}"
    if kind is None and schema.get("x-kubernetes-preserve-unknown-fields"):
        return "any"
    return kind or "object"


def number(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def constraints(schema):
    notes = []
    if "default" in schema:
        notes.append(f"default `{json.dumps(schema['default'], sort_keys=True)}`")
    for key, word in [("minimum", "≥"), ("maximum", "≤")]:
        if key in schema:
            notes.append(f"{word} {number(schema[key])}")
    for key, word in [("minLength", "min length"), ("maxLength", "max length"),
                      ("minItems", "min items"), ("maxItems", "max items"),
                      ("minProperties", "min fields")]:
        if key in schema:
            notes.append(f"{word} {schema[key]}")
    if "pattern" in schema:
        notes.append(f"pattern `{schema['pattern']}`")
    for rule in schema.get("x-kubernetes-validations", []):
        notes.append(f"rule: {rule.get('message') or rule['rule']}")
    return "; ".join(notes).replace("|", "\\|")


def rows(schema, path, required=False):
    """Table rows for `schema` at `path` and everything under it."""
    out = []
    if path:
        out.append((path, type_of(schema), "yes" if required else "",
                    constraints(schema), one_line(schema.get("description"))))
    name = path.rsplit(".", 1)[-1].removesuffix("[]")
    if name in STANDARD:
        out[-1] = out[-1][:4] + (one_line(schema.get("description")).rstrip(".") + "; " + STANDARD[name],)
        return out
    if schema.get("type") == "array":
        items = schema.get("items", {})
        if items.get("type") == "object" and "properties" in items:
            out.extend(rows_of_properties(items, f"{path}[]"))
        return out
    if "properties" in schema:
        out.extend(rows_of_properties(schema, path))
    return out


def rows_of_properties(schema, path):
    out = []
    needed = set(schema.get("required", []))
    for key in sorted(schema["properties"]):
        child = f"{path}.{key}" if path else key
        out.extend(rows(schema["properties"][key], child, key in needed))
    return out


def crd_section(crd):
    spec = crd["spec"]
    names = spec["names"]
    lines = [f"## {names['kind']}", ""]
    lines.append("| | |")
    lines.append("|---|---|")
    lines.append(f"| API version | `{spec['group']}/{spec['versions'][0]['name']}` |")
    lines.append(f"| scope | {spec['scope']} |")
    lines.append(f"| plural, short names | `{names['plural']}`"
                 + "".join(f", `{s}`" for s in names.get("shortNames", [])) + " |")
    lines.append("")
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        columns = version.get("additionalPrinterColumns", [])
        if columns:
            lines.append("`kubectl get` columns:")
            lines.append("")
            lines.append("| column | from | meaning |")
            lines.append("|---|---|---|")
            for column in columns:
                json_path = column["jsonPath"].replace("|", "\\|")
                lines.append(f"| {column['name']} | `{json_path}` "
                             f"| {one_line(column.get('description', ''))} |")
            lines.append("")
        for part in ["spec", "status"]:
            if part not in schema["properties"]:
                continue
            body = schema["properties"][part]
            lines.append(f"### {names['kind']} `.{part}`")
            lines.append("")
            lines.append(one_line(body.get("description")))
            lines.append("")
            lines.append("| field | type | required | constraints | description |")
            lines.append("|---|---|---|---|---|")
            for field, kind, needed, notes, description in rows_of_properties(body, ""):
                lines.append(f"| `{field}` | {kind} | {needed} | {notes} | {description} |")
            lines.append("")
    return lines


def render():
    crds = [yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))]
    crds.sort(key=lambda c: ORDER.index(c["spec"]["names"]["kind"])
              if c["spec"]["names"]["kind"] in ORDER else len(ORDER))
    lines = [
        "# CRD reference",
        "",
        "<!-- Generated by scripts/gen-crd-docs.py from charts/policyserve/crds/; do not edit. -->",
        "",
        "Every field of the two custom resources, from the CRDs the chart installs (their",
        "descriptions are the doc comments on the Rust types in `crds/src`, also shown by",
        "`kubectl explain policyservice.spec`). Nested fields are written as paths; `[]` marks a",
        "list item. Rules marked `rule:` are CEL validations, which the apiserver enforces from",
        "Kubernetes 1.25 (the operator checks the same rules itself and reports `InvalidSpec`).",
        "",
        "Conditions and reasons: [conditions.md](conditions.md). Profiles and search spaces:",
        "[profiles.md](profiles.md).",
        "",
    ]
    for crd in crds:
        lines.extend(crd_section(crd))
    return "\n".join(lines).rstrip() + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="fail when docs/crds.md differs from what would be written")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run `make docs` "
                  "(scripts/gen-crd-docs.py) and commit it", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
