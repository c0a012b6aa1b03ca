"""Checks an OpenAPI document, then real answers against it, for tests/control.rs.

    check.py SPEC < answers.jsonl

SPEC is validated with openapi-spec-validator. Each line of stdin is an answer
{"method", "path" (the template, as in the document), "status", "body"}; its body is
validated against the schema the document gives for that status (or "default"), with
openapi-schema-validator. Prints one line per failure and exits 1 if any.
"""
import json
import sys

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

spec_path = sys.argv[1]
with open(spec_path) as f:
    spec = json.load(f)
validate(spec)

failures = 0
checked = 0
for line in sys.stdin:
    if not line.strip():
        continue
    answer = json.loads(line)
    operation = spec["paths"][answer["path"]][answer["method"].lower()]
    responses = operation["responses"]
    response = responses.get(str(answer["status"])) or responses.get("default")
    if response is None:
        print(f"{answer['method']} {answer['path']}: status {answer['status']} is not documented")
        failures += 1
        continue
    if "$ref" in response:
        response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    # The document's components stay reachable as "#/components/...".
    full = dict(schema)
    full["components"] = spec["components"]
    validator = OAS31Validator(full)
    errors = list(validator.iter_errors(answer["body"]))
    checked += 1
    for error in errors:
        print(f"{answer['method']} {answer['path']} {answer['status']}: {error.message}")
        failures += 1
print(f"checked {checked} answers against {spec_path}", file=sys.stderr)
sys.exit(1 if failures else 0)
