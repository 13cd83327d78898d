"""The control centre's ingest, state, history and alarms: pure parts with hand-stepped time,
then against a real mosquitto with a simulated fleet (restarts of the control centre and of
the broker included)."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from agent.tools.provision import read_roster as provision_roster
from control.alarms import AlarmBook, station_causes
from control.centre import ControlCentre, OverviewQuery
from control.config import AlarmConfig, StoreConfig
from control.roster import RosterError, read_roster
from control.simfleet import SimStation
from control.state import NEVER_SEEN, OFFLINE, ONLINE, STALE, StationState
from control.store import Store
from tests.peers.agent import wait_until
from tests.peers.control import ControlFactory, SimulatorFactory, write_roster
from tests.peers.mosquitto import Mosquitto, MosquittoFactory, Subscriber, SubscriberFactory

CFG = AlarmConfig()
WALL0 = 1_800_000_000.0


def sim_station(sid: str = "AZ-0001") -> SimStation:
    return SimStation(sid, WALL0 - 600, random.Random(1), heartbeat_s=10)


# -- roster -------------------------------------------------------------------------------


def test_roster_reads_the_provisioning_file_with_the_centres_columns(tmp_path: Path) -> None:
    path = write_roster(tmp_path / "roster.csv", [("AZ-0001", "School 1", "North"),
                                                  ("AZ-0002", "Town hall", "South")])  # fmt: skip
    roster = read_roster(path)
    assert list(roster) == ["AZ-0001", "AZ-0002"]
    assert roster["AZ-0002"].name == "Town hall" and roster["AZ-0002"].region == "South"
    assert roster["AZ-0001"].address == "1 Main Street, North"
    assert roster["AZ-0001"].lat == 48.0 and roster["AZ-0002"].lon == 16.1
    assert len(provision_roster(path)) == 2  # the technicians' tool takes the same file
    example = Path(__file__).parents[1] / "provisioning" / "roster.example.csv"
    assert list(read_roster(example)) == ["AZ-0001", "AZ-0002", "AZ-0003"]  # no extra columns


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name\nx\n", "column 'station_id' is missing"),
        ("station_id\nAZ 1\n", "row 2, column station_id"),
        ("station_id,lat\nAZ-1,91\n", "row 2, column lat: 91.0 is outside"),
        ("station_id,lon\nAZ-1,east\n", "column lon: 'east' is not a number"),
        ("station_id\nAZ-1\nAZ-1\n", "row 3: station 'AZ-1' is listed twice"),
    ],
)
def test_roster_problems_name_row_and_column(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "roster.csv"
    path.write_text(text)
    with pytest.raises(RosterError, match=problem):
        read_roster(path)


# -- state and alarms (pure, time stepped by hand) ------------------------------------------


def test_a_station_goes_stale_after_its_heartbeat_expiry_but_not_while_we_were_away() -> None:
    sim = sim_station()
    st = StationState("AZ-0001")
    assert st.connectivity(0.0, 0.0) == NEVER_SEEN
    st.apply_status(sim.status_online(WALL0), now_s=0.0, wall_s=WALL0)
    st.apply_heartbeat(sim.heartbeat(WALL0), now_s=0.0, wall_s=WALL0, expiry_s=20.0)
    assert st.connectivity(19.9, 0.0) == ONLINE
    assert st.connectivity(20.1, 0.0) == STALE
    assert st.connectivity(20.1, listening_since_s=5.0) == ONLINE  # we reconnected at 5 s
    st.apply_status(sim.status_offline(WALL0, clean=False, reason="connection_lost"), 21, WALL0)
    assert st.connectivity(21.0, 0.0) == OFFLINE and st.clean_stop is False


def test_an_old_processs_last_will_does_not_override_its_successors_online() -> None:
    old, new = sim_station(), sim_station()
    new.started_wall_s = old.started_wall_s + 100
    st = StationState("AZ-0001")
    st.apply_status(new.status_online(WALL0), 0.0, WALL0)
    st.apply_status(old.status_offline(WALL0 - 50, clean=False, reason="connection_lost"), 1, WALL0)
    assert st.status == ONLINE
    st.apply_status(new.status_offline(WALL0, clean=False, reason="connection_lost"), 2, WALL0)
    assert st.status == OFFLINE
    st.apply_heartbeat(new.heartbeat(WALL0 + 5), 3.0, WALL0 + 5, None)  # only a live link sends
    assert st.status == ONLINE


def test_one_alarm_per_cause_raised_cleared_and_kept_while_offline() -> None:
    sim = sim_station()
    st = StationState("AZ-0001")
    book = AlarmBook()
    st.apply_status(sim.status_online(WALL0), 0.0, WALL0)
    sim.start_fault("dark", WALL0)
    st.apply_heartbeat(sim.heartbeat(WALL0), 0.0, WALL0, 20.0)
    raised = book.update(st.station_id, station_causes(st, 0.0, CFG, 0.0), WALL0)
    assert [(a.cause, a.active) for a in raised] == [("camera_dark", True)]
    assert book.update(st.station_id, station_causes(st, 1.0, CFG, 0.0), WALL0 + 1) == []
    # Offline: one more alarm; what we knew about the camera stays as it was.
    st.apply_status(sim.status_offline(WALL0, clean=False, reason="connection_lost"), 2, WALL0)
    assert station_causes(st, 2.0 + CFG.offline_after_s - 1, CFG, 0.0) is None  # a moment
    changed = book.update(st.station_id, station_causes(st, 20.0, CFG, 0.0), WALL0 + 2)
    assert [(a.cause, a.active) for a in changed] == [("offline", True)]
    assert {a.cause for a in book.of(st.station_id).values()} == {"offline", "camera_dark"}
    acked = book.acknowledge(book.of(st.station_id)["offline"].alarm_id, "maria", WALL0 + 3)
    assert acked is not None and acked.acked_by == "maria" and acked.active  # ack != clear
    # Back, camera fine: both cleared, with the time.
    sim.end_fault(WALL0 + 4)
    st.apply_status(sim.status_online(WALL0 + 4), 4.0, WALL0 + 4)
    st.apply_heartbeat(sim.heartbeat(WALL0 + 4), 4.0, WALL0 + 4, 20.0)
    cleared = book.update(st.station_id, station_causes(st, 4.0, CFG, 0.0), WALL0 + 4)
    assert sorted((a.cause, a.cleared_wall_s) for a in cleared) == [
        ("camera_dark", WALL0 + 4), ("offline", WALL0 + 4)]  # fmt: skip
    assert cleared[0].acked_by in (None, "maria") and len(book) == 0


def test_uplink_loss_disk_and_clock_causes() -> None:
    sim = sim_station()
    st = StationState("AZ-0001")
    st.apply_status(sim.status_online(WALL0), 0.0, WALL0)
    sim.start_fault("behind", WALL0)
    for i in range(40):  # 400 s of a slow uplink: 320 s of backlog
        st.apply_heartbeat(sim.heartbeat(WALL0 + 10 * i), 10.0 * i, WALL0 + 10 * i, 20.0)
    sim.start_fault("loss", WALL0 + 400)  # (ends "behind": the next heartbeat has 300 s)
    sim.backlog_s += 60
    st.apply_event(sim.take_events()[-1], 400.0, WALL0 + 400)
    beat = sim.heartbeat(WALL0 + 400)
    beat["system"]["spool_free_bytes"] = beat["system"]["spool_total_bytes"] // 20
    st.apply_heartbeat(beat, 400.0, WALL0 + 460, 20.0)  # the box clock is 60 s behind ours
    causes = station_causes(st, 400.0, CFG, 0.0)
    assert causes is not None and set(causes) == {
        "live_lag",
        "backlog",
        "loss",
        "disk_low",
        "clock",
    }, causes
    assert "-60 s off" in causes["clock"]
    beat = sim.heartbeat(WALL0 + 410)
    beat["clock"]["ntp_synchronized"] = False
    st.apply_heartbeat(beat, 410.0, WALL0 + 410, 20.0)
    assert "NTP" in (station_causes(st, 410.0, CFG, 0.0) or {})["clock"]
    assert "loss" not in (station_causes(st, 400.0 + CFG.event_hold_s + 1, CFG, 0.0) or {})


def test_centre_state_survives_a_restart_with_its_alarms(tmp_path: Path) -> None:
    now = [0.0]
    sim = sim_station()
    store = Store(tmp_path / "c.sqlite")
    centre = ControlCentre(
        store, CFG, StoreConfig(), mono=lambda: now[0], wall=lambda: WALL0 + now[0]
    )
    centre.on_connection(True)
    centre.on_status("AZ-0001", sim.status_online(WALL0))
    centre.on_heartbeat("AZ-0001", sim.heartbeat(WALL0), 20.0)
    now[0] = 30.0
    centre.sweep()  # silent for 30 s > 20 s: stale
    assert [a.cause for a in centre.active_alarms()] == ["stale"]
    centre.flush()
    store.close()
    store = Store(tmp_path / "c.sqlite")
    again = ControlCentre(store, CFG, StoreConfig(), mono=lambda: 5.0, wall=lambda: WALL0 + 30)
    assert again.restored and [a.cause for a in again.active_alarms()] == ["stale"]
    assert again.stations["AZ-0001"].version == "0.1.0-sim"
    # Its last heartbeat was 30 s ago on the restored clock too.
    assert again.stations["AZ-0001"].heartbeat_mono_s == pytest.approx(5.0 - 30.0)
    store.close()


# -- against a real broker -------------------------------------------------------------------


def _publish_event(sub: Subscriber, sid: str, event: dict[str, object]) -> None:
    sub.client.publish(f"stations/{sid}/event", json.dumps(event), qos=1).wait_for_publish(5)


def test_fleet_on_a_real_broker_with_a_never_seen_station_and_duplicate_events(
    mosquitto: Mosquitto,
    control_factory: ControlFactory,
    simulator_factory: SimulatorFactory,
    subscriber: SubscriberFactory,
    tmp_path: Path,
) -> None:
    rows = [("SIM-0001", "School 1", "North"), ("AZ-9999", "Never came", "South")]
    roster = write_roster(tmp_path / "roster.csv", rows)
    svc = control_factory(mosquitto, roster={"path": str(roster)})
    sim = simulator_factory(mosquitto, 3)
    centre = svc.centre

    def counts() -> dict[str, int]:
        return dict(centre.overview(OverviewQuery())["counts"])

    assert wait_until(lambda: counts()["ok"] == 3, timeout_s=20), counts()
    view = centre.overview(OverviewQuery())
    assert view["counts"]["never_seen"] == 1 and view["total"] == 4
    assert view["rows"][0]["station_id"] == "AZ-9999"  # the only one not fine: listed first
    assert centre.station("SIM-0001")["name"] == "School 1"  # type: ignore[index]
    assert view["regions"] == ["North", "South"]
    north = centre.overview(OverviewQuery(region="North"))
    assert [r["station_id"] for r in north["rows"]] == ["SIM-0001"]

    # The same event delivered twice (QoS 1 after a reconnect) is stored and counted once.
    pub = subscriber(mosquitto, "nothing/here")
    event = sim.stations["SIM-0002"].event(
        sim.stations["SIM-0002"].started_wall_s + 1, "segment_dropped", "critical", "lost",
        seq=7, bytes=1, reason="disk full")  # fmt: skip
    _publish_event(pub, "SIM-0002", event)
    _publish_event(pub, "SIM-0002", event)
    assert wait_until(lambda: centre.duplicates == 1, timeout_s=10)
    assert [a.cause for a in centre.active_alarms()] == ["loss"]
    with sqlite3.connect(svc.store.path) as db:
        rows = db.execute("SELECT count(*) FROM events WHERE id = ?", (event["id"],)).fetchone()
    assert rows == (1,)


def test_restart_of_the_centre_and_of_the_broker_keeps_state_and_history(
    mosquitto_factory: MosquittoFactory,
    control_factory: ControlFactory,
    simulator_factory: SimulatorFactory,
    tmp_path: Path,
) -> None:
    broker = mosquitto_factory(persistence=True)
    folder = tmp_path / "centre"
    svc = control_factory(broker, folder)
    sim = simulator_factory(broker, 3)
    assert wait_until(lambda: svc.centre.overview(OverviewQuery())["counts"]["ok"] == 3, 20)
    sim.set_fault("SIM-0001", "dark")
    assert wait_until(lambda: "camera_dark" in _causes(svc), timeout_s=10)
    events_before = svc.store.event_count()
    svc.stop()

    # While the centre is away: an event for it waits at the broker (persistent session).
    sim.set_fault("SIM-0002", "frozen")
    svc = control_factory(broker, folder)
    assert svc.centre.restored and "camera_dark" in _causes(svc)  # from the database
    assert wait_until(lambda: "camera_frozen" in _causes(svc), timeout_s=15)
    assert wait_until(lambda: svc.store.event_count() == events_before + 1, timeout_s=10)

    broker.stop()
    broker.start()
    assert wait_until(svc.ingest.connected.is_set, timeout_s=30)
    assert wait_until(lambda: svc.centre.overview(OverviewQuery())["counts"]["problem"] == 2, 30)
    sim.set_fault("SIM-0003", "loss")
    assert wait_until(lambda: "loss" in _causes(svc), timeout_s=15)
    expected = ["camera_dark", "camera_frozen", "loss"]  # each once: no offline blip either
    assert wait_until(lambda: sorted(a.cause for a in svc.store.alarms()) == expected, 10), [
        a.cause for a in svc.store.alarms()
    ]
    with sqlite3.connect(svc.store.path) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM events")]
    assert len(ids) == len(set(ids)) == events_before + 2
    assert svc.ingest.counters.callback_errors == 0


def _causes(svc: object) -> set[str]:
    return {a.cause for a in svc.centre.active_alarms()}  # type: ignore[attr-defined]
