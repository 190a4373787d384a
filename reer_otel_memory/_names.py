"""Every instrument, attribute and environment-variable name the package emits or reads.

Nothing else in the package spells these strings: dashboards, alert rules and users depend on
them (docs/telemetry.md is their reference), so they live in one place.
"""

from __future__ import annotations

INSTRUMENTATION_SCOPE = "reer_otel_memory"
# The semantic conventions that the standard names below (container.*, hw.gpu.*) follow: the scope's schema_url.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"

# Span attributes of a profiled operation.
ATTR_OPERATION = "reer.operation"
ATTR_RSS_START = "reer.memory.rss.start"
ATTR_RSS_END = "reer.memory.rss.end"
ATTR_RSS_DELTA = "reer.memory.rss.delta"
ATTR_RSS_PEAK = "reer.memory.rss.peak"
ATTR_HEAP_DELTA = "reer.memory.heap.delta"
ATTR_LEVEL = "reer.memory.level"
ATTR_FUNCTION = "code.function.name"
ATTR_LEAK_SUSPECTED = "reer.memory.leak.suspected"
ATTR_LEAK_BYTES_PER_CALL = "reer.memory.leak.bytes_per_call"
EVENT_LEAK_SUSPECTED = "reer.memory.leak.suspected"
# An annotating operation's record where the span already carries another one (annotate_current=True).
EVENT_OPERATION = "reer.memory.operation"
# Other profiled operations, in any thread or task, in flight at any time during the operation's window.
ATTR_OVERLAP = "reer.memory.overlap"
# A process-level leak verdict: the process grows, and the operations that could be the cause.
ATTR_LEAK_CANDIDATES = "reer.memory.leak.candidates"
EVENT_PROCESS_LEAK_SUSPECTED = "reer.memory.leak.process_suspected"

# Explanations: the allocation sites (and operations) holding memory allocated in a window.
SPAN_EXPLAIN = "reer.memory.explain"
ATTR_EXPLAIN_SITES = "reer.memory.explain.sites"
ATTR_EXPLAIN_SITE_BYTES = "reer.memory.explain.site_bytes"
ATTR_EXPLAIN_OPERATIONS = "reer.memory.explain.operations"
ATTR_EXPLAIN_OPERATION_BYTES = "reer.memory.explain.operation_bytes"
ATTR_EXPLAIN_SECONDS = "reer.memory.explain.seconds"
ATTR_EXPLAIN_REASON = "reer.memory.explain.reason"
ATTR_EXPLAIN_BACKEND = "reer.memory.explain.backend"
# Accelerator memory of a profiled operation, summed over the devices of the frameworks read.
ATTR_DEVICE_START = "reer.memory.device.start"
ATTR_DEVICE_END = "reer.memory.device.end"
ATTR_DEVICE_DELTA = "reer.memory.device.delta"
ATTR_DEVICE_PEAK = "reer.memory.device.peak"
# A previous process on the same flight recorder file died: the event on the span reporting it.
SPAN_PREDECESSOR = "reer.memory.predecessor"
EVENT_PREDECESSOR_DIED = "reer.memory.predecessor.died"
ATTR_PREDECESSOR_PID = "reer.memory.predecessor.pid"
ATTR_PREDECESSOR_COMMAND = "reer.memory.predecessor.command"
ATTR_PREDECESSOR_LAST_RSS = "reer.memory.predecessor.rss.last"
ATTR_PREDECESSOR_LAST_WORKING_SET = "reer.memory.predecessor.working_set.last"
ATTR_PREDECESSOR_OPERATIONS = "reer.memory.predecessor.operations"
ATTR_PREDECESSOR_OPERATIONS_RSS_START = "reer.memory.predecessor.operations.rss_start"
ATTR_FLIGHT_RECORDER_PATH = "reer.memory.flight_recorder.path"

# Metric attribute keys.
LABEL_LEVEL = "level"
LABEL_TRIGGER = "trigger"
LABEL_OPERATION = ATTR_OPERATION
# Past the package's cap on distinct operations per process, their calls are recorded under this
# attribute alone (OpenTelemetry's own overflow attribute), not under a new reer.operation value.
LABEL_METRIC_OVERFLOW = "otel.metric.overflow"

