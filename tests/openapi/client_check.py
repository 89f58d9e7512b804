"""Uses a Python client generated from Drover's /v1/openapi.json
(openapi-python-client) against a live coordinator: typed submit, read,
list, nodes, and a typed problem document. Run by tests/api.rs with the
generated package on PYTHONPATH; argv: base URL, API key."""

import sys

from drover_client import AuthenticatedClient
from drover_client.api.jobs import get_job, list_jobs, submit_job
from drover_client.api.nodes import list_nodes
from drover_client.models import JobPage, JobView, Problem, SubmitJobBody, Submitted

base, key = sys.argv[1], sys.argv[2]
client = AuthenticatedClient(base_url=base, token=key)

body = SubmitJobBody.from_dict(
    {
        "name": "from python",
        "frames": {"start": 1, "end": 4},
        "fps": 24,
        "resolution": {"width": 64, "height": 64},
        "render": {"kind": "shader", "shader": "rings"},
    }
)
sub = submit_job.sync(client=client, body=body)
assert isinstance(sub, Submitted), sub

job = get_job.sync(client=client, id=sub.id)
assert isinstance(job, JobView), job
assert job.name == "from python" and job.frames_total == 4, job

page = list_jobs.sync(client=client, limit=10)
assert isinstance(page, JobPage), page
assert any(j.id == sub.id for j in page.jobs), page

nodes = list_nodes.sync(client=client)
assert isinstance(nodes, list), nodes

missing = get_job.sync(client=client, id=999999)
assert isinstance(missing, Problem), missing
assert missing.status == 404 and missing.field == "id", missing

print(f"python client ok: job {sub.id}, {len(page.jobs)} jobs listed")
