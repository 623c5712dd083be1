"""The data volume under mocks: what the cloud already holds decides it, before any resource.

The program looks the volume up (by name, and by this stack's owner key) before it
registers anything: a first deployment creates it; the stack's own volume is kept
and may grow in place; the tutorial's volume is taken over (imported) only when
existingVolumeId names it; a smaller size, another type, the wrong volume, or a
failed lookup stops the program with nothing registered.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
import yaml

from tests.support.program import (
    ATTACHMENT,
    SERVER,
    VOLUME,
    CloudVolume,
    Evaluation,
    evaluate_program,
)
from tests.support.ssh_keys import stand_in_private_key

PRIVATE_KEY = stand_in_private_key()
STACK = "ab1234"
NAME = "block-persist-ab1234"
OWNER_KEY = "chi-persist-stack"
OWNER = "ab1234/ab1234"
CREATED_ID = "5b1e0a3c-7f42-4d8e-a1b9-0c6d2e8f4a17"
OWN_ID = "0d6c2a1e-9b8f-4e7d-a6c5-b4a3928170f6"
TUTORIAL_ID = "7c9e4b2a-1d3f-4a5b-8c6d-e7f8091a2b3c"
OTHER_ID = "e1d2c3b4-a596-4788-9900-aabbccddeeff"
OUR_SERVER = "server-node-persist-ab1234"


def evaluate(
    config: dict[str, Any] | None = None, cloud: tuple[CloudVolume, ...] = (), **kwargs: Any
) -> Evaluation:
    return evaluate_program(
        STACK,
        {"keyPair": "ab1234-key", **(config or {})},
        secrets={"sshPrivateKey": PRIVATE_KEY},
        volume_id=CREATED_ID,
        cloud_volumes=cloud,
        **kwargs,
    )


def refused(config: dict[str, Any] | None = None, cloud: tuple[CloudVolume, ...] = (), **kwargs):
    """The program's error, after checking that it stopped before any registration."""
    with pytest.raises(pulumi.RunError) as raised:
        evaluate(config, cloud, **kwargs)
    assert raised.value.registrations == [], "resources were registered before the refusal"
    message = str(raised.value)
    assert "Traceback" not in message
    return message


def own_volume(**changes: Any) -> CloudVolume:
    """The volume this stack made: its name and its owner key."""
    fields = {"id": OWN_ID, "name": NAME, "metadata": {OWNER_KEY: OWNER}}
    return CloudVolume(**{**fields, **changes})


def tutorial_volume(**changes: Any) -> CloudVolume:
    """The tutorial's volume: made in Horizon, no metadata, detached."""
    return CloudVolume(**{"id": TUTORIAL_ID, "name": NAME, **changes})


def prepare_step(evaluation: Evaluation):
    return evaluation.named("prepare-volume")


# --- the first deployment and the stack's own volume --------------------------------------


def test_first_deployment_creates_the_volume_with_the_stack_owner_key() -> None:
    """No volume of that name: one is created (no import), protected, marked as this stack's."""
    evaluation = evaluate()
    volume = evaluation.one(VOLUME)
    assert volume.import_id == ""
    assert volume.protect
    assert volume.inputs["metadata"] == {OWNER_KEY: OWNER}
    assert volume.inputs["enableOnlineResize"] is True
    assert volume.inputs["description"].startswith("chi-persist data volume")
    assert evaluation.outputs["volume_id"] == CREATED_ID


def test_stack_volume_is_kept_not_created_again() -> None:
    """The stack's own volume is managed as the same volume: its id, its size, no warning."""
    evaluation = evaluate(cloud=(own_volume(),))
    volume = evaluation.one(VOLUME)
    assert volume.import_id == OWN_ID
    assert volume.inputs["size"] == 2
    assert volume.inputs["metadata"] == {OWNER_KEY: OWNER}
    assert evaluation.outputs["volume_id"] == OWN_ID
    assert evaluation.other_warnings == []


