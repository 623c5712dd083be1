"""The twin's guests reach the twin at the address its catalog gives (127.0.0.1:PORT), as a
real server reaches a site's public endpoints: the pieces, without a VM (the semester's backup
step proves it in a guest)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest

from tests.twin.services.qemu_machines import (
    HOST_FORWARD,
    config_drive_files,
    host_route_address,
    host_route_vendor_data,
    slirp_network,
)


@pytest.mark.parametrize("fixed_ip", ["10.56.1.23", "10.56.1.1", "10.56.1.3", "10.56.1.4"])
def test_the_route_address_is_in_the_guests_network_and_none_of_slirps_own(fixed_ip: str):
    """libslirp's guestfwd takes an address of the virtual network that is neither its host's
    nor its DNS's (check_guestfwd), and it must not be the guest's own."""
    network = slirp_network(fixed_ip)
    route = host_route_address(fixed_ip)
    assert route.rsplit(".", 1)[0] == fixed_ip.rsplit(".", 1)[0]
    assert route not in (network["host"], network["dns"], fixed_ip)


def test_vendor_data_listens_on_the_guests_loopback_and_proxies_to_the_route():
    """Nova's vendor_data.json, {"cloud-init": script}: a socket unit on 127.0.0.1:PORT whose
    service is systemd-socket-proxyd to the route's address, enabled at first boot."""
    data = host_route_vendor_data([41234], "10.56.1.4")
    files = config_drive_files(
        "x", user_data=None, public_keys=[], metadata={}, hostname="h", vendor_data=data
    )
    script = json.loads(files["openstack/latest/vendor_data.json"])["cloud-init"]
    assert script.startswith("#!/bin/sh\n")
    assert "ListenStream=127.0.0.1:41234" in script
    assert "systemd-socket-proxyd 10.56.1.4:41234" in script
    assert script.rstrip().endswith("systemctl enable --now twin-route-41234.socket")
    plain = config_drive_files("x", user_data=None, public_keys=[], metadata={}, hostname="h")
    assert json.loads(plain["openstack/latest/vendor_data.json"]) == {}


def test_the_forwarder_joins_its_standard_streams_to_the_host_port():
    """As qemu's guestfwd runs it: the guest's socket on stdin and stdout, one connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo() -> None:
        connection, _ = listener.accept()
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    guest, qemu_side = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, str(HOST_FORWARD), "127.0.0.1", str(port)],
        stdin=qemu_side.fileno(), stdout=qemu_side.fileno(),
    )  # fmt: skip
    qemu_side.close()
    try:
        guest.sendall(b"put this segment")
        guest.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := guest.recv(65536):
            received += chunk
        assert received == b"PUT THIS SEGMENT"
        assert process.wait(timeout=30) == 0
    finally:
        guest.close()
        listener.close()
        if process.poll() is None:
            process.kill()
