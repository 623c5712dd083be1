"""The VM driver's failures: each names its phase, shows the guest's output, and leaves no qemu."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.vm.failures import RehearsalError
from tests.vm.image import GuestImage, ensure_image, image_skip_reason
from tests.vm.rehearsal import VirtualMachine, make_overlay, vm_skip_reason

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    """The cached guest image (built on first use)."""
    for reason in (image_skip_reason(), vm_skip_reason()):
        if reason:
            pytest.skip(reason)
    try:
        image, _built = ensure_image()
    except RehearsalError as error:
        pytest.fail(str(error), pytrace=False)
    return image


def qemu_is_gone(vm: VirtualMachine) -> bool:
    return vm.process is not None and vm.process.poll() is not None


def test_guest_that_does_not_answer_ssh_in_time_fails_and_is_stopped(
    tmp_path: Path, guest_image: GuestImage
) -> None:
    """An SSH wait past its bound fails naming the phase and the port; qemu is gone afterwards."""
    overlay = make_overlay(guest_image, tmp_path / "root.qcow2")
    with pytest.raises(RehearsalError) as raised:  # noqa: SIM117 (the VM must stop inside)
        with VirtualMachine("slow", guest_image, overlay, [], tmp_path, "tcg") as vm:
            vm.wait_for_ssh("slow: boot to SSH", bound=2)
    assert raised.value.phase == "slow: boot to SSH"
    assert f"127.0.0.1:{vm.port} did not let cc in within 2s" in str(raised.value)
    assert "slow serial console" in str(raised.value)
    assert qemu_is_gone(vm)


def test_guest_without_its_root_disk_fails_fast_with_its_console(
    tmp_path: Path, guest_image: GuestImage
) -> None:
    """A guest that cannot find its root fails early, showing its console, not at the bound."""
    overlay = make_overlay(guest_image, tmp_path / "root.qcow2")
    command_line = "root=LABEL=no-such-disk rootdelay=3 console=ttyS0 panic=-1"
    started = time.monotonic()
    with pytest.raises(RehearsalError) as raised:  # noqa: SIM117 (the VM must stop inside)
        with VirtualMachine(
            "rootless", guest_image, overlay, [], tmp_path, "tcg", kernel_command_line=command_line
        ) as vm:
            vm.wait_for_ssh("rootless: boot to SSH", bound=200)
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert raised.value.phase == "rootless: boot to SSH"
    assert "no-such-disk" in message, message
    assert elapsed < 120, f"took {elapsed:.0f}s: the console's verdict was not noticed"
    assert qemu_is_gone(vm)


def test_monitor_command_qemu_refuses_fails_naming_the_phase_and_qemus_reason(
    tmp_path: Path, guest_image: GuestImage
) -> None:
    """A refused QMP command (a disk qemu does not have) fails with qemu's reason; qemu stops."""
    overlay = make_overlay(guest_image, tmp_path / "root.qcow2")
    with pytest.raises(RehearsalError) as raised:  # noqa: SIM117 (the VM must stop inside)
        with VirtualMachine("monitor", guest_image, overlay, [], tmp_path, "tcg") as vm:
            vm.qmp("block_resize", {"device": "no-such-disk", "size": 2**30}, "monitor: resize")
    message = str(raised.value)
    assert raised.value.phase == "monitor: resize"
    assert "qemu refused block_resize" in message and "no-such-disk" in message, message
    assert qemu_is_gone(vm)
    assert vm.control_dir is not None and not vm.control_dir.exists()
