"""The Flink image and the FlinkDeployment agree on entrypoint, paths and versions, all read
from deploy/flink/versions.env, and with the job's own pins in streaming/flink/."""

from __future__ import annotations

import re

from tests.deploy.deploy_manifests import DEPLOY, REPO, of_kind, read_env_file, render

VERSIONS = read_env_file(DEPLOY / "flink" / "versions.env")
DOCKERFILE = (DEPLOY / "images" / "flink" / "Dockerfile").read_text()


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", DOCKERFILE, flags=re.M))


def _flink_deployment() -> dict:
    (fd,) = of_kind(render("production"), "FlinkDeployment")
    return fd


def test_versions_file_is_self_consistent() -> None:
    v = VERSIONS
    assert v["FLINK_IMAGE_TAG"].startswith(v["FLINK_VERSION"] + "-")
    assert v["FLINK_IMAGE_TAG"].endswith("-java17")
    major, minor, _ = v["FLINK_VERSION"].split(".")
    assert v["FLINK_OPERATOR_FLINK_VERSION"] == f"v{major}_{minor}"
    assert v["PYFLINK_REQUIREMENT"] == f"apache-flink=={v['FLINK_VERSION']}"
    assert v["PYFLINK_JAR"] == f"local:///opt/flink/opt/flink-python-{v['FLINK_VERSION']}.jar"
    assert v["JOB_FILE"].startswith(v["JOB_DIR"] + "/")
    assert v["JOB_VENV"].startswith(v["JOB_DIR"] + "/")
    # The connector is built for a Flink 2.x minor (suffix), same major as the runtime.
    assert v["KAFKA_CONNECTOR_VERSION"].split("-")[1].split(".")[0] == major


def test_dockerfile_builds_from_the_pinned_flink_image_with_the_connector_and_job() -> None:
    args = _dockerfile_args()
    for key in ("FLINK_VERSION", "FLINK_IMAGE_TAG", "PYTHON_VERSION", "KAFKA_CONNECTOR_VERSION"):
        assert args[key] == VERSIONS[key], key
    assert args["JOB_DIR"] == VERSIONS["JOB_DIR"]
    assert re.search(r"^FROM flink:\$\{FLINK_IMAGE_TAG\}$", DOCKERFILE, flags=re.M)
    # Connector jar into /opt/flink/lib, fetched at build time.
    assert 'curl -fsSL --retry 3 -o "/opt/flink/lib/${jar}"' in DOCKERFILE
    assert "flink-sql-connector-kafka-${KAFKA_CONNECTOR_VERSION}.jar" in DOCKERFILE
    # The job file lands where the FlinkDeployment runs it from.
    assert "COPY streaming/flink/usage_job.py ${JOB_DIR}/usage_job.py" in DOCKERFILE
    assert f"{args['JOB_DIR']}/usage_job.py" == VERSIONS["JOB_FILE"]
    assert "python3 -m venv ${JOB_DIR}/venv" in DOCKERFILE
    assert "--require-hashes -r /tmp/requirements.lock" in DOCKERFILE
    # The PyFlink jar the operator points at must exist in the image.
    assert "test -f /opt/flink/opt/flink-python-${FLINK_VERSION}.jar" in DOCKERFILE
    assert re.search(r"^USER 9999:9999$", DOCKERFILE, flags=re.M)


def test_flink_deployment_runs_the_image_job_with_the_pinned_versions() -> None:
    spec = _flink_deployment()["spec"]
    v = VERSIONS
    assert spec["flinkVersion"] == v["FLINK_OPERATOR_FLINK_VERSION"]
    job = spec["job"]
    assert job["jarURI"] == v["PYFLINK_JAR"]
    assert job["entryClass"] == v["PYFLINK_ENTRY_CLASS"]
    args = job["args"]
    assert args[args.index("-py") + 1] == v["JOB_FILE"]
    assert args[args.index("-pyclientexec") + 1] == f"{v['JOB_VENV']}/bin/python"
    assert args[args.index("--source") + 1] == "kafka"
    conf = spec["flinkConfiguration"]
    assert conf["python.executable"] == f"{v['JOB_VENV']}/bin/python"
    assert conf["python.client.executable"] == f"{v['JOB_VENV']}/bin/python"


def test_flink_deployment_is_exactly_once_on_rocksdb_with_ha_in_the_bucket() -> None:
    objs = render("production")
    spec = _flink_deployment()["spec"]
    conf = spec["flinkConfiguration"]
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert conf["state.backend.type"] == "rocksdb"
    assert conf["high-availability.type"] == "kubernetes"
    assert spec["jobManager"]["replicas"] >= 2
    assert spec["job"]["upgradeMode"] in ("savepoint", "last-state")
    bucket = next(o for o in objs if o["metadata"]["name"] == "byoc-config")["data"][
        "BYOC_S3__ARCHIVE_BUCKET"
    ]
    for key in (
        "execution.checkpointing.dir",
        "execution.checkpointing.savepoint-dir",
        "high-availability.storageDir",
    ):
        assert conf[key].startswith(f"s3://{bucket}/flink/"), key


def test_job_requirements_pin_the_same_pyflink_and_python() -> None:
    """streaming/flink/ is the job's own environment; the image installs its lock file."""
    requirements = (REPO / "streaming" / "flink" / "requirements.txt").read_text()
    assert VERSIONS["PYFLINK_REQUIREMENT"] in requirements.splitlines()
    lock = (REPO / "streaming" / "flink" / "requirements.lock").read_text()
    assert f"--python-version {VERSIONS['PYTHON_VERSION']}" in lock
    assert re.search(rf"^{re.escape(VERSIONS['PYFLINK_REQUIREMENT'])} \\$", lock, flags=re.M)
    job = REPO / "streaming" / "flink" / "usage_job.py"
    if job.exists():
        # The job must accept the arguments the FlinkDeployment passes.
        assert "--source" in job.read_text()
