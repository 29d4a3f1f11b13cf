"""OpenTelemetry: a span per monitored generation, an evaluation event per rule hit, metrics.

Exporters follow the standard `OTEL_*` variables: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`..._TRACES_`/`..._METRICS_ENDPOINT`) set, spans and metrics go over OTLP/gRPC; without it
nothing is exported, but spans still get ids, which each trace record keeps so a reviewer can
go from a tracing UI to the record. Telemetry never crashes the sidecar.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, Tracer

from latentguard import __version__

log = logging.getLogger(__name__)

EVALUATION_EVENT = "gen_ai.evaluation.result"


def _otlp_configured(signal: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    ) and os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp") != "none"


@dataclass
class Telemetry:
    tracer: Tracer
    meter: Meter
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def __post_init__(self) -> None:
        m = self.meter
        self.tokens_monitored = m.create_counter(
            "latentguard.tokens.monitored", unit="{token}",
            description="Activation rows encoded and checked against rules")
        self.rule_hits = m.create_counter(
            "latentguard.rule.hits", unit="{hit}", description="Rule hits by rule and action")
        self.verdict_latency = m.create_histogram(
            "latentguard.verdict.duration", unit="s",
            description="Time from receiving a step batch to sending its verdicts")
        self.batch_errors = m.create_counter(
            "latentguard.batch.errors", unit="{batch}", description="Step batches refused")

    def start_generation(self, *, model: str, request_tag: str, policy: str,
                         operation: str = "text_completion") -> Span:
        """The span of one monitored generation (GenAI semantic conventions)."""
        return self.tracer.start_span(
            f"{operation} {model}".strip(),
            kind=trace.SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": "vllm",
                "gen_ai.request.model": model,
                "gen_ai.response.id": request_tag,
                "latentguard.policy": policy,
            },
        )

    @staticmethod
    def end_generation(span: Span, *, input_tokens: int, output_tokens: int,
                       finish_reason: str, blocked_by: str, trace_id: str) -> None:
        span.set_attributes({
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
            "gen_ai.response.finish_reasons": [finish_reason] if finish_reason else [],
            "latentguard.trace.id": trace_id,
            "latentguard.blocked_by": blocked_by,
        })
        span.end()

    def record_hit(self, span: Span, *, rule: str, severity: str, action: str, score: float,
                   explanation: str, request_tag: str) -> None:
        span.add_event(EVALUATION_EVENT, attributes={
            "gen_ai.evaluation.name": rule,
            "gen_ai.evaluation.score.value": score,
            "gen_ai.evaluation.score.label": action if action != "alert" else "flagged",
            "gen_ai.evaluation.explanation": explanation,
            "gen_ai.response.id": request_tag,
            "latentguard.severity": severity,
        })
        self.rule_hits.add(1, {"rule": rule, "action": action, "severity": severity})

    def shutdown(self) -> None:
        for provider in (self.tracer_provider, self.meter_provider):
            try:
                provider.shutdown()
            except Exception as exc:  # telemetry never crashes its host
                log.warning("telemetry shutdown failed: %s", exc)


def setup_telemetry(
    *,
    span_exporter: SpanExporter | None = None,
    span_processors: Sequence[SpanProcessor] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> Telemetry:
    """Providers of our own (never the global ones), so tests can run several sidecars."""
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "latentguard"),
                                "service.version": __version__})
    tracer_provider = TracerProvider(resource=resource)
    for processor in span_processors:
        tracer_provider.add_span_processor(processor)
    readers = list(metric_readers)
    if span_exporter is None and _otlp_configured("TRACES"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if _otlp_configured("METRICS"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(
        tracer=tracer_provider.get_tracer("latentguard", __version__),
        meter=meter_provider.get_meter("latentguard", __version__),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
