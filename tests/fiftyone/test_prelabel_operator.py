"""The prelabel operator ``@unisam/unisam/prelabel`` (issue #19) on a real FiftyOne dataset: one
resumable job that several ``fiftyone delegated launch`` workers share, each running one shard.

Oracle: ``unisam.segment_everything`` on the same image files."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import fiftyone as fo
import fiftyone.core.odm.database as fodb
import fiftyone.operators as foo
import pytest
from bson import ObjectId
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import (
    ExecutionError,
    execute_or_delegate_operator,
    resolve_execution_options,
    resolve_type,
)
from fo_scenes import assert_matches_core

import unisam
from unisam_fiftyone.prelabel import MARK, prelabel_dataset, shard_of

PRELABEL = "@unisam/unisam/prelabel"
OPTIONS = dict(points_per_side=8, pred_iou_thresh=0.6, stability_score_thresh=0.7)
READY = "Delegated operation service running"


def assert_prelabelled(dataset, field: str) -> None:
    """Every sample's ``field`` holds exactly the core's instances for its file, marked by unisam."""
    for sample in dataset.select_fields(field):
        result = unisam.segment_everything(sample.filepath, **OPTIONS)
        assert len(result) > 0
        assert_matches_core(sample[field], result, [None] * len(result))
        assert len(sample[field][MARK]) == 64


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def workers(tmp_path):
    """Two ``fiftyone delegated launch`` processes on the test's database and plugins, running;
    yields their log files (stdout and stderr)."""
    host, port = fodb.get_db_client().address
    env = {**os.environ, "FIFTYONE_DATABASE_URI": f"mongodb://{host}:{port}"}
    command = [os.path.join(os.path.dirname(sys.executable), "fiftyone"), "delegated", "launch"]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    outs = [log.open("w") for log in logs]
    procs = [subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT) for out in outs]

    def started() -> bool:  # or exited
        return all(READY in log.read_text() or proc.poll() is not None for log, proc in zip(logs, procs))

    try:
        wait_for(started, "the workers to start", timeout=90)
        for log, proc in zip(logs, procs):
            assert proc.poll() is None, f"a worker exited: {log.read_text()[-2000:]}"
        yield logs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # the service's own way out (KeyboardInterrupt)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for out in outs:
            out.close()


def run_shards(dataset) -> list:
    """Queue the job in 2 shards; wait until the workers have completed both; their documents."""
    queued = foo.get_operator(PRELABEL)(dataset, label_field="pre", shards=2, **OPTIONS)["queued"]
    queued = [ObjectId(i) for i in queued]
    assert len(queued) == 2
    service = DelegatedOperationService()
    wait_for(lambda: all(service.get(i).run_state in ("completed", "failed") for i in queued), "the shards")
    docs = [service.get(i) for i in queued]
    for doc in docs:
        assert doc.run_state == "completed", doc.result.error
        service.delete_operation(doc.id)
    return docs


def test_two_delegated_workers_share_the_job_and_a_rerun_skips_everything(dataset, workers):
    docs = run_shards(dataset)
    reports = [doc.result.result for doc in docs]
    assert [r["shard"] for r in reports] == [0, 1]
    assert sum(r["processed"] for r in reports) == len(dataset) and all(not r["failed"] for r in reports)
    assert sum(r["samples"] for r in reports) == len(dataset)  # each sample in exactly one shard
    for doc, report in zip(docs, reports):
        assert doc.status.progress == 1.0
        assert doc.status.label == f"shard {report['shard'] + 1} / 2: done, {report['processed']} samples written"
    ran = [{str(doc.id) for doc in docs if f"Running operation {doc.id}" in log.read_text()} for log in workers]
    assert sorted(map(len, ran)) == [1, 1] and set.union(*ran) == {str(doc.id) for doc in docs}  # one each
    dataset.reload()
    assert_prelabelled(dataset, "pre")

    again = [doc.result.result for doc in run_shards(dataset)]
    assert sum(r["processed"] for r in again) == 0 and sum(r["skipped"] for r in again) == len(dataset)


def test_shards_split_by_id_whenever_they_run(dataset):
    before = {shard: set(shard_of(dataset, shard, 2).values("id")) for shard in range(2)}
    dataset.add_samples([fo.Sample(filepath=f"/nowhere/{i}.png") for i in range(40)])
    ids = dataset.values("id")
    for shards in (1, 2, 3, 7):
        got = {shard: set(shard_of(dataset, shard, shards).values("id")) for shard in range(shards)}
        assert got == {shard: {i for i in ids if int(i, 16) % shards == shard} for shard in range(shards)}
        if shards == 2:  # samples added later join a shard; the earlier ones stay where they were
            assert all(before[shard] <= got[shard] for shard in range(2))
    for shard, shards in ((2, 2), (-1, 2), (0, 0), (0, "2")):
        with pytest.raises(ValueError, match="shard must be in 0..shards-1"):
            shard_of(dataset, shard, shards)


def test_one_shard_runs_immediately_or_delegated(dataset):
    op = foo.get_operator(PRELABEL)
    report = op(dataset, label_field="now", **OPTIONS)
    assert (report["processed"], report["skipped"], report["failed"]) == (3, 0, {})
    assert_prelabelled(dataset, "now")

    queued = op(dataset, label_field="later", delegate=True, **OPTIONS)
    assert queued.delegated and not dataset.has_field("later")
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name)
    doc = service.get(queued.result["id"])
    assert doc.run_state == "completed", doc.result.error
    assert doc.result.result["processed"] == 3 and doc.status.label == "shard 1 / 1: done, 3 samples written"
    service.delete_operation(doc.id)
    dataset.reload()
    assert_prelabelled(dataset, "later")


def test_app_form_offers_shards_and_queues_them_immediately(dataset):
    request = {"dataset_name": dataset.name, "params": {"shards": 2}}
    props = asyncio.run(resolve_type(foo.OperatorRegistry(), PRELABEL, request)).type.properties
    assert props["shards"].default == 1 and "output_dir" not in props
    options = asyncio.run(resolve_execution_options(foo.OperatorRegistry(), PRELABEL, request))
    assert options.allow_immediate_execution and not options.allow_delegated_execution  # it only queues
    request["params"]["shards"] = 1
    options = asyncio.run(resolve_execution_options(foo.OperatorRegistry(), PRELABEL, request))
    assert options.allow_immediate_execution and options.allow_delegated_execution

    request = {"dataset_name": dataset.name, "params": {"label_field": "app", **OPTIONS}}
    result = asyncio.run(execute_or_delegate_operator(PRELABEL, request))
    assert result.error is None and result.result["processed"] == 3
    triggered = [(r["operator_uri"], r["params"]) for r in result.executor.to_json()["requests"]]
    assert triggered == [
        ("notify", {"message": "unisam: 3 samples prelabelled into 'app', 0 already done, 0 failed",
                    "variant": "success"}),
        ("reload_dataset", {}),
    ]

    request = {"dataset_name": dataset.name, "params": {"label_field": "split", "shards": 3}}
    result = asyncio.run(execute_or_delegate_operator(PRELABEL, request))
    assert result.error is None and not result.delegated and dataset.has_field("split")  # declared once, here
    service = DelegatedOperationService()
    docs = [service.get(ObjectId(i)) for i in result.result["queued"]]
    labels = [("queued", f"unisam: prelabel (shard {i} / 3)") for i in (1, 2, 3)]
    assert [(d.run_state, d.label) for d in docs] == labels
    assert [d.context.params["shard"] for d in docs] == [0, 1, 2]
    for doc in docs:
        service.delete_operation(doc.id)


def test_a_field_unisam_did_not_write_is_refused_unless_overwrite(dataset):
    op, service = foo.get_operator(PRELABEL), DelegatedOperationService()
    for shards in (1, 2):
        with pytest.raises(ExecutionError, match="'gt' already holds labels unisam did not write"):
            op(dataset, label_field="gt", shards=shards, **OPTIONS)
    assert service.count(filters={"dataset_id": dataset._doc.id}) == 0  # no shard was queued
    assert all(d.label.startswith("obj") for d in dataset.values("gt.detections", unwind=True))
    report = op(dataset, label_field="gt", overwrite=True, **OPTIONS)
    assert report["processed"] == 3
    assert_prelabelled(dataset, "gt")


def test_writes_are_reported_as_they_happen(dataset):
    written = []
    prelabel_dataset(dataset, "pre", progress=False, on_write=written.append, **OPTIONS)
    assert written == [3]  # one database write of the three samples


@pytest.mark.parametrize("shards", [0, -2, 1.5, "2", True])
def test_bad_shards_are_refused_with_a_clear_error(dataset, shards):
    with pytest.raises(ExecutionError, match=f"shards must be a whole number >= 1, got {shards!r}"):
        foo.get_operator(PRELABEL)(dataset, label_field="pre", shards=shards)
    assert DelegatedOperationService().count(filters={"dataset_id": dataset._doc.id}) == 0
    assert not dataset.has_field("pre")
