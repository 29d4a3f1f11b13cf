"""Consumer groups deliver every alert at least once, over real gRPC channels to a real
sidecar and Redis: a reader killed before it acknowledged loses nothing (another reader, or
itself reconnecting, gets those alerts), and a reader that filters never swallows alerts that
a reader of the same group wants."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from latentguard.monitors.rules import RuleHit
from latentguard.server.records import AlertRecord
from latentguard.v1 import common_pb2, traces_pb2, traces_pb2_grpc
from tests.server.helpers import RunningSidecar, running_sidecar

WAIT_S = 30.0


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[RunningSidecar]:
    with running_sidecar(tmp_path / "data", alert_claim_idle_s=0.5) as running:
        yield running


def publish(sidecar: RunningSidecar, n: int, start: int = 0,
            severity: str = "high") -> list[str]:
    """n alerts whose trace ids say their order; returns those ids."""
    ids = []
    for i in range(start, start + n):
        trace_id = f"{i:025x}"
        hit = RuleHit(rule="r", severity=severity, action="alert", position=0, score=1.0,
                      explanation="x")
        sidecar.run(sidecar.sidecar.store.alerts.publish(AlertRecord(trace_id=trace_id, hit=hit)))
        ids.append(trace_id)
    return ids


class Reader:
    """A StreamAlerts call in a thread, acknowledging what `ack` says, until stopped."""

    def __init__(self, channel: grpc.Channel, group: str, consumer: str, *,
                 ack: bool = True, min_severity: int = 0) -> None:
        self.stub = traces_pb2_grpc.TracesStub(channel)
        self.got: list[traces_pb2.Alert] = []
        self.acked: list[str] = []
        self._ack = ack
        self._call = self.stub.StreamAlerts(traces_pb2.StreamAlertsRequest(
            consumer_group=group, consumer=consumer, min_severity=min_severity))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for alert in self._call:
                self.got.append(alert)
                if self._ack:
                    self.stub.AckAlerts(traces_pb2.AckAlertsRequest(
                        consumer_group=alert.consumer_group, ids=[alert.id]))
                    self.acked.append(alert.trace_id)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.CANCELLED, exc

    def kill(self) -> None:
        self._call.cancel()
        self._thread.join(10)


def readers_ready(sidecar: RunningSidecar, groups: int, consumers: int) -> None:
    """Waits until the readers' groups exist and each reader has joined one (a group starts
    at the stream's end: alerts published before it exists are not its)."""
    store = sidecar.sidecar.store
    key = store.keys.alerts

    def ready() -> bool:
        async def count() -> tuple[int, int]:
            try:
                found = await store.client.xinfo_groups(key)
            except Exception:  # the stream does not exist yet
                return 0, 0
            return len(found), sum(int(g["consumers"]) for g in found)

        n_groups, n_consumers = sidecar.run(count())
        return n_groups >= groups and n_consumers >= consumers

    until(ready, "the readers never joined their groups")


def until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_reader_killed_before_acknowledging_loses_nothing(sidecar: RunningSidecar) -> None:
    with sidecar.channel() as channel:
        slow = Reader(channel, "g", "slow", ack=False)
        readers_ready(sidecar, 1, 1)
        first = publish(sidecar, 50)
        until(lambda: len(slow.got) == 50, "the slow reader did not get the alerts")
        slow.kill()  # got 50, acknowledged none
        second = publish(sidecar, 50, start=50)
        other = Reader(channel, "g", "other")
        until(lambda: set(other.acked) == set(first + second),
              "the killed reader's alerts never reached the other reader")
        other.kill()


def test_a_reconnecting_reader_gets_its_pending_alerts_first(sidecar: RunningSidecar) -> None:
    with sidecar.channel() as channel:
        reader = Reader(channel, "g", "same", ack=False)
        readers_ready(sidecar, 1, 1)
        sent = publish(sidecar, 5)
        until(lambda: len(reader.got) == 5, "alerts not delivered")
        reader.kill()
        again = Reader(channel, "g", "same")
        until(lambda: set(again.acked) == set(sent), "pending alerts not delivered again")
        again.kill()


def test_a_filtering_reader_does_not_swallow_alerts_for_the_group(
        sidecar: RunningSidecar) -> None:
    with sidecar.channel() as channel:
        everything = Reader(channel, "g", "all")
        critical = Reader(channel, "g", "crit", min_severity=common_pb2.SEVERITY_CRITICAL)
        readers_ready(sidecar, 2, 2)
        high = publish(sidecar, 100, severity="high")
        crit = publish(sidecar, 100, start=100, severity="critical")
        # Sets: at least once allows a second delivery (an ack slower than the 0.5 s claim).
        until(lambda: set(everything.acked) == set(high + crit),
              "the unfiltered reader missed alerts")
        until(lambda: set(critical.acked) == set(crit),
              "the filtering reader missed critical alerts")
        everything.kill()
        critical.kill()


def test_ack_refuses_bad_ids(sidecar: RunningSidecar) -> None:
    with sidecar.channel() as channel:
        stub = traces_pb2_grpc.TracesStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.AckAlerts(traces_pb2.AckAlertsRequest(consumer_group="g", ids=["nope"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.AckAlerts(traces_pb2.AckAlertsRequest(ids=["1-0"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
