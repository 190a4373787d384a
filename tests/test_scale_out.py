"""The scale-out examples under deploy/: each checked by the tool that reads it where it installs here.

- file_sd: ``promtool check config``, then a real Prometheus scraping real processes listed in a
  target file, picking up a second one when the file is rewritten, without a restart.
- Kubernetes: this Prometheus build has no Kubernetes discovery, so the job's relabeling is run
  by a real Prometheus on targets carrying the ``__meta_kubernetes_*`` labels Kubernetes
  discovery would give them (through file_sd), and the Deployment's annotations are checked
  against the labels the relabeling reads.
- OpenTelemetry Collector: its binary is not installed here; the configuration is checked
  against the Collector's documented configuration (components, their settings, pipelines).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import scale_out  # scripts/scale_out.py
import yaml
from conftest import require_binary, wait_for
from metrics_process import MetricsProcess
from prometheus_server import PrometheusServer

from reer_otel_memory import _names as names
from reer_otel_memory.deploy import _yaml, rules
from reer_otel_memory.export import naming as series

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def promtool_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), "check", "config", str(path)], capture_output=True, text=True, timeout=60)


def test_committed_files_are_the_generator_output() -> None:
    for relative, text in scale_out.deploy_files().items():
        path = DEPLOY / relative
        assert path.exists(), f"{path} is missing: run `make deploy`"
        assert path.read_text() == text, f"{path} differs from the generator output: run `make deploy`"


# --- file_sd ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_file_sd_config_passes_promtool_in_place() -> None:
    result = promtool_check_config(DEPLOY / scale_out.FILE_SD_DIR / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules.ALERT_NAMES) + 2} rules found" in result.stdout


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[MetricsProcess]]:
    with MetricsProcess(tmp_path_factory.mktemp("first")) as first, MetricsProcess(tmp_path_factory.mktemp("second")) as second:
        yield [first, second]


def fast(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the test server's one-second intervals."""
    return {**config, "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": []}


def instances(prom: PrometheusServer, job: str) -> set[str]:
    return {sample["metric"]["instance"] for sample in prom.query(f'{series.RSS}{{job="{job}"}}')}


def kubernetes_pod(address: str, name: str, **annotations: str) -> dict[str, Any]:
    """A target as Kubernetes discovery gives a pod: its address, namespace, name and annotations."""
    labels = {
        "__meta_kubernetes_namespace": "ml",
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_container_name": "trainer",
        **{annotation_label(key): value for key, value in annotations.items()},
    }
    return {"targets": [address], "labels": labels}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, services: list[MetricsProcess]) -> Iterator[PrometheusServer]:
    """One Prometheus for the module's scrape tests (its start-up and first discovery take seconds),
    running both shipped jobs, each on its own targets:

    - the file_sd job, reading ``targets/*.yml``: the first service listed, with ``env="test"``;
    - the Kubernetes job, its relabeling as shipped, on what Kubernetes discovery would find, from
      a file instead: the first service as an annotated pod discovered on another declared port,
      and a pod without annotations.
    """
    first, _second = services
    workdir = tmp_path_factory.mktemp("scale-out")
    targets = workdir / "targets"
    targets.mkdir()
    (targets / "reer-memory.yml").write_text(_yaml.dumps(scale_out.file_sd_targets([first.target], env="test")))
    pods = [
        # Discovered on another declared port; the annotation names the exporter's.
        kubernetes_pod("127.0.0.1:1", "trainer-0", **{"prometheus.io/scrape": "true", "prometheus.io/port": str(first.port), "prometheus.io/path": "/metrics"}),
        kubernetes_pod("127.0.0.1:2", "sidecar-0"),  # not annotated: not scraped
    ]
    (workdir / "pods.yml").write_text(_yaml.dumps(pods))
    job = kubernetes_job()
    job = {**{key: value for key, value in job.items() if key != "kubernetes_sd_configs"}, "file_sd_configs": [{"files": [str(workdir / "pods.yml")]}]}
    config = fast(scale_out.file_sd_config(str(targets / "*.yml"), refresh_s=1))
    config["scrape_configs"] = [*config["scrape_configs"], job]
    prom = PrometheusServer(workdir / "prometheus", [first.target], binary=require_binary("prometheus"))
    prom.config_path.write_text(_yaml.dumps(config))
    with prom:
        yield prom


