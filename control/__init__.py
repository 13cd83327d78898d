"""station-control: the control centre central staff run beside the MQTT broker.

It ingests every station's status, heartbeats and events (control/ingest.py), keeps each
station's state and an SQLite history (control/state.py, control/store.py), raises alarms
(control/alarms.py), serves a web dashboard (control/web/) and a terminal view
(control/watch.py), and simulates a fleet for load tests and demos (control/simulate.py).
See docs/control-centre.md.
"""
