"""Checks an OpenAPI document, then real answers against it, for tests/control.rs.

    check.py SPEC < answers.jsonl

SPEC is validated with openapi-spec-validator. Each line of stdin is an answer
{"method", "path" (the template, as in the document), "status", "body"}; its body is
validated against the schema the document gives for that status (or "default"), with
openapi-schema-validator. A line {"webhook": name, "body"} is a call sigmahub made to the
application's backend, validated against that webhook's request body; a line
{"webhook": name, "answer"} is a backend's answer, validated against its 200 response.
Prints one line per failure and exits 1 if any.
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
    if "webhook" in answer:
        operation = spec["webhooks"][answer["webhook"]]["post"]
        if "body" in answer:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            instance, what = answer["body"], "call"
        else:
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            instance, what = answer["answer"], "answer"
        full = dict(schema)
        full["components"] = spec["components"]
        checked += 1
        for error in OAS31Validator(full).iter_errors(instance):
            print(f"webhook {answer['webhook']} {what}: {error.message}: {instance}")
            failures += 1
        continue
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
