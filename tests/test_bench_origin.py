"""benchmarks/bench_origin.py's CPU accounting: the figures the upload-speed note rests on."""
import subprocess
import sys
import time

import pytest

from benchmarks.bench_origin import Loop, Server, cpu_by_process, measured_cpu, pooled

#: Waits for a line, spends the CPU seconds given, then stays alive (a process reaped
#: takes its CPU time out of /proc).
BURNER = ("import sys, time\nsys.stdin.readline()\nend = time.process_time() + {s}\n"
          "while time.process_time() < end: pass\ntime.sleep(60)\n")


def burner(seconds: float) -> subprocess.Popen:
    """A process of its own group (as gunicorn is started here)."""
    return subprocess.Popen([sys.executable, "-c", BURNER.format(s=seconds)],
                            stdin=subprocess.PIPE, text=True, start_new_session=True)


def test_cpu_by_process_names_each_part():
    assert set(cpu_by_process(Server("http://x"))) == {"load generator"}
    with burner(0) as api:
        server = Server("http://x", api_group=api.pid, database_group=api.pid)
        assert set(cpu_by_process(server)) == {"load generator", "API", "database"}
        api.kill()


def test_measured_cpu_counts_the_server_group_and_the_database_apart():
    api, database = burner(0.4), burner(0.2)
    time.sleep(0.5)  # both started (their start-up is not measured)

    def run():
        for process in (api, database):
            process.stdin.write("go\n")
            process.stdin.flush()
        time.sleep(1.0)  # this process idles while they burn
        return Loop(latencies_s=[0.1] * 4, wall_s=1.0)

    try:
        loop = measured_cpu(Server("http://x", api_group=api.pid, database_group=database.pid), run)
    finally:
        for process in (api, database):
            process.kill()
            process.wait()
    assert loop.cpu_s["API"] == pytest.approx(0.4, abs=0.1)
    assert loop.cpu_s["database"] == pytest.approx(0.2, abs=0.1)
    assert loop.cpu_s["load generator"] < 0.1


def test_pooled_gives_cpu_per_successful_request():
    loops = [Loop(latencies_s=[0.01] * 3, errors=["HTTP 500"], wall_s=1.0,
                  cpu_s={"API": 0.006, "database": 0.003}),
             Loop(latencies_s=[0.01] * 3, wall_s=1.0, cpu_s={"API": 0.006, "database": 0.009})]
    result = pooled(loops)
    assert result["cpu_ms_per_request"] == pytest.approx({"API": 2.0, "database": 2.0})
    assert result["per_s"] == pytest.approx(3.0)
