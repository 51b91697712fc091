"""Static tests of the deployment in infra/ (Bicep), without Azure and without the Bicep CLI.

The Bicep files are parsed with tree-sitter-bicep and scanned with checkov, both from
requirements-infra.txt. They run in the interpreter named by $INFRA_PYTHON (a separate venv keeps
checkov's pins out of the app's environment) or, when that is unset, in this interpreter.
Nothing here is skipped: a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
_INFRA_VENV = ROOT / ".venv-infra" / "bin" / "python"  # made by scripts/setup.sh --infra
INFRA_PY = os.environ.get("INFRA_PYTHON") or (str(_INFRA_VENV) if _INFRA_VENV.exists() else sys.executable)

ROLE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ROLE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
ROLE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
ROLE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
ROLE_MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
ALLOWED_ROLES = {
    ROLE_BLOB_DATA_CONTRIBUTOR,
    ROLE_BLOB_DATA_OWNER,
    ROLE_QUEUE_DATA_CONTRIBUTOR,
    ROLE_TABLE_DATA_CONTRIBUTOR,
    ROLE_MONITORING_METRICS_PUBLISHER,
}
CONTRACT_PREFIX = "/blobServices/default/containers/${fileSystemName}/blobs/AHDS/${dicomWorkspace}/dicom/${dicomService}/"
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# Runs in INFRA_PY: parses every .bicep file and prints a JSON digest of its declarations.
_DUMP = r'''
import json, pathlib, sys
import tree_sitter, tree_sitter_bicep

parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))

def text(n):
    return n.text.decode("utf-8")

def strval(n):
    """Raw content of a string literal (interpolations kept as ${...}), else the node text."""
    if n.type == "string":
        t = text(n)
        return t[1:-1] if t.startswith("'") and t.endswith("'") else t
    return text(n)

def named(n):
    return [c for c in n.children if c.is_named and c.type != "comment"]

def key_of(prop):
    k = named(prop)[0]
    return strval(k) if k.type == "string" else text(k)

def flatten(obj, prefix, out):
    for prop in named(obj):
        if prop.type != "object_property":
            continue
        parts = named(prop)
        key = key_of(prop)
        value = parts[-1]
        path = f"{prefix}.{key}" if prefix else key
        emit(value, path, out)

def emit(value, path, out):
    if value.type == "object":
        out[path] = "{object}"
        flatten(value, path, out)
    elif value.type == "array":
        items = named(value)
        out[path] = [strval(i) for i in items]
        for i, item in enumerate(items):
            emit(item, f"{path}[{i}]", out)
    else:
        out[path] = strval(value)

def body(decl):
    """(object, condition text, is_loop) of a resource/module declaration."""
    for c in decl.children:
        if c.type == "object":
            return c, None, False
        if c.type == "if_statement":
            cond = [x for x in c.children if x.type == "parenthesized_expression"][0]
            return [x for x in c.children if x.type == "object"][0], text(cond), False
        if c.type == "for_statement":
            objs = [x for x in c.children if x.type == "object"]
            if objs:
                return objs[0], None, True
            ifs = [x for x in c.children if x.type == "if_statement"][0]
            cond = [x for x in ifs.children if x.type == "parenthesized_expression"][0]
            return [x for x in ifs.children if x.type == "object"][0], text(cond), True
    raise ValueError(f"no body in {text(decl)[:80]}")

def decorators_of(node):
    prev = node.prev_named_sibling
    while prev is not None and prev.type == "comment":
        prev = prev.prev_named_sibling
    out = {}
    if prev is not None and prev.type == "decorators":
        for d in named(prev):
            call = named(d)[0]
            name = text(named(call)[0]) if call.type == "call_expression" else text(call)
            args = named(named(call)[1]) if call.type == "call_expression" else []
            if name == "allowed" and args and args[0].type == "array":
                out[name] = [strval(i) for i in named(args[0])]
            else:
                out[name] = [strval(a) for a in args]
    return out

result = {}
for path in sorted(pathlib.Path(sys.argv[1]).rglob("*.bicep")):
    tree = parser.parse(path.read_bytes())
    info = {"errors": [], "params": {}, "vars": {}, "resources": [], "modules": [], "outputs": {},
            "strings": [], "keys": [], "target_scope": None}
    stack = [(tree.root_node, False)]
    while stack:
        n, in_description = stack.pop()
        if n.is_error or n.is_missing:
            info["errors"].append([n.start_point[0] + 1, n.type])
        if n.type == "decorator" and text(n).startswith("@description("):
            in_description = True  # prose, not a value
        if n.type == "string" and not in_description:
            info["strings"].append(strval(n))
        if n.type == "object_property":
            info["keys"].append(key_of(n))
        stack.extend((c, in_description) for c in n.children)
    for decl in named(tree.root_node):
        kids = named(decl)
        if decl.type == "parameter_declaration":
            default = None
            if any(c.type == "=" for c in decl.children):
                default = strval(kids[-1])
            info["params"][text(kids[0])] = {"type": text(kids[1]), "default": default,
                                              "decorators": decorators_of(decl)}
        elif decl.type == "variable_declaration":
            value = kids[-1]
            info["vars"][text(kids[0])] = ([strval(i) for i in named(value)] if value.type == "array"
                                           else strval(value))
        elif decl.type == "output_declaration":
            info["outputs"][text(kids[0])] = {"type": text(kids[1]), "value": strval(kids[-1])}
        elif decl.type in ("resource_declaration", "module_declaration"):
            obj, cond, loop = body(decl)
            props = {}
            flatten(obj, "", props)
            entry = {"symbol": text(kids[0]), "type": strval(kids[1]), "condition": cond, "loop": loop,
                     "existing": any(c.type == "existing" for c in decl.children),
                     "line": decl.start_point[0] + 1, "props": props}
            info["resources" if decl.type == "resource_declaration" else "modules"].append(entry)
        elif decl.type == "target_scope_assignment":
            info["target_scope"] = strval(kids[-1])
    result[str(path.relative_to(sys.argv[1]))] = info
print(json.dumps(result))
'''


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def bicep() -> dict:
    proc = _run([INFRA_PY, "-c", _DUMP, str(INFRA)])
    assert proc.returncode == 0, (
        f"tree-sitter-bicep digest failed with {INFRA_PY} (install requirements-infra.txt, "
        f"or point INFRA_PYTHON at a venv that has it):\n{proc.stderr[-3000:]}"
    )
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def checkov_report() -> list[dict]:
    proc = _run(
        [INFRA_PY, "-m", "checkov.main", "-d", "infra", "--framework", "bicep", "--skip-download", "-o", "json"],
        cwd=ROOT,
    )
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"checkov gave no JSON (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return data if isinstance(data, list) else [data]


def _module(bicep: dict, file: str, symbol: str) -> dict:
    for m in bicep[file]["modules"]:
        if m["symbol"] == symbol:
            return m
    raise AssertionError(f"module {symbol} not declared in {file}")


def _resources(bicep: dict, type_prefix: str, file: str | None = None) -> list[tuple[str, dict]]:
    found = []
    for name, info in bicep.items():
        if file and name != file:
            continue
        for r in info["resources"]:
            if r["type"].split("@")[0] == type_prefix:
                found.append((name, r))
    return found


def _resource(bicep: dict, file: str, symbol: str) -> dict:
    for r in bicep[file]["resources"]:
        if r["symbol"] == symbol:
            return r
    raise AssertionError(f"resource {symbol} not declared in {file}")


def _app_settings(bicep: dict) -> dict[str, str]:
    info = bicep["modules/functionApp.bicep"]
    settings = {}
    for var in ("baseSettings", "entraTelemetrySettings"):
        value = info["vars"][var]
        items = re.findall(r"name:\s*'([^']+)'\s*value:\s*([^\n]+)", value if isinstance(value, str) else "\n".join(value))
        settings.update({k: v.strip() for k, v in items})
    return settings


# --------------------------------------------------------------------------------------------
# Parsing and checkov
# --------------------------------------------------------------------------------------------


def test_expected_bicep_files_exist(bicep):
    assert {
        "main.bicep",
        "modules/storageAccount.bicep",
        "modules/functionApp.bicep",
        "modules/eventGrid.bicep",
        "modules/storageRoleAssignments.bicep",
        "modules/monitoring.bicep",
    } <= set(bicep)


def test_bicep_parses_without_error_nodes(bicep):
    errors = [f"infra/{f}:{line}: {kind}" for f, info in bicep.items() for line, kind in info["errors"]]
    assert not errors, "tree-sitter-bicep found syntax errors:\n" + "\n".join(errors)


def test_main_is_resource_group_scoped(bicep):
    assert bicep["main.bicep"]["target_scope"] == "resourceGroup"


def test_modules_referenced_by_main_exist(bicep):
    for m in bicep["main.bicep"]["modules"]:
        assert (INFRA / m["type"]).is_file(), m["type"]


def test_checkov_reports_no_failed_check(checkov_report):
    failed, skipped, passed, parse_errors, resources = [], [], 0, 0, 0
    for report in checkov_report:
        assert report.get("check_type") == "bicep"
        summary = report["summary"]
        passed += summary["passed"]
        parse_errors += summary["parsing_errors"]
        resources += summary["resource_count"]
        failed += [f"{c['check_id']} {c['resource']} {c['file_path']}" for c in report["results"]["failed_checks"]]
        skipped += report["results"]["skipped_checks"]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert parse_errors == 0
    assert resources > 20 and passed > 10, "checkov did not really scan infra/"
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.strip()) >= 20, f"skip of {check['check_id']} has no real justification"


def test_checkov_skips_are_bicep_comments_with_reasons():
    for path in INFRA.rglob("*.bicep"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if "checkov:skip" not in line:
                continue
            assert re.fullmatch(r"\s*// checkov:skip=CKV2?_[A-Z]+_\d+: .{20,}", line), (
                f"{path}:{lineno}: write `// checkov:skip=CKV_...: reason` (a `#` line is not Bicep)"
            )


# --------------------------------------------------------------------------------------------
# Roles: exactly the allowed ones, each on the right account
# --------------------------------------------------------------------------------------------


def test_only_allowed_role_definition_ids(bicep):
    guids = {g.lower() for info in bicep.values() for s in info["strings"] for g in GUID.findall(s)}
    assert guids == ALLOWED_ROLES


def test_role_assignments_use_built_in_role_ids(bicep):
    assignments = _resources(bicep, "Microsoft.Authorization/roleAssignments")
    assert assignments
    for _file, r in assignments:
        assert r["props"]["properties.roleDefinitionId"].startswith(
            "subscriptionResourceId('Microsoft.Authorization/roleDefinitions'"
        )
        assert r["props"]["properties.principalType"] == "ServicePrincipal"


def test_each_account_gets_only_its_roles(bicep):
    main = bicep["main.bicep"]

    def roles_of(symbol: str) -> set[str]:
        m = _module(bicep, "main.bicep", symbol)
        assert m["type"] == "modules/storageRoleAssignments.bicep"
        return {main["vars"][ident] for ident in m["props"]["params.roleDefinitionIds"]}

    assert roles_of("lakeRoles") == {ROLE_BLOB_DATA_CONTRIBUTOR}
    assert roles_of("indexStorageRoles") == {ROLE_TABLE_DATA_CONTRIBUTOR}
    assert roles_of("hostStorageRoles") == {ROLE_BLOB_DATA_OWNER, ROLE_QUEUE_DATA_CONTRIBUTOR}
    publisher = _resource(bicep, "main.bicep", "appInsightsPublisher")
    assert publisher["props"]["scope"] == "appInsights"
    assert main["vars"]["roleMonitoringMetricsPublisher"] == ROLE_MONITORING_METRICS_PUBLISHER


def test_lake_roles_and_events_are_deployed_in_the_lake_resource_group(bicep):
    for symbol in ("lakeRoles", "lakeEvents"):
        assert _module(bicep, "main.bicep", symbol)["props"]["scope"] == "resourceGroup(lakeResourceGroupName)"
    assignment = _resource(bicep, "modules/storageRoleAssignments.bicep", "assignments")
    assert assignment["props"]["scope"] == "account"  # the account, not the resource group


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def test_created_storage_accounts_are_locked_down(bicep):
    accounts = [(f, r) for f, r in _resources(bicep, "Microsoft.Storage/storageAccounts") if not r["existing"]]
    assert accounts
    for _file, r in accounts:
        p = r["props"]
        assert p["kind"] == "StorageV2"
        assert p["properties.allowSharedKeyAccess"] == "false"
        assert p["properties.minimumTlsVersion"] == "TLS1_2"
        assert p["properties.allowBlobPublicAccess"] == "false"
        assert p["properties.supportsHttpsTrafficOnly"] == "true"
        assert p["properties.isHnsEnabled"] == "isHnsEnabled"


def test_new_lake_has_hierarchical_namespace_and_its_file_system(bicep):
    lake = _module(bicep, "main.bicep", "lake")
    assert lake["type"] == "modules/storageAccount.bicep"
    assert lake["condition"] == "(!useExistingLake)"
    assert lake["props"]["params.isHnsEnabled"] == "true"
    assert lake["props"]["params.containerNames"] == ["lakeFileSystemName"]
    main = bicep["main.bicep"]
    assert main["vars"]["useExistingLake"] == "lakeMode == 'existing'"
    assert main["params"]["lakeMode"]["decorators"]["allowed"] == ["new", "existing"]
    for other in ("hostStorage", "indexStorage"):
        assert "params.isHnsEnabled" not in _module(bicep, "main.bicep", other)["props"]


def test_no_archive_tier_anywhere(bicep):
    for file, info in bicep.items():
        for s in info["strings"] + info["keys"]:
            assert "archive" not in s.lower(), f"{file}: {s!r}"
    for file in ("main.bicep", "modules/storageAccount.bicep"):
        assert bicep[file]["params"]["lifecycleTier"]["decorators"]["allowed"] == ["", "Cool", "Cold"]
        assert bicep[file]["params"]["lifecycleTier"]["default"] == ""


def test_lifecycle_rule_covers_ahds_block_blobs_of_a_new_lake_only(bicep):
    rule = _resource(bicep, "modules/storageAccount.bicep", "lifecycle")
    assert rule["condition"] == "(!empty(lifecycleTier))"
    p = rule["props"]
    assert p["properties.policy.rules[0].definition.filters.prefixMatch"] == ["${lifecycleContainer}/AHDS/"]
    assert p["properties.policy.rules[0].definition.filters.blobTypes"] == ["blockBlob"]
    actions = p["properties.policy.rules[0].definition.actions.baseBlob"]
    assert "tierToCool" in actions and "tierToCold" in actions and "daysAfterModificationGreaterThan" in actions
    users = [m["symbol"] for m in bicep["main.bicep"]["modules"] if "params.lifecycleTier" in m["props"]]
    assert users == ["lake"]


def test_diagnostics_go_to_log_analytics(bicep):
    diags = _resources(bicep, "Microsoft.Insights/diagnosticSettings")
    scopes = {(f, r["props"]["scope"]) for f, r in diags}
    assert {
        ("modules/storageAccount.bicep", "blobService"),
        ("modules/storageAccount.bicep", "tableService"),
        ("modules/functionApp.bicep", "functionApp"),
    } <= scopes
    for _f, r in diags:
        assert r["props"]["properties.workspaceId"] == "logAnalyticsWorkspaceId"
    ai = _resource(bicep, "modules/monitoring.bicep", "appInsights")
    assert ai["props"]["properties.WorkspaceResourceId"] == "logAnalytics.id"


# --------------------------------------------------------------------------------------------
# Function app
# --------------------------------------------------------------------------------------------


def test_flex_consumption_plan_and_site(bicep):
    plan = _resource(bicep, "modules/functionApp.bicep", "plan")["props"]
    assert plan["sku.name"] == "FC1" and plan["sku.tier"] == "FlexConsumption"
    assert plan["properties.reserved"] == "true"
    site = _resource(bicep, "modules/functionApp.bicep", "functionApp")
    assert site["type"].split("@")[1] >= "2023-12-01"
    p = site["props"]
    assert p["kind"] == "functionapp,linux"
    assert p["identity.type"] == "SystemAssigned"
    assert p["properties.httpsOnly"] == "true"
    assert p["properties.siteConfig.minTlsVersion"] == "1.2"
    assert p["properties.siteConfig.ftpsState"] == "Disabled"
    cfg = "properties.functionAppConfig."
    assert p[cfg + "runtime.name"] == "python" and p[cfg + "runtime.version"] == "3.11"
    assert p[cfg + "deployment.storage.type"] == "blobContainer"
    assert p[cfg + "deployment.storage.authentication.type"] == "SystemAssignedIdentity"
    assert p[cfg + "scaleAndConcurrency.maximumInstanceCount"] == "maximumInstanceCount"
    assert p[cfg + "scaleAndConcurrency.instanceMemoryMB"] == "instanceMemoryMB"
    assert bicep["main.bicep"]["params"]["instanceMemoryMB"]["default"] == "2048"
    for policy in ("ftpBasicAuth", "scmBasicAuth"):
        assert _resource(bicep, "modules/functionApp.bicep", policy)["props"]["properties.allow"] == "false"


def test_app_settings_are_identity_based_and_complete(bicep):
    settings = _app_settings(bicep)
    required = {
        "AzureWebJobsStorage__credential": "'managedidentity'",
        "PYTHON_ENABLE_INIT_INDEXING": "'1'",
        "DicomLake__credential": "'managedidentity'",
        "DicomIndex__credential": "'managedidentity'",
    }
    for name, value in required.items():
        assert settings.get(name) == value, name
    for name in (
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
        "DicomLake__blobServiceUri",
        "DicomLake__dfsServiceUri",
        "DicomLake__queueServiceUri",
        "DicomIndex__tableServiceUri",
        "DICOM_FILESYSTEM",
        "DICOM_WORKSPACE",
        "DICOM_SERVICE",
        "DICOM_TABLE_PREFIX",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT",
    ):
        assert name in settings, name
    forbidden = [
        n
        for n in settings
        if n
        in {
            "FUNCTIONS_WORKER_RUNTIME",
            "WEBSITE_RUN_FROM_PACKAGE",
            "FUNCTIONS_EXTENSION_VERSION",
            "AzureWebJobsStorage",
            "DicomLake",
            "DicomIndex",
        }
        or n.startswith("WEBSITE_CONTENT")
    ]
    assert not forbidden, f"not on Flex / not identity-based: {forbidden}"
    all_text = "\n".join(p.read_text() for p in INFRA.rglob("*.bicep"))
    assert "AccountKey=" not in all_text and "listKeys(storage" not in all_text


# --------------------------------------------------------------------------------------------
# Event Grid
# --------------------------------------------------------------------------------------------


def test_event_subscriptions_filter_on_the_contract_prefix(bicep):
    eg = bicep["modules/eventGrid.bicep"]
    assert eg["vars"]["subjectPrefix"] == CONTRACT_PREFIX
    subs = {r["symbol"]: r for _f, r in _resources(bicep, "Microsoft.EventGrid/systemTopics/eventSubscriptions")}
    assert set(subs) == {"blobCreated", "blobDeleted"}
    for r in subs.values():
        assert r["condition"] == "(deploySubscriptions)"
        assert r["props"]["properties.filter.subjectBeginsWith"] == "subjectPrefix"

    created = subs["blobCreated"]["props"]
    assert created["properties.filter.includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert created["properties.filter.advancedFilters[0].operatorType"] == "StringIn"
    assert created["properties.filter.advancedFilters[0].key"] == "data.api"
    assert created["properties.filter.advancedFilters[0].values"] == "completeWriteApis"
    assert set(eg["vars"]["completeWriteApis"]) == {"PutBlob", "PutBlockList", "FlushWithClose", "CopyBlob"}
    assert created["properties.destination.endpointType"] == "WebHook"
    endpoint = eg["vars"]["blobCreatedEndpoint"] + eg["vars"]["blobsExtensionWebhook"]
    assert "/runtime/webhooks/blobs?functionName=Host.Functions.lake_blob_created" in endpoint
    assert "listKeys('${functionAppId}/host/default'" in endpoint and "systemKeys.blobs_extension" in endpoint
    assert eg["vars"]["blobCreatedEndpoint"].startswith("deploySubscriptions ?")

    deleted = subs["blobDeleted"]["props"]
    assert deleted["properties.filter.includedEventTypes"] == ["Microsoft.Storage.BlobDeleted"]
    assert deleted["properties.destination.endpointType"] == "AzureFunction"
    assert deleted["properties.destination.properties.resourceId"] == "${functionAppId}/functions/lake_blob_deleted"


def test_event_subscriptions_are_off_by_default(bicep):
    main = bicep["main.bicep"]
    assert main["params"]["deployEventSubscriptions"] == {
        "type": "bool",
        "default": "false",
        "decorators": main["params"]["deployEventSubscriptions"]["decorators"],
    }
    events = _module(bicep, "main.bicep", "lakeEvents")
    assert events["props"]["params.deploySubscriptions"] == "deployEventSubscriptions"
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["deployEventSubscriptions"]["value"] == "${DEPLOY_EVENT_SUBSCRIPTIONS=false}"


def test_system_topic_is_on_the_lake(bicep):
    topic = _resource(bicep, "modules/eventGrid.bicep", "newTopic")
    assert topic["props"]["properties.source"] == "lake.id"
    assert topic["props"]["properties.topicType"] == "Microsoft.Storage.StorageAccounts"
    assert topic["props"]["location"] == "lakeLocation"


# --------------------------------------------------------------------------------------------
# Parameters, outputs, azd
# --------------------------------------------------------------------------------------------


def test_bring_your_own_lake_parameters(bicep):
    params = bicep["main.bicep"]["params"]
    for name in ("existingLakeAccountName", "existingLakeResourceGroup", "lakeFileSystemName", "maximumInstanceCount"):
        assert name in params, name


def test_parameters_file_names_only_declared_parameters(bicep):
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = bicep["main.bicep"]["params"]
    assert set(params) <= set(declared)
    assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    missing_defaults = [n for n, p in declared.items() if p["default"] is None and n not in params]
    assert not missing_defaults, f"azd cannot fill required parameters {missing_defaults}"


def test_outputs(bicep):
    outputs = bicep["main.bicep"]["outputs"]
    assert outputs["AZURE_FUNCTION_APP_NAME"]["value"] == "functionApp.outputs.name"
    assert outputs["DICOMWEB_URL"]["value"] == "https://${functionApp.outputs.defaultHostName}/v2"
    assert outputs["DICOM_LAKE_ACCOUNT"]["value"] == "lakeName"
    assert outputs["DICOM_LAKE_FILESYSTEM"]["value"] == "lakeFileSystemName"


def test_azure_yaml_declares_the_function_service():
    text = (ROOT / "azure.yaml").read_text()
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "services:" in lines and "  api:" in lines
    api = lines[lines.index("  api:") + 1 :]
    api = api[: next((i for i, line in enumerate(api) if not line.startswith("    ")), len(api))]
    assert {"    project: .", "    language: python", "    host: function"} <= set(api)
    assert "  path: infra" in lines and "  module: main" in lines
