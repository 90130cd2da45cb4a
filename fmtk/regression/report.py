"""What ``fmtk check`` says: one table of every check's expectations, JUnit XML (which GitHub
Actions, GitLab and Jenkins show as test results) and JSON."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path

from fmtk.regression.running import CheckResult, number_text
from fmtk.text import aligned

HEADER = ("recipe", "check", "figure", "expected", "got", "verdict", "seconds")


def table_rows(result: CheckResult) -> list[tuple[str, ...]]:
    """The table's rows of one check: one per expectation, then one for a failed run or a
    difference from the golden run."""
    seconds = f"{result.seconds:.1f}"
    name = (result.recipe, result.check)
    rows = [
        (*name, row.figure, row.expected, number_text(row.got), "pass" if row.passed else "FAIL", seconds)
        for row in result.rows
    ]
    if result.error is not None:
        rows.append((*name, *(("(run)", "ends") if result.loaded else ("(file)", "loads")), "failed", "FAIL",
                     seconds))  # fmt: skip
    if result.diverged is not None:
        rows.append((*name, "(golden)", "same", "differs", "FAIL", seconds))
    elif result.unrecorded is not None:
        rows.append((*name, "(golden)", "same", "none", "FAIL", seconds))
    elif result.compared:
        rows.append((*name, "(golden)", "same", "same", "pass", seconds))
    return rows


def format_table(results: Sequence[CheckResult]) -> str:
    """Every check's rows as aligned columns, then a line per failing check saying why and where its
    run folder was kept, then the count that passed."""
    table = [HEADER, *(row for result in results for row in table_rows(result))]
    lines = aligned(table, right={index for index, name in enumerate(HEADER) if name in ("got", "seconds")})
    for result in results:
        if not result.passed:  # one line per failing check: why, and where its run folder is
            kept = f" (run folder: {result.run_dir})" if result.run_dir is not None else ""
            lines.append(f"{result.recipe} ({result.check}): {'; '.join(result.failures())}{kept}")
        elif result.recipe_changes:  # the same figures from another recipe: worth a look
            lines.append(f"{result.recipe} ({result.check}): the same as its golden run, though the recipe "
                         f"differs: {', '.join(result.recipe_changes)}")  # fmt: skip
    passed = sum(result.passed for result in results)
    lines.append(f"{passed} of {len(results)} checks passed")
    return "\n".join(lines)


def junit_xml(results: Sequence[CheckResult]) -> str:
    """The results as JUnit XML: one test suite, a test case per check (class name
    ``fmtk.check.<recipe>``), a failure per check that failed with its reasons, an error per check
    whose run could not train to its end."""
    errors = sum(result.error is not None for result in results)
    failures = sum(not result.passed for result in results) - errors
    seconds = sum(result.seconds for result in results)
    counts = {"tests": str(len(results)), "failures": str(failures), "errors": str(errors),
              "time": f"{seconds:.2f}"}  # fmt: skip
    suites = ElementTree.Element("testsuites", name="fmtk check", **counts)
    suite = ElementTree.SubElement(suites, "testsuite", name="fmtk check", **counts)
    for result in results:
        recipe = result.recipe if result.loaded else Path(result.recipe).stem  # broken.py: fmtk.check.broken
        case = ElementTree.SubElement(suite, "testcase", classname=f"fmtk.check.{recipe}",
                                      name=result.check, time=f"{result.seconds:.2f}")  # fmt: skip
        if not result.passed:
            reasons = result.failures()
            tag, kind = ("error", "RecipeCheckError") if result.error else ("failure", "RecipeCheckFailed")
            failure = ElementTree.SubElement(case, tag, message=reasons[0], type=kind)
            failure.text = "\n".join(reasons + ([f"run folder: {result.run_dir}"] if result.run_dir else []))
        rows = "\n".join("  ".join(row) for row in table_rows(result))
        ElementTree.SubElement(case, "system-out").text = rows
    ElementTree.indent(suites)
    return ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(results: Sequence[CheckResult], path: Path) -> None:
    path.write_text(junit_xml(results))


def as_json(results: Sequence[CheckResult]) -> str:
    return json.dumps([result.to_dict() for result in results], indent=2)