def test_larger_size_grows_the_same_volume_in_place() -> None:
    """volumeSize 5 over a 2 GiB volume: same volume, new size, still protected, online resize."""
    first = evaluate(cloud=(own_volume(),))
    grown = evaluate({"volumeSize": 5}, cloud=(own_volume(),))
    volume = grown.one(VOLUME)
    assert volume.urn == first.one(VOLUME).urn, "a new logical resource would be a new volume"
    assert volume.import_id == OWN_ID
    assert volume.inputs["size"] == 5
    assert volume.protect
    assert volume.inputs["enableOnlineResize"] is True
    assert not volume.delete_before_replace and volume.replace_on_changes == []
    assert volume.ignore_changes == []
    step = prepare_step(grown)
    assert step.inputs["create"].endswith("--size-gib 5")
    assert 5 in step.inputs["triggers"], "a grown volume must re-run the step that grows it"
    assert 2 in prepare_step(first).inputs["triggers"]


def test_growing_warns_with_the_way_through_a_refusal() -> None:
    """The growth is announced next to the volume, with what to do if the cloud refuses it."""
    grown = evaluate({"volumeSize": 5}, cloud=(own_volume(),))
    (warning,) = grown.other_warnings
    assert f"{NAME} grows from 2 GiB to 5 GiB" in warning
    assert "./chi-persist recycle --stack ab1234" in warning and "pulumi up" in warning