# Metric instruments: name, unit, description.
METRIC_RSS = ("reer.memory.rss", "By", "Resident set size of the process.")
METRIC_PEAK_RSS = ("reer.memory.peak_rss", "By", "Highest resident set size of the process since it started.")
METRIC_HEAP = ("reer.memory.heap", "By", "Bytes the C allocator has handed out and not freed.")
METRIC_LIMIT = ("reer.memory.limit", "By", "Effective memory limit: smallest of cgroup limits and physical RAM.")
METRIC_UTILIZATION = ("reer.memory.utilization", "1", "Resident set size as a fraction of the effective limit.")
METRIC_THRESHOLD = ("reer.memory.threshold", "By", "Configured RSS threshold of each level.")
METRIC_LEVEL = ("reer.memory.level", "1", "Current memory level: 0 ok, 1 alert, 2 cleanup, 3 critical.")
METRIC_ALERTS = ("reer.memory.alerts", "1", "Upward crossings into a memory level.")
METRIC_CLEANUPS = ("reer.memory.cleanups", "1", "Memory cleanups run, by trigger.")
METRIC_CLEANUP_FREED = ("reer.memory.cleanup.freed", "By", "Resident bytes released by cleanups.")
METRIC_OPERATION_PEAK = ("reer.memory.operation.peak", "By", "Peak RSS growth above the start of a profiled operation.")
METRIC_OPERATION_NET = ("reer.memory.operation.net", "By", "Sum of RSS deltas of a profiled operation.")
METRIC_OPERATION_DURATION = ("reer.memory.operation.duration", "s", "Duration of a profiled operation.")
METRIC_LEAK_SUSPECTED = ("reer.memory.leak.suspected", "1", "1 while an operation is suspected of leaking memory.")
METRIC_PROCESS_LEAK_SUSPECTED = (
    "reer.memory.leak.process_suspected", "1",
    "1 while the process's retained memory grows and no single profiled operation can be shown to own the growth.",
)
# Requests of the instrumented web frameworks (REER_MEMORY_SERVER_SPANS), by route template.
LABEL_ROUTE = "http.route"
#: The route of a request no route template matched (404s, or past the bound on distinct routes).
ROUTE_UNKNOWN = "unknown"
METRIC_ROUTE_PEAK = ("reer.memory.route.peak", "By", "Peak RSS growth above the start of a request that overlapped no other measured work, by route.")
METRIC_ROUTE_NET = ("reer.memory.route.net", "By", "Sum of RSS deltas of requests that overlapped no other measured work, by route.")
METRIC_ROUTE_REQUESTS = ("reer.memory.route.requests", "1", "Requests measured, overlapped or not, by route.")
METRIC_MONITOR_CPU = ("reer.memory.monitor.cpu", "s", "CPU time spent by the memory monitor thread.")

# Models and managed resources.
OPERATION_MODEL_LOAD = "model_load"
OPERATION_MODEL_UNLOAD = "model_unload"
ATTR_MODEL_NAME = "reer.model.name"
ATTR_MODEL_SIZE = "reer.model.size"
LABEL_MODEL = "model"
LABEL_RESOURCE = "resource"
METRIC_MODEL_SIZE = ("reer.memory.model.size", "By", "Estimated bytes held in arrays and buffers by each loaded model.")
METRIC_MODEL_LOADS = ("reer.memory.model.loads", "1", "Model loads, by model.")
METRIC_RESOURCES = ("reer.memory.resources", "1", "Resources registered with the resource manager and still alive.")
METRIC_RESOURCE_SIZE = ("reer.memory.resource.size", "By", "Estimated bytes held by each managed resource, as last measured.")
METRIC_RESOURCE_CLEANUPS = ("reer.memory.resource.cleanups", "1", "Managed resources cleaned up, by trigger (manual, limit, pressure).")

# Environment variables.
ENV_ALERT_MB = "REER_MEMORY_ALERT_MB"
ENV_CLEANUP_MB = "REER_MEMORY_CLEANUP_MB"
ENV_CRITICAL_MB = "REER_MEMORY_CRITICAL_MB"
ENV_MONITORING_INTERVAL = "REER_MEMORY_MONITORING_INTERVAL"
ENV_PROFILE_TARGETS = "REER_MEMORY_PROFILE_TARGETS"
ENV_RESET_PEAK = "REER_MEMORY_RESET_PEAK"
ENV_EMERGENCY_SIGNAL = "REER_MEMORY_EMERGENCY_SIGNAL"
ENV_FLIGHT_RECORDER = "REER_MEMORY_FLIGHT_RECORDER"
ENV_DEVICE_ALERT_MB = "REER_MEMORY_DEVICE_ALERT_MB"
ENV_DEVICE_CLEANUP_MB = "REER_MEMORY_DEVICE_CLEANUP_MB"
ENV_DEVICE_CRITICAL_MB = "REER_MEMORY_DEVICE_CRITICAL_MB"
ENV_THRESHOLD_SOURCE = "REER_MEMORY_THRESHOLD_SOURCE"
ENV_EXPLAIN = "REER_MEMORY_EXPLAIN"
ENV_EXPLAIN_SECONDS = "REER_MEMORY_EXPLAIN_SECONDS"
# The memory attributes on every server span of the instrumented web frameworks, and per-route metrics.
ENV_SERVER_SPANS = "REER_MEMORY_SERVER_SPANS"
# What the host levels compare (REER_MEMORY_THRESHOLD_SOURCE), and what else a level change can be of.
SOURCE_RSS = "rss"
SOURCE_WORKING_SET = "working_set"
SOURCE_DEVICE = "device"
THRESHOLD_SOURCES = (SOURCE_RSS, SOURCE_WORKING_SET)
# Pre-fork servers (export.workers): where workers leave their pages, and the process that serves them.
ENV_WORKER_DIR = "REER_MEMORY_WORKER_DIR"
ENV_WORKER_PARENT = "REER_MEMORY_WORKER_PARENT"
# The Prometheus port the parent was given, kept for its descendants that are not workers.
ENV_WORKER_PORT = "REER_MEMORY_WORKER_PORT"
# The label telling a pre-fork server's processes apart on the parent's page.
LABEL_PID = "pid"

