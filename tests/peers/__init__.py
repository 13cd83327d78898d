"""Real peers for tests and benches: where the agent meets the world, nothing is mocked.

    ports         free_port, port_open
    nginx         Nginx: WebDAV PUT (bearer token, TLS, client certificates) and RTMP ingest
    ffprobe       ffprobe_json: judge every produced file
    mosquitto     Mosquitto broker, recording Subscriber
    pki           make_pki: a throw-away CA, server and client certificates
    faultproxy    FaultProxy (throttle, reset, stall, injected status, refuse), in-process
                  or in a child process
    config        agent_config / write_toml: small, fast agent configs on disk
    agent         AgentProcess (the agent as an OS process), Running (a pipeline in-process)
    telemetry     schema checks and MQTT settings for telemetry tests
    telemetry_runner  the process AgentProcess.for_telemetry runs: Telemetry, fake status
    video         synthetic camera footage with faults, for camera-health tests

Tests import them as `from tests.peers.nginx import Nginx`; the fixtures that start and stop
them are in tests/conftest.py. Benches import them the same way (run from the repo root as
`python -m bench.NAME`).
"""
