"""End to end with the `openai` SDK: fine-tuning jobs from an uploaded JSONL file, on the virtual clock,
producing an `ft:` model that chat accepts until `client.models.delete` removes it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from mockserver.app import make_app
from mockserver.settings import MockSettings
from tests.http import conforms
from tests.mockserver.engine.test_control import advance
from tests.servers import ServerThread

EXAMPLES = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer {i}."}]} for i in range(5)]


def _jsonl(lines: list[Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _sdk(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread(lambda: make_app(MockSettings())).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def realistic() -> Iterator[ServerThread]:
    running = ServerThread(lambda: make_app(MockSettings(fine_tuning_pace="realistic", fine_tuning_phase_s=60))).start()
    yield running
    running.stop()


@pytest.fixture
def sdk(server: ServerThread) -> Iterator[openai.OpenAI]:
    with _sdk(server) as client:
        yield client


def _upload(client: openai.OpenAI, data: bytes, purpose: Any = "fine-tune") -> str:
    return client.files.create(file=("train.jsonl", io.BytesIO(data)), purpose=purpose).id


def test_a_job_produces_a_model_chat_accepts_until_it_is_deleted(sdk: openai.OpenAI) -> None:
    training = _upload(sdk, _jsonl(EXAMPLES))
    raw = sdk.fine_tuning.jobs.with_raw_response.create(model="gpt-4o-mini-2024-07-18", training_file=training,
                                                        suffix="helper", metadata={"team": "qa"})
    created = json.loads(raw.http_response.content)
    conforms("FineTuningJob", created)
    assert created["status"] == "validating_files" and created["fine_tuned_model"] is None
    job = sdk.fine_tuning.jobs.retrieve(created["id"])
    assert job.status == "succeeded" and job.trained_tokens and job.trained_tokens > 0
    model = job.fine_tuned_model
    assert model is not None and model.startswith("ft:gpt-4o-mini-2024-07-18:mock-org:helper:")
    conforms("FineTuningJob", json.loads(sdk.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.content))
    assert model in {m.id for m in sdk.models.list()}
    answer = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Question 1?"}])
    assert answer.model == model and answer.choices[0].message.content
    deleted = sdk.models.with_raw_response.delete(model)
    body = json.loads(deleted.http_response.content)
    conforms("DeleteModelResponse", body)
    assert body == {"id": model, "object": "model", "deleted": True}
    with pytest.raises(openai.NotFoundError) as gone:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
    assert gone.value.code == "model_not_found"
    assert model not in {m.id for m in sdk.models.list()}
    with pytest.raises(openai.NotFoundError):
        sdk.models.delete(model)


def test_base_models_cannot_be_deleted(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        sdk.models.delete("gpt-4o")
    with pytest.raises(openai.NotFoundError):
        sdk.models.delete("ft:gpt-4o:someone-else::abc")  # not made here: not ours to delete


def test_jobs_list_events_and_filter(sdk: openai.OpenAI) -> None:
    training = _upload(sdk, _jsonl(EXAMPLES))
    job = sdk.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=training, metadata={"run": "list-test"})
    listed = sdk.fine_tuning.jobs.with_raw_response.list(metadata={"run": "list-test"})
    page = json.loads(listed.http_response.content)
    conforms("ListPaginatedFineTuningJobsResponse", page)
    assert [j["id"] for j in page["data"]] == [job.id]
    events = sdk.fine_tuning.jobs.with_raw_response.list_events(job.id)
    said = json.loads(events.http_response.content)
    conforms("ListFineTuningJobEventsResponse", said)
    messages = [e["message"] for e in said["data"]]
    assert messages[0] == "The job has successfully completed" and messages[-1] == "Created fine-tuning job"
    assert [e.id for e in sdk.fine_tuning.jobs.list_events(job.id, limit=2)] == [e["id"] for e in said["data"]]


def test_realistic_pace_moves_through_the_phases_and_cancels(realistic: ServerThread) -> None:
    with _sdk(realistic) as client:
        training = _upload(client, _jsonl(EXAMPLES))
        job = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training,
                                             hyperparameters={"n_epochs": 2})
        seen = [client.fine_tuning.jobs.retrieve(job.id).status]
        for _ in range(4):
            advance(realistic, 60)
            seen.append(client.fine_tuning.jobs.retrieve(job.id).status)
        assert seen == ["validating_files", "queued", "running", "running", "succeeded"]
        done = client.fine_tuning.jobs.retrieve(job.id)
        assert done.finished_at == job.created_at + 240 and done.hyperparameters.n_epochs == 2
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.cancel(job.id)
        other = client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training)
        advance(realistic, 90)
        cancelled = client.fine_tuning.jobs.cancel(other.id)
        assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
        assert client.fine_tuning.jobs.list_events(other.id).data[0].message == "Fine-tuning job cancelled"


def test_a_malformed_training_file_fails_the_job(sdk: openai.OpenAI) -> None:
    training = _upload(sdk, b'{"messages": []}\nnot json\n')
    job = sdk.fine_tuning.jobs.retrieve(sdk.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training).id)
    assert job.status == "failed" and job.error is not None and job.error.code == "invalid_training_file"
    assert "Line 2" in job.error.message and job.fine_tuned_model is None


@pytest.mark.parametrize("change, param", [
    ({"model": "text-embedding-3-small"}, "model"),
    ({"model": "no-such-model"}, "model"),
    ({"training_file": "file-nope"}, "training_file"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
])
def test_bad_jobs_are_400(sdk: openai.OpenAI, change: dict[str, Any], param: str) -> None:
    training = _upload(sdk, _jsonl(EXAMPLES))
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(**{"model": "gpt-4o-mini", "training_file": training, **change})
    assert bad.value.param == param


def test_a_training_file_needs_the_fine_tune_purpose(sdk: openai.OpenAI) -> None:
    other = _upload(sdk, _jsonl(EXAMPLES), purpose="assistants")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=other)
    assert bad.value.code == "invalid_file_purpose"


def test_unknown_jobs_are_404(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("ftjob-nope")