SIZE_AND_TYPE_REFUSALS = [
    pytest.param(
        {"volumeSize": 2},
        own_volume(size=5),
        ["chi-persist:volumeSize = 2", "already 5 GiB", "never shrink",
         "pulumi config set chi-persist:volumeSize 5"],
        id="smaller-size",
    ),
    pytest.param(
        {"volumeType": "ceph-hdd"},
        own_volume(volume_type="ceph-ssd"),
        ["chi-persist:volumeType = 'ceph-hdd'", "'ceph-ssd'",
         "pulumi config set chi-persist:volumeType ceph-ssd"],
        id="other-type",
    ),
    pytest.param(
        {"volumeSize": 1, "volumeType": "ceph-hdd"},
        own_volume(size=3),
        ["2 invalid settings", "chi-persist:volumeSize = 1", "chi-persist:volumeType"],
        id="both-at-once",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("config", "volume", "expected"), SIZE_AND_TYPE_REFUSALS)
def test_smaller_size_or_other_type_is_refused_before_any_resource(config, volume, expected):
    """Shrinking or retyping the data volume: value, rule and fix; nothing registered."""
    message = refused(config, cloud=(volume,))
    for words in expected:
        assert words in message


def test_same_type_and_size_are_accepted() -> None:
    """Naming the volume's own type and size changes nothing."""
    evaluation = evaluate({"volumeType": "ceph-ssd", "volumeSize": 2}, cloud=(own_volume(),))
    assert evaluation.one(VOLUME).inputs["volumeType"] == "ceph-ssd"


def test_failed_lookup_stops_before_any_resource() -> None:
    """If the cloud cannot be asked, nothing is created: a first up and a later one look alike."""
    message = refused(
        volume_lookup_error="Authentication failed: the request requires authentication"
    )
    assert "could not ask the cloud what it holds of this stack" in message
    assert "Authentication failed" in message
    assert "Nothing was created or changed" in message
    assert "OS_CLOUD" in message


def test_volume_the_stack_did_not_make_is_not_duplicated() -> None:
    """A volume of the same name without this stack's key: refused, with the command to adopt it."""
    message = refused(cloud=(tutorial_volume(),))
    assert "chi-persist:existingVolumeId = (not set)" in message
    assert "will not create a second volume" in message
    assert f"pulumi config set chi-persist:existingVolumeId {TUTORIAL_ID}" in message


# --- taking over the tutorial's volume ------------------------------------------------------


def test_existing_volume_id_adopts_the_tutorial_volume_as_it_is() -> None:
    """The volume is imported (not created) with its own name, size and type, and protected."""
    evaluation = evaluate({"existingVolumeId": TUTORIAL_ID}, cloud=(tutorial_volume(),))
    volume = evaluation.one(VOLUME)
    assert volume.import_id == TUTORIAL_ID
    assert volume.protect and not volume.retain_on_delete
    assert volume.inputs["name"] == NAME
    assert volume.inputs["size"] == 2
    assert volume.inputs["volumeType"] == "ceph-ssd"
    assert volume.inputs["metadata"] == {OWNER_KEY: OWNER}
    assert "description" not in volume.inputs, "the tutorial volume keeps its own description"
    for kept in ("description", "snapshotId", "sourceVolId", "backupId", "imageId"):
        assert kept in volume.ignore_changes
    assert volume.inputs["enableOnlineResize"] is True
    assert evaluation.one(ATTACHMENT).inputs["volumeId"] == TUTORIAL_ID
    assert f"--volume-id {TUTORIAL_ID} " in prepare_step(evaluation).inputs["create"]
    assert evaluation.outputs["volume_id"] == TUTORIAL_ID


def test_adopted_volume_keeps_its_own_metadata() -> None:
    """Metadata the volume already has stays; only the owner key is added."""
    volume = tutorial_volume(metadata={"course": "mlops"})
    evaluation = evaluate({"existingVolumeId": TUTORIAL_ID}, cloud=(volume,))
    assert evaluation.one(VOLUME).inputs["metadata"] == {"course": "mlops", OWNER_KEY: OWNER}


def test_adopted_volume_is_managed_the_same_way_on_every_later_up() -> None:
    """After the takeover (owner key set, attached to our server) the same import id is given."""
    adopted = tutorial_volume(
        metadata={OWNER_KEY: OWNER}, status="in-use", attached_to=(OUR_SERVER,)
    )
    first = evaluate({"existingVolumeId": TUTORIAL_ID}, cloud=(tutorial_volume(),))
    later = evaluate({"existingVolumeId": TUTORIAL_ID}, cloud=(adopted,))
    assert later.one(VOLUME).import_id == first.one(VOLUME).import_id == TUTORIAL_ID
    assert later.one(VOLUME).urn == first.one(VOLUME).urn
    assert later.one(VOLUME).inputs == first.one(VOLUME).inputs


def test_adopted_volume_can_grow() -> None:
    """A larger volumeSize over the adopted volume extends it in place, with the warning."""
    adopted = tutorial_volume(metadata={OWNER_KEY: OWNER})
    evaluation = evaluate({"existingVolumeId": TUTORIAL_ID, "volumeSize": 4}, cloud=(adopted,))
    assert evaluation.one(VOLUME).inputs["size"] == 4
    assert evaluation.one(VOLUME).import_id == TUTORIAL_ID
    assert len(evaluation.other_warnings) == 1
    assert "from 2 GiB to 4 GiB" in evaluation.other_warnings[0]


ADOPTION_REFUSALS = [
    pytest.param(
        {"existingVolumeId": "block-persist-ab1234"}, (tutorial_volume(),),
        ["chi-persist:existingVolumeId = 'block-persist-ab1234'", "a UUID", "not its name"],
        id="a-name-not-an-id",
    ),
    pytest.param(
        {"existingVolumeId": TUTORIAL_ID[:30]}, (tutorial_volume(),),
        ["must be the id of a Cinder volume"], id="truncated-id",
    ),
    pytest.param(
        {"existingVolumeId": f"{{{TUTORIAL_ID}}}"}, (tutorial_volume(),),
        ["must be the id of a Cinder volume"], id="id-in-braces",
    ),
    pytest.param(
        {"existingVolumeId": TUTORIAL_ID}, (),
        ["no volume is named block-persist-ab1234",
         f"openstack volume set --name block-persist-ab1234 {TUTORIAL_ID}"],
        id="no-volume-of-that-name",
    ),
    pytest.param(
        {"existingVolumeId": OTHER_ID}, (tutorial_volume(),),
        ["is not the volume named block-persist-ab1234", TUTORIAL_ID,
         f"pulumi config set chi-persist:existingVolumeId {TUTORIAL_ID}"],
        id="id-of-another-volume",
    ),
    pytest.param(
        {"existingVolumeId": TUTORIAL_ID},
        (tutorial_volume(status="in-use", attached_to=("tutorial-server-id",)),),
        ["attached to server tutorial-server-id", "sudo umount /mnt/block",
         f"openstack server remove volume tutorial-server-id {TUTORIAL_ID}"],
        id="attached-elsewhere",
    ),
    pytest.param(
        {"existingVolumeId": TUTORIAL_ID}, (tutorial_volume(status="error"),),
        ["in status 'error'", "'available'"], id="not-available",
    ),
    pytest.param(
        {"existingVolumeId": TUTORIAL_ID},
        (tutorial_volume(), tutorial_volume(id=OTHER_ID)),
        ["several volumes are named block-persist-ab1234", "rename the others"],
        id="two-volumes-of-that-name",
    ),
    pytest.param(
        {"existingVolumeId": TUTORIAL_ID},
        (tutorial_volume(metadata={OWNER_KEY: "ab1234/dev"}),),
        ["belongs to the chi-persist stack 'ab1234/dev'", "pulumi stack select dev"],
        id="another-stacks-volume",
    ),
    pytest.param(
        {"existingVolumeId": TUTORIAL_ID},
        (own_volume(name="block-persist-ab1234-renamed"), tutorial_volume()),
        ["already manages the volume block-persist-ab1234-renamed", "make Pulumi delete",
         "pulumi config rm chi-persist:existingVolumeId"],
        id="stack-already-has-a-volume",
    ),
    pytest.param(
        {"existingVolumeId": TUTORIAL_ID}, (tutorial_volume(size=5),),
        ["chi-persist:volumeSize = 2", "already 5 GiB",
         "pulumi config set chi-persist:volumeSize 5"],
        id="smaller-than-the-tutorial-volume",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("config", "cloud", "expected"), ADOPTION_REFUSALS)
def test_wrong_volume_to_take_over_is_refused_before_any_resource(config, cloud, expected):
    """Each takeover the program must not do: what, the value, the fix; nothing registered."""
    message = refused(config, cloud=cloud)
    for words in expected:
        assert words in message, message


def test_clearing_existing_volume_id_after_a_takeover_keeps_the_volume() -> None:
    """The adopted volume carries the owner key, so it stays the stack's without the setting."""
    adopted = tutorial_volume(
        metadata={OWNER_KEY: OWNER}, status="in-use", attached_to=(OUR_SERVER,)
    )
    evaluation = evaluate(cloud=(adopted,))
    assert evaluation.one(VOLUME).import_id == TUTORIAL_ID


def test_first_boot_installs_the_tools_that_grow_a_volume() -> None:
    """cloud-init ensures growpart (cloud-guest-utils) and sfdisk (fdisk) before any volume step."""
    user_data = yaml.safe_load(evaluate().one(SERVER).inputs["userData"])
    assert {"cloud-guest-utils", "fdisk"} <= set(user_data["packages"])


# --- growth that did not happen ----------------------------------------------------------


def test_a_volume_left_at_its_old_size_fails_the_update_before_the_server_grows() -> None:
    """volumeSize 5, and Cinder leaves the volume at 2 GiB: pulumi up fails with the sizes and
    the way out, and the step that grows the filesystem never gets a size."""
    with pytest.raises(pulumi.RunError) as raised:
        evaluate({"volumeSize": 5}, cloud=(own_volume(),), volume_size_after=2)
    message = str(raised.value)
    assert f"the volume {NAME} is still 2 GiB, not the 5 GiB asked for" in message
    assert "chi-persist:volumeSize" in message and "./chi-persist recycle --stack ab1234" in message
    # The pretend project holds no message: the failure says so.
    assert "Cinder left no user message about it." in message
    names = [registration.name for registration in raised.value.registrations]
    assert "data-volume" in names and "provisioning-prepare-volume" not in names


def test_a_volume_that_got_its_size_passes_it_on() -> None:
    """The size the cloud reports is what the prepare step waits for."""
    grown = evaluate({"volumeSize": 5}, cloud=(own_volume(),), volume_size_after=5)
    assert prepare_step(grown).inputs["create"].endswith("--size-gib 5")