@pytest.mark.e2e
@pytest.mark.slow
def test_file_sd_scrapes_every_listed_instance_and_rereads_the_file(prometheus: PrometheusServer, services: list[MetricsProcess]) -> None:
    first, second = services
    prom = prometheus
    target_file = prom.workdir.parent / "targets" / "reer-memory.yml"
    wait_for(lambda: instances(prom, scale_out.FILE_SD_JOB) == {first.target}, timeout_s=30, message="the listed instance scraped")
    # Deploy tooling adds an instance: Prometheus rereads the file by itself.
    target_file.write_text(_yaml.dumps(scale_out.file_sd_targets([first.target, second.target], env="test")))
    wait_for(
        lambda: instances(prom, scale_out.FILE_SD_JOB) == {first.target, second.target},
        timeout_s=30,
        message="the added instance scraped without a restart",
    )
    assert {sample["metric"]["env"] for sample in prom.query(f'{series.RSS}{{job="{scale_out.FILE_SD_JOB}"}}')} == {"test"}


# --- Kubernetes --------------------------------------------------------------------------------


def kubernetes_job() -> dict[str, Any]:
    [job] = yaml.safe_load((DEPLOY / scale_out.KUBERNETES_PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    return job


def annotation_label(annotation: str) -> str:
    """The label Kubernetes discovery gives a pod annotation: non-alphanumerics become ``_``."""
    return "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation)


def test_kubernetes_job_discovers_pods_and_reads_the_deployments_annotations() -> None:
    job = kubernetes_job()
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    read = {label for relabel in job["relabel_configs"] for label in relabel.get("source_labels", [])}
    deployment = yaml.safe_load((DEPLOY / scale_out.KUBERNETES_DIR / "deployment.yml").read_text())
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert {annotation_label(key) for key in annotations} <= read
    [container] = template["spec"]["containers"]
    assert [port["containerPort"] for port in container["ports"]] == [int(annotations["prometheus.io/port"])]
    env = {item["name"]: item["value"] for item in container["env"]}
    # The endpoint binds loopback unless told otherwise: the pod IP must answer the scrape.
    assert env[names.ENV_PROMETHEUS_HOST] == "0.0.0.0"
    assert env[names.ENV_PROMETHEUS_PORT] == annotations["prometheus.io/port"]


@pytest.mark.e2e
@pytest.mark.slow
def test_kubernetes_relabeling_keeps_annotated_pods_on_their_annotated_port(prometheus: PrometheusServer, services: list[MetricsProcess]) -> None:
    annotated, _other = services
    prom = prometheus
    assert promtool_check_config(prom.config_path).returncode == 0
    wait_for(lambda: prom.query(f'{series.RSS}{{job="{scale_out.KUBERNETES_JOB}"}}'), timeout_s=30, message="the annotated pod scraped")
    [target] = [target for target in prom.api("targets")["activeTargets"] if target["scrapePool"] == scale_out.KUBERNETES_JOB]
    assert target["scrapeUrl"] == f"http://{annotated.target}/metrics"
    assert {key: target["labels"][key] for key in ("namespace", "pod", "container")} == {
        "namespace": "ml",
        "pod": "trainer-0",
        "container": "trainer",
    }


# --- OpenTelemetry Collector -------------------------------------------------------------------

#: The Collector's configuration, as its documentation gives it (opentelemetry.io/docs/collector/configuration
#: and each component's README in opentelemetry-collector and opentelemetry-collector-contrib): the
#: settings each component used here accepts, and the pipeline types a connector joins.
TOP_LEVEL = {"receivers", "processors", "exporters", "connectors", "extensions", "service"}
SETTINGS: dict[str, dict[str, set[str]]] = {
    "receivers": {"otlp": {"protocols"}},
    "processors": {
        "batch": {"send_batch_size", "send_batch_max_size", "timeout", "metadata_keys", "metadata_cardinality_limit"},
        "memory_limiter": {"check_interval", "limit_mib", "spike_limit_mib", "limit_percentage", "spike_limit_percentage"},
    },
    "exporters": {
        "prometheusremotewrite": {
            "endpoint", "tls", "headers", "namespace", "external_labels", "resource_to_telemetry_conversion", "remote_write_queue",
            "retry_on_failure", "timeout", "target_info", "add_metric_suffixes", "send_metadata", "max_batch_size_bytes", "wal",
        },
        "prometheus": {
            "endpoint", "namespace", "const_labels", "send_timestamps", "metric_expiration", "resource_to_telemetry_conversion",
            "enable_open_metrics", "add_metric_suffixes", "tls",
        },
    },
    "connectors": {
        "spanmetrics": {
            "histogram", "dimensions", "exclude_dimensions", "dimensions_cache_size", "aggregation_temporality",
            "metrics_flush_interval", "metrics_expiration", "namespace", "exemplars", "events", "resource_metrics_key_attributes",
        },
    },
}  # fmt: skip
OTLP_PROTOCOLS = {"grpc", "http"}
#: Connector -> (pipeline type it exports from, pipeline type it receives into).
CONNECTOR_PIPELINES = {"spanmetrics": ("traces", "metrics")}
PIPELINE = re.compile(r"(traces|metrics|logs)(/[^/]+)?")
COMPONENT_ID = re.compile(r"([a-z][a-z0-9_]*)(/[^/]+)?")
GO_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")
HOST_PORT = re.compile(r"[^:/\s]+:[0-9]{1,5}")


def component_type(component_id: str) -> str:
    match = COMPONENT_ID.fullmatch(component_id)
    assert match, f"{component_id!r} is not a component id (type[/name])"
    return match.group(1)


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / scale_out.COLLECTOR_DIR / scale_out.COLLECTOR_CONFIG_FILENAME).read_text())


