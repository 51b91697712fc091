#!/usr/bin/env bash
# Static checks of the deployment (infra/*.bicep) without Azure or the Bicep CLI:
#   1. every .bicep file under infra/ parses with tree-sitter-bicep (no ERROR / MISSING node);
#   2. checkov (framework bicep) reports no failed check, no parsing error, and every skipped
#      check carries a `// checkov:skip=CKV_...: reason` with a reason.
#
# Usage: scripts/check_infra.sh [PYTHON]
#   PYTHON: interpreter of a venv that installed requirements-infra.txt (default: $INFRA_PYTHON,
#   else `python`). Checkov pins many libraries (packaging<24, boto3, ...): a separate venv for it
#   keeps the app's own requirements free of those pins.
set -euo pipefail

PY="${1:-${INFRA_PYTHON:-python}}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INFRA="$ROOT/infra"

if ! "$PY" -c 'import tree_sitter, tree_sitter_bicep, checkov' 2>/dev/null; then
  echo "check_infra: '$PY' lacks tree-sitter / tree-sitter-bicep / checkov; install requirements-infra.txt into it" >&2
  exit 2
fi

echo "== tree-sitter-bicep: parsing infra/**/*.bicep"
"$PY" - "$INFRA" <<'PYEOF'
import pathlib
import sys

import tree_sitter
import tree_sitter_bicep

root = pathlib.Path(sys.argv[1])
parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))
files = sorted(root.rglob("*.bicep"))
if not files:
    print(f"no .bicep files under {root}")
    sys.exit(1)
bad = 0
for path in files:
    tree = parser.parse(path.read_bytes())
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            bad += 1
            kind = "ERROR" if node.is_error else f"MISSING {node.type}"
            snippet = node.text.decode("utf-8", "replace").splitlines()[0][:60] if node.text else ""
            print(f"{path}:{node.start_point[0] + 1}:{node.start_point[1] + 1}: {kind} near {snippet!r}")
        stack.extend(node.children)
print(f"{len(files)} files parsed, {bad} error nodes")
sys.exit(1 if bad else 0)
PYEOF

echo "== checkov --framework bicep"
REPORT="$(mktemp)"
trap 'rm -f "$REPORT"' EXIT
# --skip-download: no network (no Prisma Cloud guidelines); checkov exits non-zero on a failed
# check, the JSON below is the judge.
( cd "$ROOT" && "$PY" -m checkov.main -d infra --framework bicep --skip-download -o json ) >"$REPORT" 2>/dev/null || true

"$PY" - "$REPORT" <<'PYEOF'
import json
import sys

try:
    data = json.load(open(sys.argv[1]))
except ValueError:
    print("checkov produced no JSON report:")
    print(open(sys.argv[1]).read()[:2000])
    sys.exit(1)
reports = data if isinstance(data, list) else [data]
failed = skipped = passed = parse_errors = resources = 0
problems = []
for report in reports:
    summary = report.get("summary", {})
    passed += summary.get("passed", 0)
    parse_errors += summary.get("parsing_errors", 0)
    resources += summary.get("resource_count", 0)
    results = report.get("results", {})
    for check in results.get("failed_checks", []):
        failed += 1
        lines = check.get("file_line_range") or ["?", "?"]
        problems.append(f"FAILED {check['check_id']} {check.get('check_name', '')}: "
                        f"{check['resource']} infra{check['file_path']}:{lines[0]}-{lines[1]}")
    for check in results.get("skipped_checks", []):
        skipped += 1
        reason = (check.get("check_result") or {}).get("suppress_comment", "").strip()
        print(f"skipped {check['check_id']} on {check['resource']}: {reason}")
        if len(reason) < 20:
            problems.append(f"SKIP WITHOUT REASON {check['check_id']} on {check['resource']} infra{check['file_path']}")
    for err in results.get("parsing_errors", []) if isinstance(results.get("parsing_errors"), list) else []:
        problems.append(f"PARSING ERROR {err}")
if parse_errors:
    problems.append(f"{parse_errors} file(s) checkov could not parse")
if resources == 0:
    problems.append("checkov saw no resources (did it parse infra/ at all?)")
for p in problems:
    print(p)
print(f"checkov: {passed} passed, {failed} failed, {skipped} skipped, {parse_errors} parsing errors, {resources} resources")
sys.exit(1 if problems else 0)
PYEOF
echo "check_infra: OK"
