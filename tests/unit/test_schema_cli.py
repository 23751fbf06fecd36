"""`headroom schema`: the JSON Schema an editor checks a job spec (or the planner's jobs file) against."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import yaml

from runtime.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def _schema(capsys, *args) -> dict:
    assert main(["schema", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_demo_spec_is_valid_against_the_schema_and_a_bad_field_is_not(capsys):
    schema = _schema(capsys)
    spec = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())
    jsonschema.validate(spec, schema)
    bad = copy.deepcopy(spec)
    bad["budget"]["max_workers"] = 0
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert errors and errors[0].absolute_path == ["budget", "max_workers"] or "max_workers" in str(errors[0].path)
    typo = copy.deepcopy(spec)
    typo["serving"]["slo_p99"] = 100  # a misspelt field: the spec refuses extra fields, so does the schema
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(typo))


def test_the_jobs_file_schema_accepts_the_example_portfolio(capsys, tmp_path):
    schema = _schema(capsys, "--jobs-file")
    assert schema["title"] == "Headroom planner jobs file"
    assert main(["schema", "--jobs-file", "--out", str(tmp_path / "jobs.schema.json")]) == 0
    assert json.loads((tmp_path / "jobs.schema.json").read_text()) == schema and capsys.readouterr().out == ""
    portfolio = yaml.safe_load((ROOT / "examples" / "portfolio.yaml").read_text())
    # YAML turns an unquoted time into a datetime; an editor's language server sees the string
    jsonschema.validate(json.loads(json.dumps(portfolio, default=lambda v: v.isoformat())), schema)
