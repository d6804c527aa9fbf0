"""The published /openapi.json is the contract: schemathesis generates requests from it (valid and invalid)
and sends them to api.py over HTTP, with all of its checks: no 5xx, responses as documented, what the schema
accepts is accepted, what it forbids is refused, wrong methods get 405, the key is enforced.

The one refusal that no JSON schema can state is a prompt too long in tokens for the limits (413, like a body
over --max-body-bytes), so positive data may also get a 413.
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import PositiveDataAcceptanceConfig

pytestmark = pytest.mark.slow  # api.py as a server process, a few hundred requests

API_KEY = "schema-test-key"
EXAMPLES = 40  # per operation and mode: enough to reach every field, bounded for the slow tier


@pytest.fixture(scope="module")
def keyed_server(door_checkpoint, script_env):
    """A server that needs a key (so the schema declares it), with short answers: the fuzzer's requests may
    ask for any length up to the schema's maximum."""
    from _doors import ServerProcess, free_port

    args = ["--model", door_checkpoint, "--device", "cpu", "--api-key", API_KEY, "--max-answer-tokens", "4"]
    with ServerProcess("api.py", args, free_port(), script_env, ready_path="/health") as proc:
        yield proc


@pytest.fixture(scope="module")
def published_schema(keyed_server):
    schema = schemathesis.openapi.from_url(keyed_server.url + "/openapi.json",
                                           headers={"Authorization": f"Bearer {API_KEY}"})
    schema.config.generation.update(modes=["positive", "negative"], max_examples=EXAMPLES, deterministic=True)
    defaults = PositiveDataAcceptanceConfig().expected_statuses
    schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(expected_statuses=[*defaults, "413"])
    return schema


schema = schemathesis.pytest.from_fixture("published_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_the_schema_is_the_contract(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"})
