"""Write the JSON Schema of report.json: ``python -m lepton.pipeline.schema > docs/report.schema.json``."""

from __future__ import annotations

import json
import sys

from lepton.pipeline.report import json_schema


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