# The instrumentor's entry-point name: what OTEL_PYTHON_DISABLED_INSTRUMENTATIONS lists to turn it off.
INSTRUMENTATION_NAME = "reer_memory"

# What started a cleanup: the `trigger` label of reer.memory.cleanups.
TRIGGER_THRESHOLD = "threshold"
TRIGGER_CRITICAL = "critical"
TRIGGER_EMERGENCY = "emergency"
TRIGGER_MANUAL = "manual"
CLEANUP_TRIGGERS = (TRIGGER_THRESHOLD, TRIGGER_CRITICAL, TRIGGER_EMERGENCY, TRIGGER_MANUAL)

# The Prometheus endpoint's address, as the OpenTelemetry Prometheus exporter reads it.
ENV_PROMETHEUS_HOST = "OTEL_EXPORTER_PROMETHEUS_HOST"
ENV_PROMETHEUS_PORT = "OTEL_EXPORTER_PROMETHEUS_PORT"

# Trace store (reer_otel_memory.trace_store): operations, span attributes, gauges.
OPERATION_TRACE_STORE_ADD_TRACE = "trace_store_add_trace"
OPERATION_TRACE_STORE_ADD_TRACES = "trace_store_add_traces"
OPERATION_TRACE_STORE_LAZY_QUERY = "trace_store_lazy_query"
OPERATION_TRACE_STORE_STREAM_FILTERED = "trace_store_stream_filtered"
OPERATION_TRACE_STORE_GET_TRACE = "trace_store_get_trace"
OPERATION_TRACE_STORE_STATS = "trace_store_stats"
OPERATION_TRACE_STORE_OPTIMIZE = "trace_store_optimize"
ATTR_TRACE_STORE_PATH = "reer.trace_store.path"
ATTR_TRACE_STORE_RECORDS_SCANNED = "reer.trace_store.records_scanned"
ATTR_TRACE_STORE_BYTES_READ = "reer.trace_store.bytes_read"
ATTR_TRACE_STORE_RECORDS_RETURNED = "reer.trace_store.records_returned"
ATTR_TRACE_STORE_MALFORMED_LINES = "reer.trace_store.malformed_lines"
ATTR_TRACE_STORE_RECORDS_WRITTEN = "reer.trace_store.records_written"
ATTR_TRACE_STORE_BYTES_WRITTEN = "reer.trace_store.bytes_written"
LABEL_TRACE_STORE_PATH = ATTR_TRACE_STORE_PATH
METRIC_TRACE_STORE_SIZE = ("reer.trace_store.size", "By", "Size of each trace store's file.")
METRIC_TRACE_STORE_TRACES = ("reer.trace_store.traces", "1", "Complete trace records in each trace store, as of its latest read or write.")

# Accelerators and containers (the monitor's gauges and counters; the alert rules and dashboard read them).
LABEL_FRAMEWORK = "framework"
LABEL_DEVICE = "device"
METRIC_DEVICE_USED = ("reer.memory.device.used", "By", "Bytes in use on each accelerator device.")
METRIC_DEVICE_PEAK = ("reer.memory.device.peak", "By", "Highest bytes in use on each accelerator device.")
METRIC_DEVICE_LIMIT = ("reer.memory.device.limit", "By", "Memory capacity of each accelerator device.")
METRIC_DEVICE_THRESHOLD = ("reer.memory.device.threshold", "By", "Configured threshold of each level on each accelerator device.")
METRIC_CGROUP_USAGE = ("reer.memory.cgroup.usage", "By", "Memory the process's cgroup uses, page cache included.")
METRIC_CGROUP_WORKING_SET = ("reer.memory.cgroup.working_set", "By", "Cgroup usage less inactive file pages: what the OOM killer weighs.")
METRIC_CGROUP_LIMIT = ("reer.memory.cgroup.limit", "By", "Memory limit of the process's cgroup.")
METRIC_CGROUP_OOM_KILLS = ("reer.memory.cgroup.oom_kills", "1", "Processes of the cgroup killed by the OOM killer.")
METRIC_CGROUP_PRESSURE = ("reer.memory.cgroup.pressure", "s", "Time some tasks of the cgroup stalled waiting for memory.")

# The same quantities under OpenTelemetry's semantic conventions (observable up-down counters, as
# the conventions define them), for backends whose container and GPU views read those names.
METRIC_CONTAINER_MEMORY_USAGE = ("container.memory.usage", "By", "Memory usage of the container.")
METRIC_CONTAINER_MEMORY_WORKING_SET = ("container.memory.working_set", "By", "Container memory working set.")
METRIC_HW_GPU_MEMORY_USAGE = ("hw.gpu.memory.usage", "By", "GPU memory used.")
METRIC_HW_GPU_MEMORY_LIMIT = ("hw.gpu.memory.limit", "By", "Size of the GPU memory.")
LABEL_HW_ID = "hw.id"
