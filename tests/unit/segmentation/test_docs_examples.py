"""The rule examples in docs/segmentation.md are valid rules."""

import json
import re
from pathlib import Path

import pytest

from services.segmentation.domain.rules import parse_rule

DOCS = Path(__file__).resolve().parents[3] / "docs" / "segmentation.md"
_SECTION = DOCS.read_text().split("## Rule language")[1].split("\n## ")[0]
EXAMPLES = re.findall(r"```json\n(.*?)```", _SECTION, re.S)


def test_the_rule_language_section_has_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_documented_rule_parses(example):
    parse_rule(json.loads(example))