def test_collector_components_and_their_settings_are_documented_ones(collector: dict[str, Any]) -> None:
    assert set(collector) <= TOP_LEVEL
    for kind, known in SETTINGS.items():
        for component_id, settings in collector.get(kind, {}).items():
            kind_type = component_type(component_id)
            assert kind_type in known, f"{kind}.{component_id}: no such component in this configuration's schema"
            assert set(settings or {}) <= known[kind_type], f"{kind}.{component_id}: unknown settings {set(settings) - known[kind_type]}"
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert set(protocols) <= OTLP_PROTOCOLS
    for protocol in protocols.values():
        assert HOST_PORT.fullmatch(protocol["endpoint"])
    assert HOST_PORT.fullmatch(collector["exporters"]["prometheus"]["endpoint"])
    assert collector["exporters"]["prometheusremotewrite"]["endpoint"].startswith(("http://", "https://"))
    limiter = collector["processors"]["memory_limiter"]
    assert GO_DURATION.fullmatch(limiter["check_interval"]) and 0 < limiter["spike_limit_percentage"] < limiter["limit_percentage"] <= 100
    assert GO_DURATION.fullmatch(collector["processors"]["batch"]["timeout"])
    spanmetrics = collector["connectors"]["spanmetrics"]
    assert all(GO_DURATION.fullmatch(bucket) for bucket in spanmetrics["histogram"]["explicit"]["buckets"])
    # Per-operation duration: the span attribute the package sets on every profiled operation.
    assert {"name": names.ATTR_OPERATION} in spanmetrics["dimensions"]


def test_collector_pipelines_join_defined_components(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline_id, pipeline in pipelines.items():
        assert PIPELINE.fullmatch(pipeline_id), pipeline_id
        assert set(pipeline) <= {"receivers", "processors", "exporters"} and pipeline["receivers"] and pipeline["exporters"]
        for role, ids in pipeline.items():
            for component_id in ids:
                defined = collector.get(role, {}) | (collector.get("connectors", {}) if role != "processors" else {})
                assert component_id in defined, f"pipeline {pipeline_id} uses {role[:-1]} {component_id!r}, which is not defined"
                used[role].add(component_id)
        # The Collector's guidance: the memory limiter comes first.
        assert pipeline.get("processors", ["memory_limiter"])[0] == "memory_limiter", pipeline_id
    for kind in ("receivers", "processors", "exporters"):
        assert set(collector.get(kind, {})) <= used[kind], f"{kind} defined but in no pipeline"
    for connector in collector.get("connectors", {}):
        exported_from, received_into = CONNECTOR_PIPELINES[component_type(connector)]
        assert any(connector in p["exporters"] for name, p in pipelines.items() if name.split("/")[0] == exported_from), connector
        assert any(connector in p["receivers"] for name, p in pipelines.items() if name.split("/")[0] == received_into), connector
    # Both ways out to Prometheus: remote write and a scrape endpoint.
    assert {"prometheusremotewrite", "prometheus"} <= {component_type(e) for e in pipelines["metrics"]["exporters"]}
    # job and instance (which the rules match on) come from service.name and service.instance.id.
    for exporter in ("prometheusremotewrite", "prometheus"):
        assert collector["exporters"][exporter]["resource_to_telemetry_conversion"] == {"enabled": True}


def test_a_broken_collector_config_is_refused(collector: dict[str, Any]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(collector))
    broken["service"]["pipelines"]["metrics"]["exporters"].append("otlphttp")
    with pytest.raises(AssertionError, match="otlphttp"):
        test_collector_pipelines_join_defined_components(broken)
    broken = yaml.safe_load(yaml.safe_dump(collector))
    broken["processors"]["batch"]["flush_every"] = "5s"
    with pytest.raises(AssertionError, match="flush_every"):
        test_collector_components_and_their_settings_are_documented_ones(broken)
